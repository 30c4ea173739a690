"""What the speaker database stores and returns: utterances, speakers, models, results."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from lapsv.errors import LapsvError


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
    """Speakers' models: names (S,), vectors (S, E) unit, raw (S, E) mean raw embeddings,
    seconds (S,) total enrolment durations (QMF quality features), ids (S,) their row ids,
    and their stored AS-norm cohort statistics: stats_key (S,) (None where absent),
    stats (2, S) mean and standard deviation."""

    names: tuple[str, ...]
    vectors: np.ndarray
    raw: np.ndarray
    seconds: np.ndarray
    ids: np.ndarray
    stats_key: tuple[str | None, ...]
    stats: np.ndarray


@dataclasses.dataclass(frozen=True)
class CohortStatistics:
    """How to compute a speaker model's AS-norm cohort statistics at enrolment.

    key: fingerprint of the scoring state (:attr:`~lapsv.scoring.state.ScoringState.key`);
    compute: (n, E) unit model vectors -> their (n,) mean and (n,) standard deviation of
    the top-n cohort scores (:func:`~lapsv.scoring.norm.cohort_statistics`).
    """

    key: str
    compute: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


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
