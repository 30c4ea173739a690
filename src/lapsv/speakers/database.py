"""A speaker database in one SQLite file: enrol voices, list, delete, read speaker models.

The file (``lapsv enroll MODEL --db SPEAKERS.db NAME AUDIO...``) holds (schema:
:mod:`lapsv.speakers.schema`):

* ``meta``: format, schema version, generation, and the id of the model whose embeddings
  it holds (:attr:`~lapsv.speaker.Speaker.model_id`, the content hash of the weights).
  Embeddings of another model are refused: they live in another space and would score as
  noise.
* ``speakers``: one row per name, with creation and update times. A new name must follow
  the rule of :func:`~lapsv.speakers.names.check_speaker_name` and is stored in NFC; names
  stored by older versions are kept as they are (lookups try the name as given, then NFC).
* ``utterances``: every enrolment recording of a speaker, keyed by the SHA-256 of its
  content, with its source, duration and raw embedding (E float32 little-endian, a BLOB).
* ``models``: each speaker's model, updated in the transaction that changes the speaker:
  the mean of its length-normalised utterance embeddings (in key order, so the same
  utterances always give the same model), normalised
  (:func:`~lapsv.scoring.norm.average_models`, as for enrolment models and AS-norm
  cohorts), with its AS-norm cohort statistics when the enrolling model has a cohort.

Enrolling a name again adds its new recordings and replaces those it already has (same
content); ``replace=True`` first drops all of its previous recordings. Search over the
models is :class:`~lapsv.speakers.index.SpeakerIndex`; identification is
:mod:`lapsv.identification`.

Every write is one ``BEGIN IMMEDIATE`` transaction in WAL mode with a busy timeout, so
concurrent ``enroll`` processes queue instead of failing or losing a speaker, readers see
a consistent snapshot while a writer works, and a process killed mid-write leaves the
database as it was before that transaction (SQLite rolls the partial write back). WAL needs
a local filesystem (not NFS).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from lapsv.speakers import writes
from lapsv.speakers.names import check_speaker_name
from lapsv.speakers.records import (
    CohortStatistics,
    EnrollResult,
    SpeakerDBError,
    SpeakerInfo,
    SpeakerModels,
    Utterance,
)
from lapsv.speakers.schema import (
    FORMAT,
    SCHEMA_VERSION,
    busy,
    create_tables,
    from_blobs,
    now,
    select_in,
)

T = TypeVar("T")
DEFAULT_TIMEOUT = 60.0


class SpeakerDB:
    """One speaker database file.

    Args:
        path: the SQLite file.
        create: create it if missing (enrolment); otherwise a missing file is an error.
        timeout: seconds to wait for another process's write before giving up.

    Example:
        >>> import tempfile
        >>> db = SpeakerDB(Path(tempfile.mkdtemp()) / "speakers.db", create=True)
        >>> utt = Utterance("k1", "a.wav", 2.0, np.ones(4, np.float32))
        >>> db.enroll("alice", [utt], model_id="m1").added
        1
        >>> [s.name for s in db.speakers()], db.model_id
        (['alice'], 'm1')
        >>> db.close()
    """

    def __init__(
        self, path: str | Path, *, create: bool = False, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise SpeakerDBError(
                f"{self.path}: no such speaker database; create it with "
                f"`lapsv enroll MODEL --db {self.path} NAME AUDIO...`"
            )
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout
        try:
            self._connection = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
        except sqlite3.Error as error:
            raise SpeakerDBError(f"{self.path}: cannot open ({error})") from error
        try:
            self._setup(timeout, create=create)
        except sqlite3.OperationalError as error:
            self._connection.close()
            if busy(error):
                raise SpeakerDBError(
                    f"{self.path}: busy for more than {timeout:g} s ({error})"
                ) from error
            raise SpeakerDBError(f"{self.path}: cannot use it ({error})") from error
        except sqlite3.DatabaseError as error:
            self._connection.close()
            raise SpeakerDBError(f"{self.path}: not a lapsv speaker database ({error})") from error
        except SpeakerDBError:
            self._connection.close()
            raise

    def _retry(self, action: Callable[[], T]) -> T:
        """Run ``action``, retrying while SQLite answers busy / locked, up to the timeout.

        The busy timeout covers most waits, but not all: switching a new file to WAL while
        another process does the same answers "database is locked" at once.
        """
        deadline = time.monotonic() + self._timeout
        delay = 0.002
        while True:
            try:
                return action()
            except sqlite3.OperationalError as error:
                if not busy(error) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, 0.1)

    def _setup(self, timeout: float, *, create: bool) -> None:
        """Check (or, for a new empty file, create) the schema, upgrading an older one; then
        WAL and safety pragmas. A SQLite file holding other tables is refused untouched."""
        connection = self._connection
        connection.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        tables = self._retry(
            lambda: {row[0] for row in connection.execute("SELECT name FROM sqlite_master")}
        )
        if tables and not {"meta", "speakers", "utterances"} <= tables:
            raise SpeakerDBError(f"{self.path}: not a lapsv speaker database (other tables)")
        if not tables and not create:
            raise SpeakerDBError(f"{self.path}: not a lapsv speaker database (empty file)")
        if tables:
            self._check_format()
        if self._retry(lambda: connection.execute("PRAGMA journal_mode").fetchone()[0]) != "wal":
            self._retry(lambda: connection.execute("PRAGMA journal_mode = WAL").fetchone())
        connection.execute("PRAGMA synchronous = FULL")
        connection.execute("PRAGMA foreign_keys = ON")
        if not tables or int(self.meta().get("version", 0)) < SCHEMA_VERSION:
            self._create_or_upgrade()
        self._check_format()

    def _create_or_upgrade(self) -> None:
        """Create the tables of a new file, or upgrade a schema-1 file (its models are
        computed from its utterances). Idempotent: several processes may get here at once."""
        with self._write() as write:
            create_tables(write)
            write.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?), ('version', ?), "
                "('generation', '0')",
                (FORMAT, str(SCHEMA_VERSION)),
            )
            meta = dict(write.execute("SELECT key, value FROM meta").fetchall())
            if int(meta["version"]) < SCHEMA_VERSION:  # schema 1: compute the models
                ids = [row[0] for row in write.execute("SELECT id FROM speakers ORDER BY id")]
                if ids:
                    generation = writes.next_generation(write)
                    dim = int(meta.get("embed_dim", 0))
                    writes.update_models(write, ids, dim=dim, generation=generation, stats=None)
                write.execute(
                    "UPDATE meta SET value = ? WHERE key = 'version'", (str(SCHEMA_VERSION),)
                )

    def _check_format(self) -> None:
        meta = self.meta()
        if meta.get("format") != FORMAT:
            raise SpeakerDBError(f"{self.path}: not a lapsv speaker database")
        if int(meta.get("version", 0)) > SCHEMA_VERSION:
            raise SpeakerDBError(
                f"{self.path}: written by a newer lapsv (schema {meta.get('version')}); "
                "upgrade lapsv"
            )

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> SpeakerDB:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: taken at once (BEGIN IMMEDIATE), all or nothing."""
        connection = self._connection
        try:
            self._retry(lambda: connection.execute("BEGIN IMMEDIATE"))
        except sqlite3.OperationalError as error:
            raise SpeakerDBError(f"{self.path}: database busy or read-only ({error})") from error
        try:
            yield connection
        except BaseException:
            if connection.in_transaction:  # SQLite may have rolled back already
                connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every query inside sees the same snapshot."""
        connection = self._connection
        connection.execute("BEGIN")
        try:
            yield connection
        finally:
            connection.execute("COMMIT")

    def meta(self) -> dict[str, str]:
        return dict(self._connection.execute("SELECT key, value FROM meta").fetchall())

    @property
    def model_id(self) -> str | None:
        """The id of the model whose embeddings the database holds (None while empty)."""
        return self.meta().get("model_id")

    @property
    def embed_dim(self) -> int | None:
        value = self.meta().get("embed_dim")
        return None if value is None else int(value)

    @property
    def generation(self) -> int:
        """How many write transactions changed the database: a search index built at an
        older generation applies the changes since (:meth:`changes_since`)."""
        return int(self.meta().get("generation", 0))

    def check_model(self, model_id: str, *, model_name: str = "") -> None:
        """Refuse a model other than the one the database was enrolled with."""
        writes.refuse_other_model(self.meta(), self.path, model_id, model_name)

    def enroll(
        self,
        name: str,
        utterances: Sequence[Utterance],
        *,
        model_id: str,
        model_name: str = "",
        replace: bool = False,
        stats: CohortStatistics | None = None,
    ) -> EnrollResult:
        """Add (or update) ``utterances`` of speaker ``name`` in one transaction.

        Utterances already stored for ``name`` (same key) are replaced, new ones added;
        ``replace`` removes every previous utterance of ``name`` first. The speaker's model
        (and, with ``stats``, its AS-norm cohort statistics) is updated in the same
        transaction. A name the rule refuses is a
        :class:`~lapsv.speakers.names.SpeakerNameError`, before any write.
        """
        name = check_speaker_name(name)
        unique, dim = writes.check_embeddings(name, utterances)
        with self._write() as write:
            writes.claim_model(write, self.path, model_id, model_name, dim)
            generation = writes.next_generation(write)
            result, speaker_id = writes.enroll_speaker(
                write, name, unique, replace=replace, now=now()
            )
            writes.update_models(write, [speaker_id], dim=dim, generation=generation, stats=stats)
        return result

    def import_speakers(
        self,
        groups: Mapping[str, Sequence[Utterance]],
        *,
        model_id: str,
        model_name: str = "",
        stats: CohortStatistics | None = None,
    ) -> tuple[int, int]:
        """Enrol many speakers (name -> utterances) in one transaction: new names in bulk,
        existing ones as :meth:`enroll` does. Returns (new speakers, updated speakers).
        Every name is checked (:func:`~lapsv.speakers.names.check_speaker_name`) before
        anything is written: one refused name refuses the import."""
        checked = {}
        for given, utterances in groups.items():
            name = check_speaker_name(given)
            if name in checked:
                raise SpeakerDBError(
                    f"speaker {name!r} is named twice (in different Unicode "
                    "forms of the same name): list each speaker once"
                )
            checked[name] = writes.check_embeddings(name, utterances)
        dims = {dim for _, dim in checked.values()}
        if len(dims) != 1:
            raise SpeakerDBError(f"embeddings of sizes {sorted(dims)} in one import")
        dim = dims.pop()
        with self._write() as write:
            writes.claim_model(write, self.path, model_id, model_name, dim)
            generation = writes.next_generation(write)
            known = {  # looked up by name: a few names cost a few lookups, not a scan
                name
                for (name,) in select_in(
                    write, "SELECT name FROM speakers WHERE name IN", list(checked)
                )
            }
            fresh = {name: u for name, (u, _) in checked.items() if name not in known}
            if fresh:
                writes.import_new_speakers(
                    write, fresh, dim=dim, now=now(), generation=generation, stats=stats
                )
            updated = [
                writes.enroll_speaker(write, name, checked[name][0], replace=False, now=now())[1]
                for name in sorted(known)
            ]
            for start in range(0, len(updated), writes.MODEL_BATCH):  # bounded memory
                writes.update_models(
                    write,
                    updated[start : start + writes.MODEL_BATCH],
                    dim=dim,
                    generation=generation,
                    stats=stats,
                )
        return len(fresh), len(known)

    def delete(self, name: str) -> int:
        """Remove speaker ``name`` and its utterances; returns how many utterances went."""
        with self._write() as write:
            generation = writes.next_generation(write)
            return writes.delete_speaker(write, self.path, name, generation)

    def count(self) -> int:
        """How many speakers are enrolled."""
        return self._connection.execute("SELECT COUNT(*) FROM speakers").fetchone()[0]

    def speaker_id(self, name: str) -> int | None:
        """The row id of speaker ``name`` (for :meth:`models`), None when not enrolled."""
        return writes.find_speaker(self._connection, name)

    def speakers(self) -> list[SpeakerInfo]:
        """Every speaker, by name."""
        rows = self._connection.execute(
            "SELECT s.name, COALESCE(m.count, 0), COALESCE(m.seconds, 0), s.created, s.updated "
            "FROM speakers s LEFT JOIN models m ON m.speaker_id = s.id ORDER BY s.name"
        ).fetchall()
        return [SpeakerInfo(*row) for row in rows]

    def utterances(self, name: str) -> list[Utterance]:
        """The stored utterances of ``name``, in key order."""
        dim = self.embed_dim or 0
        with self.read() as read:
            rows = read.execute(
                "SELECT key, source, seconds, embedding FROM utterances "
                "WHERE speaker_id = ? ORDER BY key",
                (writes.find_speaker(read, name),),
            ).fetchall()
        if not rows:
            return []
        vectors = from_blobs([row[3] for row in rows], dim)
        return [
            Utterance(k, src, sec, v) for (k, src, sec, _), v in zip(rows, vectors, strict=True)
        ]

    def models(self, ids: Sequence[int] | None = None) -> SpeakerModels:
        """Speaker models from one consistent snapshot: every speaker by name, or the
        speakers with row ids ``ids`` in that order (ids no longer there are left out)."""
        columns = (
            "SELECT s.id, s.name, m.vector, m.raw, m.seconds, m.stats_key, m.stats_mu, "
            "m.stats_sd FROM models m JOIN speakers s ON s.id = m.speaker_id"
        )
        with self.read() as read:
            dim = int(
                dict(read.execute("SELECT key, value FROM meta").fetchall()).get("embed_dim", 0)
            )
            if ids is None:
                rows = read.execute(f"{columns} ORDER BY s.name").fetchall()
            else:
                wanted = [int(i) for i in ids]
                found = {row[0]: row for row in select_in(read, f"{columns} WHERE s.id IN", wanted)}
                rows = [found[i] for i in wanted if i in found]
        if not rows and ids is None:
            raise SpeakerDBError(f"{self.path}: no speaker enrolled yet")
        return SpeakerModels(
            tuple(row[1] for row in rows),
            from_blobs([row[2] for row in rows], dim),
            from_blobs([row[3] for row in rows], dim),
            np.array([row[4] for row in rows], dtype=np.float64),
            np.array([row[0] for row in rows], dtype=np.int64),
            tuple(row[5] for row in rows),
            np.array(
                [[row[6] for row in rows], [row[7] for row in rows]], dtype=np.float64
            ).reshape(2, len(rows)),
        )

    def changes_since(self, generation: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
        """What changed after ``generation``, from one snapshot: the current generation,
        the (r,) ids of removed speakers, and the (u,) ids and (u, E) unit vectors of the
        speakers (re)written since (all of them for generation -1)."""
        with self.read() as read:
            meta = dict(read.execute("SELECT key, value FROM meta").fetchall())
            current, dim = int(meta.get("generation", 0)), int(meta.get("embed_dim", 0))
            removed = [
                row[0]
                for row in read.execute(
                    "SELECT speaker_id FROM removed WHERE generation > ?", (generation,)
                )
            ]
            rows = read.execute(
                "SELECT speaker_id, vector FROM models WHERE generation > ?", (generation,)
            ).fetchall()
        ids = np.array([row[0] for row in rows], dtype=np.int64)
        return (
            current,
            np.array(removed, dtype=np.int64),
            ids,
            from_blobs([r[1] for r in rows], dim),
        )
