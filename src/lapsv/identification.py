"""Enrol and identify recordings with a :class:`~lapsv.speaker.Speaker` and a speaker database.

Identification scores a recording against every enrolled speaker's model with
:func:`~lapsv.scoring.state.score_pairs`, the path ``lapsv verify`` uses: cosine (training
mean subtracted when the model has one), AS-norm and the QMF LLR when the model has a
cohort and calibration.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lapsv.inference import DEFAULT_MAX_SECONDS, extract_embeddings
from lapsv.scoring.state import resolve_threshold, score_pairs
from lapsv.speaker import Speaker
from lapsv.speakers import EnrollResult, SpeakerDB, SpeakerDBError, Utterance, content_key


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    score: float
    cosine: float
    asnorm: float | None
    llr: float | None


@dataclasses.dataclass(frozen=True)
class Identification:
    """candidates: the top-k speakers, best first, by ``score_name``; answer: the best
    name, ``"unknown"`` when its score is below the threshold, None without a threshold."""

    source: str
    candidates: tuple[Candidate, ...]
    score_name: str
    threshold: float | None
    threshold_source: str
    answer: str | None


def identify_embeddings(
    db: SpeakerDB,
    model: Speaker,
    embeddings: np.ndarray,
    seconds: Sequence[float],
    sources: Sequence[str],
    *,
    top_k: int = 5,
    threshold: float | None = None,
) -> list[Identification]:
    """Rank the enrolled speakers for each (E,) row of ``embeddings`` (raw, of ``model``).

    Scores are those of ``lapsv verify`` against each speaker's model: cosine (training mean
    subtracted when the model has one), AS-norm and the QMF LLR when the model has a cohort
    and calibration. The ranking and the decision use the last of these that exists; the
    threshold is ``threshold``, else LLR 0 for a calibrated model, else none (then no
    "unknown" answer is possible and ``answer`` is None).
    """
    db.check_model(model.model_id)
    if top_k < 1:
        raise SpeakerDBError(f"top_k must be at least 1, got {top_k}")
    speakers = db.models()
    state = model.scoring
    n_speakers, n_tests = len(speakers.names), len(embeddings)
    pairs_e = np.tile(np.arange(n_speakers), n_tests)
    pairs_t = np.repeat(np.arange(n_tests), n_speakers)
    scores = score_pairs(
        state,
        speakers.vectors,
        np.asarray(embeddings, dtype=np.float32),
        pairs_e,
        pairs_t,
        enroll_seconds=speakers.seconds,
        test_seconds=np.asarray(seconds, dtype=np.float64),
        enroll_raw=speakers.raw,
    )
    limit, source_of_limit = resolve_threshold(state, threshold)

    def grid(values: np.ndarray | None) -> np.ndarray | None:
        return None if values is None else np.asarray(values).reshape(n_tests, n_speakers)

    decision, cosine, asnorm, llr = map(
        grid, (scores.decision, scores.cosine, scores.asnorm, scores.llr)
    )
    results = []
    for test in range(n_tests):
        order = np.argsort(-decision[test], kind="stable")[:top_k]
        candidates = tuple(
            Candidate(
                speakers.names[s],
                float(decision[test, s]),
                float(cosine[test, s]),
                None if asnorm is None else float(asnorm[test, s]),
                None if llr is None else float(llr[test, s]),
            )
            for s in order
        )
        answer = None
        if limit is not None:
            answer = candidates[0].name if candidates[0].score >= limit else "unknown"
        results.append(
            Identification(
                sources[test], candidates, scores.decision_name, limit, source_of_limit, answer
            )
        )
    return results


def enroll_files(
    db: SpeakerDB,
    model: Speaker,
    name: str,
    paths: Sequence[str | Path],
    *,
    model_name: str = "",
    replace: bool = False,
    batch_size: int = 16,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    progress: bool = False,
) -> tuple[EnrollResult | None, list[tuple[str, str]]]:
    """Embed audio files with ``model`` and enrol the good ones as ``name``.

    Returns the result (None when no file could be embedded) and the failures
    ``(path, reason)``; the model is checked against the database before any embedding.
    """
    db.check_model(model.model_id, model_name=model_name)
    items = [(str(p), str(p)) for p in paths]
    embedded = extract_embeddings(
        model,
        items,
        batch_size=batch_size,
        device=model.device,
        progress=progress,
        max_seconds=max_seconds,
    )
    utterances = [
        Utterance(content_key(path), os.path.abspath(path), float(sec), vector)
        for path, vector, sec in zip(
            embedded.ids, embedded.embeddings, embedded.seconds, strict=True
        )
    ]
    if not utterances:
        return None, embedded.failures
    result = db.enroll(
        name, utterances, model_id=model.model_id, model_name=model_name, replace=replace
    )
    return result, embedded.failures


def identify_files(
    db: SpeakerDB,
    model: Speaker,
    paths: Sequence[str | Path],
    *,
    top_k: int = 5,
    threshold: float | None = None,
    model_name: str = "",
    batch_size: int = 16,
    max_seconds: float | None = DEFAULT_MAX_SECONDS,
    progress: bool = False,
) -> tuple[list[Identification], list[tuple[str, str]]]:
    """Embed audio files and identify each; returns the answers and the failures."""
    db.check_model(model.model_id, model_name=model_name)
    embedded = extract_embeddings(
        model,
        [(str(p), str(p)) for p in paths],
        batch_size=batch_size,
        device=model.device,
        progress=progress,
        max_seconds=max_seconds,
    )
    if not embedded.ids:
        return [], embedded.failures
    embedded = embedded.in_order([str(p) for p in paths])  # answers in the inputs' order
    answers = identify_embeddings(
        db,
        model,
        embedded.embeddings,
        embedded.seconds,
        embedded.ids,
        top_k=top_k,
        threshold=threshold,
    )
    return answers, embedded.failures
