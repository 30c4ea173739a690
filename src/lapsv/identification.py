"""Enrol and identify recordings with a :class:`~lapsv.speaker.Speaker` and a speaker database.

Identification searches the enrolled speakers' models by cosine
(:class:`~lapsv.speakers.index.SpeakerIndex`: exact up to 200,000 speakers, HNSW above),
then scores the best candidates with :func:`~lapsv.scoring.state.score_pairs`, the path
``lapsv verify`` uses: cosine (training mean subtracted when the model has one), AS-norm
(with each speaker's cohort statistics, stored at enrolment) and the QMF LLR when the
model has a cohort and calibration. With a cohort, the ``SHORTLIST`` best candidates by
cosine are rescored, so a speaker ranked below them by cosine cannot win by AS-norm.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from lapsv.embeddings import EmbeddingSet
from lapsv.inference import DEFAULT_MAX_SECONDS, extract_embeddings
from lapsv.scoring.norm import cohort_statistics
from lapsv.scoring.state import (
    Scores,
    Verification,
    resolve_threshold,
    score_pairs,
    verification_of,
)
from lapsv.speaker import Speaker
from lapsv.speakers import (
    CohortStatistics,
    EnrollResult,
    SpeakerDB,
    SpeakerDBError,
    SpeakerModels,
    Utterance,
    content_key,
)
from lapsv.speakers.index import SpeakerIndex


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


SHORTLIST = 100  # candidates rescored with AS-norm / QMF per query (cosine top-k alone without)


def cohort_statistics_of(model: Speaker) -> CohortStatistics | None:
    """How enrolment stores AS-norm statistics for ``model``'s scoring state (None without
    a cohort)."""
    state = model.scoring
    if state.cohort is None:
        return None
    return CohortStatistics(
        state.key,
        lambda vectors: cohort_statistics(
            vectors, state.cohort, top_n=state.top_n, mean=state.mean
        ),
    )


def identify_embeddings(
    db: SpeakerDB,
    model: Speaker,
    embeddings: np.ndarray,
    seconds: Sequence[float],
    sources: Sequence[str],
    *,
    top_k: int = 5,
    threshold: float | None = None,
    index: SpeakerIndex | None = None,
    shortlist: int = SHORTLIST,
) -> list[Identification]:
    """Rank the enrolled speakers for each (E,) row of ``embeddings`` (raw, of ``model``).

    The index (:class:`~lapsv.speakers.index.SpeakerIndex`; pass one to reuse it across
    calls) finds each query's best speakers by cosine: the ``top_k``, or the ``shortlist``
    best when the model has a cohort. Those are scored as ``lapsv verify`` scores (cosine
    with the training mean subtracted, AS-norm with the speakers' stored cohort statistics,
    the QMF LLR when calibrated) and ranked by the last of these that exists. The threshold
    is ``threshold``, else LLR 0 for a calibrated model, else none (then no "unknown"
    answer is possible and ``answer`` is None).
    """
    db.check_model(model.model_id)
    if top_k < 1:
        raise SpeakerDBError(f"top_k must be at least 1, got {top_k}")
    state = model.scoring
    embeddings = np.atleast_2d(np.asarray(embeddings, dtype=np.float32))
    if index is None:
        index = SpeakerIndex(db, mean=state.mean)
    if len(index) == 0:
        raise SpeakerDBError(f"{db.path}: no speaker enrolled yet")
    wanted = top_k if state.cohort is None else max(top_k, shortlist)
    found, _ = index.search(embeddings, wanted)
    speakers = db.models(np.unique(found[found >= 0]))
    row_of = {int(speaker): row for row, speaker in enumerate(speakers.ids)}
    pairs_t, pairs_e = zip(
        *((t, row_of[s]) for t, row in enumerate(found.tolist()) for s in row if s in row_of),
        strict=True,
    )
    pairs_e, pairs_t = np.array(pairs_e), np.array(pairs_t)
    scores = score_pairs(
        state,
        speakers.vectors,
        embeddings,
        pairs_e,
        pairs_t,
        enroll_seconds=speakers.seconds,
        test_seconds=np.asarray(seconds, dtype=np.float64),
        enroll_raw=speakers.raw,
        enroll_stats=None if state.cohort is None else _cohort_stats(speakers, model),
    )
    limit, source_of_limit = resolve_threshold(state, threshold)
    results = []
    for test in range(len(embeddings)):
        mine = np.flatnonzero(pairs_t == test)
        order = mine[np.argsort(-scores.decision[mine], kind="stable")][:top_k]
        candidates = tuple(_candidate(speakers.names[pairs_e[i]], scores, i) for i in order)
        answer = None
        if limit is not None:
            answer = candidates[0].name if candidates[0].score >= limit else "unknown"
        results.append(
            Identification(
                sources[test], candidates, scores.decision_name, limit, source_of_limit, answer
            )
        )
    return results


def verify_enrolled(
    db: SpeakerDB,
    model: Speaker,
    embedding: np.ndarray,
    seconds: float,
    name: str,
    *,
    threshold: float | None = None,
) -> Verification | None:
    """A raw (E,) embedding of a recording lasting ``seconds`` against enrolled speaker
    ``name``: the scores and decision :func:`identify_embeddings` gives that speaker, from
    its model alone (None when ``name`` is not enrolled)."""
    db.check_model(model.model_id)
    speaker_id = db.speaker_id(name)
    speakers = db.models([] if speaker_id is None else [speaker_id])
    if not speakers.names:
        return None
    state = model.scoring
    scores = score_pairs(
        state,
        speakers.vectors,
        np.asarray(embedding, dtype=np.float32)[None],
        np.array([0]),
        np.array([0]),
        enroll_seconds=speakers.seconds,
        test_seconds=np.array([seconds], dtype=np.float64),
        enroll_raw=speakers.raw,
        enroll_stats=None if state.cohort is None else _cohort_stats(speakers, model),
    )
    return verification_of(scores, 0, state, threshold)


def _cohort_stats(speakers: SpeakerModels, model: Speaker) -> tuple[np.ndarray, np.ndarray]:
    """The speakers' AS-norm statistics for the model's scoring state: the stored ones
    where enrolment computed them for this state, computed now for the others."""
    state = model.scoring
    mu, sd = speakers.stats.copy()
    missing = np.array([key != state.key for key in speakers.stats_key], dtype=bool)
    if missing.any():
        mu[missing], sd[missing] = cohort_statistics_of(model).compute(speakers.vectors[missing])
    return mu, sd


def _candidate(name: str, scores: Scores, i: int) -> Candidate:
    return Candidate(
        name,
        float(scores.decision[i]),
        float(scores.cosine[i]),
        None if scores.asnorm is None else float(scores.asnorm[i]),
        None if scores.llr is None else float(scores.llr[i]),
    )


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
        name,
        utterances,
        model_id=model.model_id,
        model_name=model_name,
        replace=replace,
        stats=cohort_statistics_of(model),
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


def import_embeddings(
    db: SpeakerDB,
    embeddings: EmbeddingSet,
    model_id: str,
    *,
    speakers: Mapping[str, Sequence[str]] | None = None,
    model: Speaker | None = None,
    model_name: str = "",
) -> tuple[int, int]:
    """Enrol many speakers from stored embeddings (``lapsv embed``'s .npz) in one
    transaction; returns (new speakers, updated speakers).

    ``speakers``: name -> its utterance ids (a Kaldi ``spk2utt`` map); without it each
    embedding is a speaker named by its id. ``model_id``: the model the embeddings are of;
    a database of another model refuses them. ``model``: that model, to check the id and
    store each speaker's AS-norm cohort statistics for its scoring state.
    """
    if not model_id:
        raise SpeakerDBError(
            "the embeddings file names no model (written by an old lapsv?): re-run lapsv embed"
        )
    if model is not None and model.model_id != model_id:
        raise SpeakerDBError(
            f"the embeddings are of model {model_id}, not of the given model {model.model_id}"
        )
    speakers = speakers or {utt: (utt,) for utt in embeddings.ids}
    known = embeddings.index()
    missing = [utt for utts in speakers.values() for utt in utts if utt not in known]
    if missing:
        raise SpeakerDBError(
            f"{len(missing)} utterance(s) of the speaker map have no embedding in the file, "
            f"e.g. {missing[:3]}"
        )
    groups = {
        name: [
            Utterance(
                hashlib.sha256(embeddings.ids[row].encode()).hexdigest(),
                embeddings.ids[row],
                float(embeddings.seconds[row]),
                embeddings.embeddings[row],
            )
            for row in embeddings.rows(utts)
        ]
        for name, utts in speakers.items()
    }
    return db.import_speakers(
        groups,
        model_id=model_id,
        model_name=model_name,
        stats=None if model is None else cohort_statistics_of(model),
    )
