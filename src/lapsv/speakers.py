"""A speaker database in one SQLite file: enrol voices, list, delete, read speaker models.

The file (``lapsv enroll MODEL --db SPEAKERS.db NAME AUDIO...``) holds three tables:

* ``meta``: format, schema version, and the id of the model whose embeddings it holds
  (:attr:`~lapsv.speaker.Speaker.model_id`, the content hash of the weights). Embeddings of
  another model are refused: they live in another space and would score as noise.
* ``speakers``: one row per name, with creation and update times.
* ``utterances``: every enrolment recording of a speaker, keyed by the SHA-256 of its
  content, with its source, duration and raw embedding (E float32 little-endian, a BLOB).

A speaker's model is computed from its utterances when scoring, in key order (so the same
utterances always give the same model, whatever the enrolment order): the mean of their
length-normalised embeddings, normalised (:func:`~lapsv.scoring.norm.average_models`, as
for enrolment models and AS-norm cohorts). Identification is :mod:`lapsv.identification`.
Enrolling a name again adds its new recordings and replaces those it already has (same
content); ``replace=True`` first drops all of its previous recordings.

Every write is one ``BEGIN IMMEDIATE`` transaction in WAL mode with a busy timeout, so
concurrent ``enroll`` processes queue instead of failing or losing a speaker, readers see
a consistent snapshot while a writer works, and a process killed mid-write leaves the
database as it was before that transaction (SQLite rolls the partial write back). WAL needs
a local filesystem (not NFS).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np

from lapsv.errors import LapsvError
from lapsv.scoring.norm import average_models, length_normalize

T = TypeVar("T")
FORMAT = "lapsv-speakers"
SCHEMA_VERSION = 1
DEFAULT_TIMEOUT = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS speakers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS utterances (
    speaker_id INTEGER NOT NULL REFERENCES speakers(id) ON DELETE CASCADE,
    key TEXT NOT NULL,
    source TEXT NOT NULL,
    seconds REAL NOT NULL,
    embedding BLOB NOT NULL,
    added TEXT NOT NULL,
    PRIMARY KEY (speaker_id, key)
);
"""


class SpeakerDBError(LapsvError):
    """The speaker database cannot be used as asked; the message says why."""


@dataclasses.dataclass(frozen=True)
class Utterance:
    """key: SHA-256 of the recording's content; embedding: (E,) float32 raw embedding."""

    key: str
    source: str
    seconds: float
    embedding: np.ndarray


@dataclasses.dataclass(frozen=True)
class SpeakerInfo:
    name: str
    utterances: int
    seconds: float
    created: str
    updated: str


@dataclasses.dataclass(frozen=True)
class EnrollResult:
    """added / updated / removed: utterance counts of this enrolment; total: after it."""

    name: str
    new_speaker: bool
    added: int
    updated: int
    removed: int
    total: int
    seconds: float


@dataclasses.dataclass(frozen=True)
class SpeakerModels:
    """Every speaker's model: names (S,), vectors (S, E) unit, raw (S, E) mean raw
    embeddings and seconds (S,) total enrolment durations (for QMF quality features)."""

    names: tuple[str, ...]
    vectors: np.ndarray
    raw: np.ndarray
    seconds: np.ndarray


def _busy(error: sqlite3.OperationalError) -> bool:
    message = str(error).lower()
    return "locked" in message or "busy" in message


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _blob(vector: np.ndarray) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _vector(blob: bytes, dim: int) -> np.ndarray:
    vector = np.frombuffer(blob, dtype="<f4")
    if vector.size != dim:
        raise SpeakerDBError(f"an embedding has {vector.size} values, the database says {dim}")
    return vector.astype(np.float32)


def content_key(path: str | Path) -> str:
    """SHA-256 of a file's bytes: the same recording enrolled twice is one utterance."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def array_key(samples: np.ndarray, sample_rate: int) -> str:
    """SHA-256 of an array's float32 samples and rate (the key of an in-memory recording)."""
    digest = hashlib.sha256(f"{int(sample_rate)}:".encode())
    digest.update(np.ascontiguousarray(samples, dtype="<f4").tobytes())
    return digest.hexdigest()


