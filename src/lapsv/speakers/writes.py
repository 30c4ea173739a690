"""The speaker database's write transactions, on a connection inside ``BEGIN IMMEDIATE``:
enrol one speaker, import many, delete, and keep each speaker's model up to date.

Every function here runs inside the caller's transaction (:meth:`SpeakerDB._write`), so a
speaker's utterances, its model row and the database generation change together or not
at all.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lapsv.scoring.norm import average_models, group_means, length_normalize
from lapsv.speakers.names import normal_name
from lapsv.speakers.records import CohortStatistics, EnrollResult, SpeakerDBError, Utterance
from lapsv.speakers.schema import from_blobs, to_blob

MODEL_BATCH = 100_000  # speakers whose models are computed together (bounded memory)
_MODEL_ROW = (
    "INSERT OR REPLACE INTO models (speaker_id, vector, raw, seconds, count, generation, "
    "stats_key, stats_mu, stats_sd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def next_generation(write: sqlite3.Connection) -> int:
    """Count this transaction as one more change of the database; returns its number."""
    write.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
    return int(write.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0])


def find_speaker(connection: sqlite3.Connection, name: str) -> int | None:
    """The row id of speaker ``name``, None when absent: the name as stored (an older
    version may have stored any string) or, failing that, in NFC (how names are stored)."""
    for form in dict.fromkeys((name, normal_name(name))):
        row = connection.execute("SELECT id FROM speakers WHERE name = ?", (form,)).fetchone()
        if row is not None:
            return int(row[0])
    return None


def check_embeddings(name: str, utterances: Sequence[Utterance]) -> tuple[list[Utterance], int]:
    """The utterances with distinct keys (the last of each) and their embedding size."""
    if not utterances:
        raise SpeakerDBError(f"no utterance to enrol for {name}")
    unique = list({u.key: u for u in utterances}.values())
    dims = {int(np.asarray(u.embedding).size) for u in unique}
    if len(dims) != 1:
        raise SpeakerDBError(f"utterances of {name} have embeddings of sizes {sorted(dims)}")
    for utterance in unique:
        if not np.isfinite(utterance.embedding).all():
            raise SpeakerDBError(f"{utterance.source}: embedding has NaN or infinite values")
    return unique, dims.pop()


def refuse_other_model(meta: Mapping[str, str], path: Path, model_id: str, model_name: str) -> None:
    """Refuse a model other than the one the database (its ``meta``) was enrolled with."""
    stored = meta.get("model_id")
    if stored is not None and stored != model_id:
        what = f" ({meta['model_name']})" if meta.get("model_name") else ""
        given = f"{model_name} " if model_name else ""
        raise SpeakerDBError(
            f"{path} holds embeddings of model {stored}{what}, not of model "
            f"{given}({model_id}); embeddings of different models cannot be compared: use "
            "the model it was enrolled with, or another --db"
        )


def claim_model(
    write: sqlite3.Connection, path: Path, model_id: str, model_name: str, dim: int
) -> None:
    """Refuse embeddings of another model or size; the first enrolment names the model."""
    meta = dict(write.execute("SELECT key, value FROM meta").fetchall())
    refuse_other_model(meta, path, model_id, model_name)
    if "model_id" not in meta:
        write.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("model_id", model_id), ("model_name", model_name), ("embed_dim", str(dim))],
        )
    elif int(meta["embed_dim"]) != dim:
        raise SpeakerDBError(f"{path} holds {meta['embed_dim']}-d embeddings, these are {dim}-d")


def store_utterance(
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
            to_blob(utterance.embedding),
            now,
        ),
    )


def enroll_speaker(
    write: sqlite3.Connection,
    name: str,
    unique: Sequence[Utterance],
    *,
    replace: bool,
    now: str,
) -> tuple[EnrollResult, int]:
    """Add (or update) ``unique`` utterances of ``name`` (already checked by
    :func:`~lapsv.speakers.names.check_speaker_name`); returns the result and its id. The
    caller updates the speaker's model (:func:`update_models`)."""
    speaker_id = find_speaker(write, name)
    new_speaker = speaker_id is None
    if new_speaker:
        speaker_id = write.execute(
            "INSERT INTO speakers (name, created, updated) VALUES (?, ?, ?)", (name, now, now)
        ).lastrowid
    else:
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
        store_utterance(write, speaker_id, utterance, now)
    total, seconds = write.execute(
        "SELECT COUNT(*), SUM(seconds) FROM utterances WHERE speaker_id = ?", (speaker_id,)
    ).fetchone()
    keys = {u.key for u in unique}
    removed = len(previous - keys) if replace else 0
    added, updated = len(keys - previous), len(keys & previous)
    return EnrollResult(name, new_speaker, added, updated, removed, total, seconds), speaker_id


