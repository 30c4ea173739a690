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
    check_speaker_name,
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
    speakers = db.models(np.unique(found[found >= 0]))  # sorted ids (deleted ones left out)
    pairs_t, pairs_e = _candidate_pairs(found, speakers.ids)
    if not len(pairs_t):  # every speaker found was deleted since the search began
        raise SpeakerDBError(f"{db.path}: no speaker enrolled yet")
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
    bounds = np.searchsorted(pairs_t, np.arange(len(embeddings) + 1))  # pairs_t is sorted
    for test in range(len(embeddings)):
        mine = np.arange(bounds[test], bounds[test + 1])
        order = mine[np.argsort(-scores.decision[mine], kind="stable")][:top_k]
        candidates = tuple(_candidate(speakers.names[pairs_e[i]], scores, i) for i in order)
        answer = None
        if limit is not None:
            passed = candidates and candidates[0].score >= limit
            answer = candidates[0].name if passed else "unknown"
        results.append(
            Identification(
                sources[test], candidates, scores.decision_name, limit, source_of_limit, answer
            )
        )
    return results


def _candidate_pairs(found: np.ndarray, speaker_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query, speaker row) of each search hit whose speaker is in ``speaker_ids`` (sorted):
    (c,) query rows, ascending, and (c,) rows of ``speaker_ids``, from (n, k) ``found``."""
    if not len(speaker_ids):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    at = np.minimum(np.searchsorted(speaker_ids, found), len(speaker_ids) - 1)
    pairs_t, column = np.nonzero((found >= 0) & (speaker_ids[at] == found))  # row-major
    return pairs_t.astype(np.int64), at[pairs_t, column].astype(np.int64)


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
    ``(path, reason)``; the name (:func:`~lapsv.speakers.check_speaker_name`) and the model
    (against the database's) are checked before any embedding.
    """
    name = check_speaker_name(name)
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
    _check_embeddings_model(model_id, model)
    speakers = speakers or {utt: (utt,) for utt in embeddings.ids}
    row_of = embeddings.index()  # built once: a lookup per speaker would be O(N) each
    missing = [utt for utts in speakers.values() for utt in utts if utt not in row_of]
    if missing:
        raise SpeakerDBError(
            f"{len(missing)} utterance(s) of the speaker map have no embedding in the file, "
            f"e.g. {missing[:3]}"
        )
    vectors, seconds = embeddings.embeddings, embeddings.seconds
    groups = {
        name: [
            Utterance(
                hashlib.sha256(utt.encode()).hexdigest(),
                utt,
                float(seconds[row_of[utt]]),
                vectors[row_of[utt]],
            )
            for utt in utts
        ]
        for name, utts in speakers.items()
    }
    return db.import_speakers(
        groups,
        model_id=model_id,
        model_name=model_name,
        stats=None if model is None else cohort_statistics_of(model),
    )


def identify_stored(
    db: SpeakerDB,
    model: Speaker,
    embeddings: EmbeddingSet,
    model_id: str,
    *,
    top_k: int = 5,
    threshold: float | None = None,
    model_name: str = "",
) -> list[Identification]:
    """Identify every row of stored embeddings (``lapsv embed``'s .npz, of ``model_id``)
    with ``model``'s scoring state, in one :func:`identify_embeddings` call."""
    _check_embeddings_model(model_id, model)
    db.check_model(model.model_id, model_name=model_name)
    if not len(embeddings):
        raise SpeakerDBError("the embeddings file holds no embedding")
    return identify_embeddings(
        db,
        model,
        embeddings.embeddings,
        embeddings.seconds,
        embeddings.ids,
        top_k=top_k,
        threshold=threshold,
    )


def _check_embeddings_model(model_id: str, model: Speaker | None) -> None:
    """Refuse stored embeddings that name no model, or another model than ``model``."""
    if not model_id:
        raise SpeakerDBError(
            "the embeddings file names no model (written by an old lapsv?): re-run lapsv embed"
        )
    if model is not None and model.model_id != model_id:
        raise SpeakerDBError(
            f"the embeddings are of model {model_id}, not of the given model {model.model_id}"
        )
