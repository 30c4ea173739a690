"""The speaker database's tables, their upgrade from older files, and value encodings.

Schema 2 (this one) adds to schema 1 (``meta``, ``speakers``, ``utterances``):

* ``models``: each speaker's model, kept up to date inside the transaction that changes
  the speaker: the unit vector (mean of its length-normalised utterance embeddings,
  normalised), the mean raw embedding (QMF quality features), total seconds, utterance
  count, ``generation`` (the database generation that last wrote it) and, when the
  enrolling model had an AS-norm cohort, the speaker's cohort statistics (``stats_key``:
  the fingerprint of that scoring state; ``stats_mu`` / ``stats_sd``: mean and standard
  deviation of its top-n cohort scores).
* ``removed``: the ids of deleted speakers and the generation that deleted them.
* ``meta.generation``: incremented by every write transaction. A search index records the
  generation it was built at and applies the ``models`` / ``removed`` rows newer than it
  (:mod:`lapsv.speakers.index`), so it never answers from an older state.

A schema-1 file is upgraded in place, in one transaction, the first time it is opened
for writing or searching (its models are computed from its utterances).
"""

from __future__ import annotations

import datetime
import sqlite3
from collections.abc import Iterator, Sequence

import numpy as np

FORMAT = "lapsv-speakers"
SCHEMA_VERSION = 2
PARAMETER_LIMIT = 500  # values per IN (...) query, under SQLite's parameter limit

TABLES = """
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
CREATE TABLE IF NOT EXISTS models (
    speaker_id INTEGER PRIMARY KEY REFERENCES speakers(id) ON DELETE CASCADE,
    vector BLOB NOT NULL,
    raw BLOB NOT NULL,
    seconds REAL NOT NULL,
    count INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    stats_key TEXT,
    stats_mu REAL,
    stats_sd REAL
);
CREATE INDEX IF NOT EXISTS models_by_generation ON models (generation);
CREATE TABLE IF NOT EXISTS removed (
    speaker_id INTEGER PRIMARY KEY,
    generation INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS removed_by_generation ON removed (generation);
"""


def create_tables(connection: sqlite3.Connection) -> None:
    """Every table and index (idempotent: safe when several processes create at once)."""
    for statement in TABLES.split(";"):
        if statement.strip():
            connection.execute(statement)


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def busy(error: sqlite3.OperationalError) -> bool:
    message = str(error).lower()
    return "locked" in message or "busy" in message


def to_blob(vector: np.ndarray) -> bytes:
    """(E,) vector -> E float32 little-endian values."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def from_blobs(blobs: list[bytes], dim: int) -> np.ndarray:
    """Inverse of :func:`to_blob` for many rows: (n, dim) float32; a row of the wrong size
    is a ValueError."""
    joined = b"".join(blobs)
    if len(joined) != 4 * dim * len(blobs):
        sizes = sorted({len(b) // 4 for b in blobs})
        raise ValueError(f"embeddings of {sizes} values where the database says {dim}")
    return np.frombuffer(joined, dtype="<f4").reshape(len(blobs), dim).astype(np.float32)


def select_in(connection: sqlite3.Connection, select: str, values: Sequence) -> Iterator[tuple]:
    """The rows of ``select`` (a query ending in ``IN``) for every one of ``values``, in
    queries of at most :data:`PARAMETER_LIMIT` values: each looks its values up by the
    column's index, so the cost grows with ``len(values)``, not with the table."""
    for start in range(0, len(values), PARAMETER_LIMIT):
        part = list(values[start : start + PARAMETER_LIMIT])
        yield from connection.execute(f"{select} ({','.join('?' * len(part))})", part)