def update_models(
    write: sqlite3.Connection,
    speaker_ids: Sequence[int],
    *,
    dim: int,
    generation: int,
    stats: CohortStatistics | None,
) -> None:
    """Recompute the model rows of ``speaker_ids`` from their stored utterances (key order:
    the same utterances always give the same model)."""
    raw_rows, groups, seconds = [], [], []
    for group, speaker_id in enumerate(speaker_ids):
        rows = write.execute(
            "SELECT seconds, embedding FROM utterances WHERE speaker_id = ? ORDER BY key",
            (speaker_id,),
        ).fetchall()
        raw_rows += [blob for _, blob in rows]
        seconds += [sec for sec, _ in rows]
        groups += [group] * len(rows)
    write_models(
        write,
        speaker_ids,
        from_blobs(raw_rows, dim),
        np.array(groups, dtype=np.int64),
        np.array(seconds, dtype=np.float64),
        generation=generation,
        stats=stats,
    )


def write_models(
    write: sqlite3.Connection,
    speaker_ids: Sequence[int],
    raw: np.ndarray,
    groups: np.ndarray,
    seconds: np.ndarray,
    *,
    generation: int,
    stats: CohortStatistics | None,
) -> None:
    """Model rows of ``speaker_ids`` from (n, E) raw utterance embeddings in key order,
    each row's (n,) speaker position ``groups`` and (n,) ``seconds``."""
    n = len(speaker_ids)
    vectors = average_models(length_normalize(raw), groups, n)
    counts = np.bincount(groups, minlength=n)
    raw_mean = group_means(np.asarray(raw, dtype=np.float64), groups, n)
    totals = np.bincount(groups, weights=seconds, minlength=n)
    mu = sd = np.full(n, np.nan)
    key = None
    if stats is not None:
        key = stats.key
        mu, sd = stats.compute(vectors)
    write.executemany(
        _MODEL_ROW,
        (
            (
                int(speaker_ids[i]),
                to_blob(vectors[i]),
                to_blob(raw_mean[i]),
                float(totals[i]),
                int(counts[i]),
                generation,
                key,
                None if key is None else float(mu[i]),
                None if key is None else float(sd[i]),
            )
            for i in range(n)
        ),
    )


def delete_speaker(write: sqlite3.Connection, path: Path, name: str, generation: int) -> int:
    """Remove ``name`` (its utterances and model go with it); returns its utterance count."""
    speaker_id = find_speaker(write, name)
    if speaker_id is None:
        raise SpeakerDBError(f"{path}: no speaker named {name!r}")
    count = write.execute("DELETE FROM utterances WHERE speaker_id = ?", (speaker_id,)).rowcount
    write.execute("DELETE FROM models WHERE speaker_id = ?", (speaker_id,))
    write.execute("DELETE FROM speakers WHERE id = ?", (speaker_id,))
    write.execute(
        "INSERT OR REPLACE INTO removed (speaker_id, generation) VALUES (?, ?)",
        (speaker_id, generation),
    )
    return count


def import_new_speakers(
    write: sqlite3.Connection,
    groups: Mapping[str, Sequence[Utterance]],
    *,
    dim: int,
    now: str,
    generation: int,
    stats: CohortStatistics | None,
) -> None:
    """Insert speakers that do not exist yet (names already checked by
    :func:`~lapsv.speakers.names.check_speaker_name`), with their utterances and models, in
    bulk."""
    names = list(groups)
    first = write.execute("SELECT COALESCE(MAX(id), 0) FROM speakers").fetchone()[0] + 1
    write.executemany(
        "INSERT INTO speakers (id, name, created, updated) VALUES (?, ?, ?, ?)",
        ((first + i, name, now, now) for i, name in enumerate(names)),
    )
    ordered = [sorted(groups[name], key=lambda u: u.key) for name in names]
    write.executemany(
        "INSERT INTO utterances (speaker_id, key, source, seconds, embedding, added) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (
            (first + i, u.key, u.source, float(u.seconds), to_blob(u.embedding), now)
            for i, utterances in enumerate(ordered)
            for u in utterances
        ),
    )
    raw = np.stack([u.embedding for utterances in ordered for u in utterances]).astype(np.float32)
    positions = np.repeat(np.arange(len(names)), [len(u) for u in ordered])
    seconds = np.array([u.seconds for utterances in ordered for u in utterances], np.float64)
    ids = list(range(first, first + len(names)))
    for start in range(0, len(ids), MODEL_BATCH):  # bounded memory for the models' arithmetic
        part = (positions >= start) & (positions < start + MODEL_BATCH)
        write_models(
            write,
            ids[start : start + MODEL_BATCH],
            raw[part],
            positions[part] - start,
            seconds[part],
            generation=generation,
            stats=stats,
        )