def _store_utterance(
    connection: sqlite3.Connection, speaker_id: int, utterance: Utterance, now: str
) -> None:
    """Insert one utterance of a speaker, or replace the stored one with the same key."""
    connection.execute(
        "INSERT INTO utterances (speaker_id, key, source, seconds, embedding, added) "
        "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (speaker_id, key) DO UPDATE SET "
        "source = excluded.source, seconds = excluded.seconds, "
        "embedding = excluded.embedding, added = excluded.added",
        (
            speaker_id,
            utterance.key,
            utterance.source,
            float(utterance.seconds),
            _blob(utterance.embedding),
            now,
        ),
    )


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
            if _busy(error):
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
                if not _busy(error) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(2 * delay, 0.1)

    def _setup(self, timeout: float, *, create: bool) -> None:
        """Check (or, for a new empty file, create) the schema; then WAL and safety pragmas.

        A SQLite file holding other tables is refused untouched.
        """
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
        if not tables:  # several processes may get here at once: every statement is idempotent
            with self._write() as write:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        write.execute(statement)
                write.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('format', ?), ('version', ?)",
                    (FORMAT, str(SCHEMA_VERSION)),
                )
            self._check_format()

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
    def _read(self) -> Iterator[sqlite3.Connection]:
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

    def check_model(self, model_id: str, *, model_name: str = "") -> None:
        """Refuse a model other than the one the database was enrolled with."""
        self._check_model(self.meta(), model_id, model_name)

    def _check_model(self, meta: dict[str, str], model_id: str, model_name: str) -> None:
        stored = meta.get("model_id")
        if stored is not None and stored != model_id:
            what = f" ({meta['model_name']})" if meta.get("model_name") else ""
            given = f"{model_name} " if model_name else ""
            raise SpeakerDBError(
                f"{self.path} holds embeddings of model {stored}{what}, not of model "
                f"{given}({model_id}); embeddings of different models cannot be compared: use "
                "the model it was enrolled with, or another --db"
            )

    def enroll(
        self,
        name: str,
        utterances: Sequence[Utterance],
        *,
        model_id: str,
        model_name: str = "",
        replace: bool = False,
    ) -> EnrollResult:
        """Add (or update) ``utterances`` of speaker ``name`` in one transaction.

        Utterances already stored for ``name`` (same key) are replaced, new ones added;
        ``replace`` removes every previous utterance of ``name`` first.
        """
        name = name.strip()
        if not name:
            raise SpeakerDBError("a speaker needs a non-empty name")
        if not utterances:
            raise SpeakerDBError(f"no utterance to enrol for {name}")
        unique = list({u.key: u for u in utterances}.values())
        dims = {int(np.asarray(u.embedding).size) for u in unique}
        if len(dims) != 1:
            raise SpeakerDBError(f"utterances of {name} have embeddings of sizes {sorted(dims)}")
        dim = dims.pop()
        for utterance in unique:
            if not np.isfinite(utterance.embedding).all():
                raise SpeakerDBError(f"{utterance.source}: embedding has NaN or infinite values")
        now = _now()
        with self._write() as write:
            meta = dict(write.execute("SELECT key, value FROM meta").fetchall())
            self._check_model(meta, model_id, model_name)
            if "model_id" not in meta:
                write.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("model_id", model_id), ("model_name", model_name), ("embed_dim", str(dim))],
                )
            elif int(meta["embed_dim"]) != dim:
                raise SpeakerDBError(
                    f"{self.path} holds {meta['embed_dim']}-d embeddings, these are {dim}-d"
                )
            row = write.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
            new_speaker = row is None
            if new_speaker:
                speaker_id = write.execute(
                    "INSERT INTO speakers (name, created, updated) VALUES (?, ?, ?)",
                    (name, now, now),
                ).lastrowid
            else:
                speaker_id = row[0]
                write.execute("UPDATE speakers SET updated = ? WHERE id = ?", (now, speaker_id))
            previous = {
                key
                for (key,) in write.execute(
                    "SELECT key FROM utterances WHERE speaker_id = ?", (speaker_id,)
                )
            }
            if replace:
                write.execute("DELETE FROM utterances WHERE speaker_id = ?", (speaker_id,))
            for utterance in unique:
                _store_utterance(write, speaker_id, utterance, now)
            total, seconds = write.execute(
                "SELECT COUNT(*), SUM(seconds) FROM utterances WHERE speaker_id = ?",
                (speaker_id,),
            ).fetchone()
        keys = {u.key for u in unique}
        removed = len(previous - keys) if replace else 0
        added, updated = len(keys - previous), len(keys & previous)
        return EnrollResult(name, new_speaker, added, updated, removed, total, seconds)

    def delete(self, name: str) -> int:
        """Remove speaker ``name`` and its utterances; returns how many utterances went."""
        with self._write() as write:
            row = write.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise SpeakerDBError(f"{self.path}: no speaker named {name!r}")
            count = write.execute("DELETE FROM utterances WHERE speaker_id = ?", (row[0],)).rowcount
            write.execute("DELETE FROM speakers WHERE id = ?", (row[0],))
        return count

    def speakers(self) -> list[SpeakerInfo]:
        """Every speaker, by name."""
        rows = self._connection.execute(
            "SELECT s.name, COUNT(u.key), COALESCE(SUM(u.seconds), 0), s.created, s.updated "
            "FROM speakers s LEFT JOIN utterances u ON u.speaker_id = s.id "
            "GROUP BY s.id ORDER BY s.name"
        ).fetchall()
        return [SpeakerInfo(*row) for row in rows]

    def utterances(self, name: str) -> list[Utterance]:
        """The stored utterances of ``name``, in key order."""
        dim = self.embed_dim or 0
        with self._read() as read:
            rows = read.execute(
                "SELECT u.key, u.source, u.seconds, u.embedding FROM utterances u "
                "JOIN speakers s ON s.id = u.speaker_id WHERE s.name = ? ORDER BY u.key",
                (name,),
            ).fetchall()
        return [Utterance(k, src, sec, _vector(blob, dim)) for k, src, sec, blob in rows]

    def models(self) -> SpeakerModels:
        """Every speaker's model, from one consistent snapshot (see the module doc)."""
        with self._read() as read:
            meta = dict(read.execute("SELECT key, value FROM meta").fetchall())
            rows = read.execute(
                "SELECT s.name, u.seconds, u.embedding FROM utterances u "
                "JOIN speakers s ON s.id = u.speaker_id ORDER BY s.name, u.key"
            ).fetchall()
        if not rows:
            raise SpeakerDBError(f"{self.path}: no speaker enrolled yet")
        dim = int(meta["embed_dim"])
        names = [row[0] for row in rows]
        raw = np.stack([_vector(row[2], dim) for row in rows])
        seconds = np.array([row[1] for row in rows], dtype=np.float64)
        speakers, groups = np.unique(np.array(names, dtype=object).astype(str), return_inverse=True)
        counts = np.bincount(groups, minlength=len(speakers))[:, None]
        raw_sum = np.zeros((len(speakers), dim), dtype=np.float64)
        np.add.at(raw_sum, groups, raw)
        return SpeakerModels(
            tuple(map(str, speakers)),
            average_models(length_normalize(raw), groups, len(speakers)),
            (raw_sum / counts).astype(np.float32),
            np.bincount(groups, weights=seconds, minlength=len(speakers)),
        )
