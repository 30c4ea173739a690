"""Cosine scoring, multi-utterance enrolment and adaptive s-norm (AS-norm), METHOD.md §6.

Every vector that is scored goes through :func:`center_and_normalize`: length
normalisation, subtraction of ``mean`` (the mean of the length-normalised training
embeddings, :func:`embedding_mean`), and length normalisation again. Length normalisation
is idempotent, so raw embeddings, enrolled models (:func:`enroll_models`, unit vectors in
the same uncentred space) and their mixtures are all handled alike; pass the same ``mean``
to every function of one evaluation. A cohort from :func:`speaker_cohort` is already
centred and normalised and is used as it is.

Scores are computed in chunks, without a Python loop per trial, in float32 by default
(``dtype=np.float64`` for reference-exact results at twice the time and memory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import DTypeLike

from lapsv.embeddings import EmbeddingSet
from lapsv.errors import ScoringError

__all__ = [
    "as_norm",
    "average_models",
    "center_and_normalize",
    "cohort_statistics",
    "cosine_scores",
    "embedding_mean",
    "enroll_models",
    "group_means",
    "length_normalize",
    "speaker_cohort",
    "subtract_mean",
]

_CHUNK_ELEMENTS = 1 << 23  # elements per temporary block (32 MiB in float32)


def _matrix(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ScoringError(f"{name} must be a non-empty (n, E) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ScoringError(f"{name} contains NaN or infinite values")
    return x


def length_normalize(x: np.ndarray) -> np.ndarray:
    """Scale each row (last axis) to unit L2 norm; float32 unless ``x`` is float64.

    An all-zero row stays zero.

    >>> length_normalize(np.array([[3.0, 4.0]])).tolist()
    [[0.6, 0.8]]
    """
    x = np.asarray(x)
    if x.dtype != np.float64:
        x = x.astype(np.float32, copy=False)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, np.finfo(x.dtype).tiny)


def subtract_mean(embeddings: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """``embeddings - mean`` for (n, E) embeddings and an (E,) mean; ``None`` is a no-op.

    >>> subtract_mean(np.ones((2, 3)), np.full(3, 0.5)).tolist()
    [[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]
    """
    if mean is None:
        return embeddings
    mean = np.asarray(mean)
    if mean.shape != (np.shape(embeddings)[-1],):
        raise ScoringError(
            f"mean of shape {mean.shape} does not fit embeddings of shape {np.shape(embeddings)}"
        )
    return embeddings - mean.astype(np.asarray(embeddings).dtype, copy=False)


def embedding_mean(embeddings: np.ndarray) -> np.ndarray:
    """(E,) mean of the length-normalised (n, E) training embeddings: the ``mean`` to pass on.

    >>> embedding_mean(np.array([[2.0, 0.0], [0.0, 5.0]])).tolist()
    [0.5, 0.5]
    """
    return length_normalize(_matrix(embeddings, "embeddings")).mean(axis=0)


def center_and_normalize(x: np.ndarray, *, mean: np.ndarray | None = None) -> np.ndarray:
    """Length-normalise, subtract ``mean``, length-normalise again: (n, E) -> (n, E).

    >>> center_and_normalize(np.array([[2.0, 0.0]]), mean=np.array([0.0, -1.0])).round(4)
    array([[0.7071, 0.7071]])
    """
    x = length_normalize(x)
    if mean is None:
        return x
    return length_normalize(subtract_mean(x, mean))


def group_means(vectors: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Row means of (n, E) ``vectors`` per (n,) group id in ``[0, n_groups)`` (every group
    non-empty): (n_groups, E), in the dtype of ``vectors``; one sort, no per-row loop.

    >>> group_means(np.array([[1.0], [3.0], [5.0]]), np.array([1, 0, 1]), 2).tolist()
    [[3.0], [3.0]]
    """
    counts = np.bincount(groups, minlength=n_groups)
    if len(groups) == n_groups and (counts == 1).all():  # a row per group: the rows
        means = np.empty_like(vectors)  # (reduceat pays per group: 5x slower here)
        means[groups] = vectors
        return means
    order = np.argsort(groups, kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    sums = np.add.reduceat(vectors[order], starts, axis=0)
    return sums / counts[:, None].astype(sums.dtype)


def average_models(unit_vectors: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """Speaker models: the mean of each group's unit-length rows, re-normalised.

    (n, E) length-normalised vectors and (n,) group ids in ``[0, n_groups)`` (every group
    non-empty) -> (n_groups, E) float32 unit vectors. Enrolment (:func:`enroll_models`),
    AS-norm cohorts (:func:`speaker_cohort`) and the speaker database all average this way.

    >>> average_models(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 0]), 1).round(4)
    array([[0.7071, 0.7071]], dtype=float32)
    """
    unit_vectors = np.asarray(unit_vectors).astype(np.float32, copy=False)
    return length_normalize(group_means(unit_vectors, np.asarray(groups).ravel(), n_groups))


def enroll_models(
    ids: Sequence[str],
    embeddings: np.ndarray,
    enrollment_map: Mapping[str, Sequence[str]],
) -> tuple[tuple[str, ...], np.ndarray]:
    """Average each model's length-normalised utterance embeddings, then re-normalise.

    Args:
        ids: (n,) utterance ids of the rows of ``embeddings``.
        embeddings: (n, E) raw utterance embeddings.
        enrollment_map: model id -> its utterance ids (:func:`read_enrollment_map`).

    Returns:
        ``(model_ids, vectors)``: the map's model ids in order and (M, E) float32 unit vectors.

    >>> embeddings = np.array([[2.0, 0.0], [0.0, 3.0]])
    >>> models, vectors = enroll_models(["a", "b"], embeddings, {"m": ["a", "b"]})
    >>> models, vectors.round(4)
    (('m',), array([[0.7071, 0.7071]], dtype=float32))
    """
    table = EmbeddingSet(list(ids), _matrix(embeddings, "embeddings"), np.zeros(len(ids)))
    model_ids = tuple(enrollment_map)
    if not model_ids:
        raise ScoringError("the enrolment map lists no models")
    utterances = [u for m in model_ids for u in enrollment_map[m]]
    counts = np.array([len(enrollment_map[m]) for m in model_ids])
    if (counts == 0).any():
        empty = [m for m, c in zip(model_ids, counts, strict=True) if c == 0]
        raise ScoringError(f"model(s) with no enrolment utterance: {empty[:5]}")
    rows = table.rows(utterances)
    groups = np.repeat(np.arange(len(model_ids)), counts)
    unit = length_normalize(table.embeddings[rows])
    return model_ids, average_models(unit, groups, len(model_ids))


def _compute_dtype(dtype: DTypeLike) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ScoringError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


def _pairs(pairs: np.ndarray, n: int, name: str) -> np.ndarray:
    pairs = np.asarray(pairs)
    if pairs.ndim != 1 or not np.issubdtype(pairs.dtype, np.integer):
        raise ScoringError(f"{name} must be a 1-D integer array of row indices")
    if pairs.size and (pairs.min() < 0 or pairs.max() >= n):
        raise ScoringError(f"{name} has indices outside [0, {n})")
    return pairs


def cosine_scores(
    enroll_vectors: np.ndarray,
    test_vectors: np.ndarray,
    pairs_e: np.ndarray,
    pairs_t: np.ndarray,
    *,
    mean: np.ndarray | None = None,
    dtype: DTypeLike = np.float32,
) -> np.ndarray:
    """Cosine score of each trial after centring (:func:`center_and_normalize`).

    Args:
        enroll_vectors: (N_e, E) enrolment embeddings or model vectors.
        test_vectors: (N_t, E) test embeddings.
        pairs_e, pairs_t: (n,) rows of the enrolment and test side of each trial.
        mean: (E,) mean of the length-normalised training embeddings, or ``None``.
        dtype: float32 (default) or float64 arithmetic.

    Returns:
        (n,) float64 scores in [-1, 1], computed in blocks.

    >>> pairs_e, pairs_t = np.array([0, 1]), np.array([0, 0])
    >>> cosine_scores(np.eye(2), np.array([[1.0, 1.0]]), pairs_e, pairs_t).round(4)
    array([0.7071, 0.7071])
    """
    enroll = center_and_normalize(_matrix(enroll_vectors, "enroll_vectors"), mean=mean)
    dtype = _compute_dtype(dtype)
    enroll = enroll.astype(dtype, copy=False)
    if test_vectors is enroll_vectors:  # one utterance table for both sides: prepare it once
        test = enroll
    else:
        test = center_and_normalize(_matrix(test_vectors, "test_vectors"), mean=mean)
        test = test.astype(dtype, copy=False)
    if enroll.shape[1] != test.shape[1]:
        raise ScoringError(f"enrolment dim {enroll.shape[1]} != test dim {test.shape[1]}")
    pairs_e = _pairs(pairs_e, len(enroll), "pairs_e")
    pairs_t = _pairs(pairs_t, len(test), "pairs_t")
    if pairs_e.shape != pairs_t.shape:
        raise ScoringError(f"pairs_e {pairs_e.shape} and pairs_t {pairs_t.shape} differ")
    scores = np.empty(pairs_e.size, dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // enroll.shape[1])
    for start in range(0, pairs_e.size, chunk):
        e = enroll[pairs_e[start : start + chunk]]
        t = test[pairs_t[start : start + chunk]]
        scores[start : start + chunk] = np.einsum("ij,ij->i", e, t)
    return scores


def speaker_cohort(
    embeddings: np.ndarray, speakers: Sequence[str], *, mean: np.ndarray | None = None
) -> np.ndarray:
    """Per-speaker cohort vectors: (n, E) embeddings -> (n_speakers, E) float32 unit vectors.

    Each utterance is centred and normalised (:func:`center_and_normalize`), the vectors of
    a speaker are averaged and the mean re-normalised. Rows follow the sorted speaker labels.

    >>> speaker_cohort(np.array([[1.0, 0], [3.0, 1], [0, 2.0]]), ["b", "b", "a"]).round(3)
    array([[0.   , 1.   ],
           [0.987, 0.16 ]], dtype=float32)
    """
    embeddings = _matrix(embeddings, "embeddings")
    if len(speakers) != embeddings.shape[0]:
        raise ScoringError(f"{len(speakers)} speaker labels for {embeddings.shape[0]} embeddings")
    labels, groups = np.unique(np.asarray(speakers, dtype=object).astype(str), return_inverse=True)
    return average_models(center_and_normalize(embeddings, mean=mean), groups, len(labels))


def _top_stats(
    vectors: np.ndarray, cohort: np.ndarray, top_n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof 0) of the ``top_n`` highest cohort scores of each row of ``vectors``."""
    n_cohort = cohort.shape[0]
    mu = np.empty(len(vectors), dtype=np.float64)
    sd = np.empty(len(vectors), dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // n_cohort)
    for start in range(0, len(vectors), chunk):
        scores = vectors[start : start + chunk] @ cohort.T  # (chunk, n_cohort)
        if top_n < n_cohort:
            scores = np.partition(scores, n_cohort - top_n, axis=1)[:, n_cohort - top_n :]
        mu[start : start + chunk] = scores.mean(axis=1, dtype=np.float64)
        sd[start : start + chunk] = scores.std(axis=1, dtype=np.float64)
    return mu, np.maximum(sd, np.finfo(vectors.dtype).eps)


def _checked_top_n(top_n: int, cohort: np.ndarray) -> int:
    if top_n < 2 or cohort.shape[0] < 2:
        raise ScoringError(
            f"AS-norm needs top_n >= 2 and a cohort of >= 2 vectors, got top_n={top_n} "
            f"and {cohort.shape[0]} cohort vector(s)"
        )
    return min(top_n, cohort.shape[0])


def _check_as_norm_shapes(
    raw_scores: np.ndarray,
    pairs_e: np.ndarray,
    pairs_t: np.ndarray,
    sides: tuple[np.ndarray, np.ndarray],
    cohort: np.ndarray,
) -> None:
    if not raw_scores.shape == pairs_e.shape == pairs_t.shape:
        raise ScoringError(
            f"raw_scores {raw_scores.shape}, pairs_e {pairs_e.shape} and pairs_t "
            f"{pairs_t.shape} must have the same length"
        )
    for vectors in sides:
        if vectors.shape[1] != cohort.shape[1]:
            raise ScoringError(f"vector dim {vectors.shape[1]} != cohort dim {cohort.shape[1]}")


def cohort_statistics(
    vectors: np.ndarray,
    cohort: np.ndarray,
    *,
    top_n: int,
    mean: np.ndarray | None = None,
    dtype: DTypeLike = np.float32,
) -> tuple[np.ndarray, np.ndarray]:
    """AS-norm statistics of (n, E) vectors: the (n,) mean and (n,) standard deviation of
    each one's ``top_n`` highest cosine scores against the (C, E) ``cohort`` (after
    :func:`center_and_normalize` with ``mean``), as :func:`as_norm` computes them; the
    speaker database stores them per enrolled speaker.

    >>> mu, sd = cohort_statistics(np.eye(2), np.eye(2, dtype=np.float32), top_n=2)
    >>> mu.tolist(), sd.tolist()
    ([0.5, 0.5], [0.5, 0.5])
    """
    dtype = _compute_dtype(dtype)
    cohort = _matrix(cohort, "cohort").astype(dtype, copy=False)
    prepared = center_and_normalize(_matrix(vectors, "vectors"), mean=mean)
    return _top_stats(prepared.astype(dtype, copy=False), cohort, _checked_top_n(top_n, cohort))


def as_norm(
    raw_scores: np.ndarray,
    enroll_vectors: np.ndarray,
    test_vectors: np.ndarray,
    pairs_e: np.ndarray,
    pairs_t: np.ndarray,
    cohort: np.ndarray,
    *,
    top_n: int,
    mean: np.ndarray | None = None,
    dtype: DTypeLike = np.float32,
    enroll_stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Adaptive s-norm: ``0.5 * ((s - mu_e) / sd_e + (s - mu_t) / sd_t)`` per trial.

    For every enrolment and test vector used by a trial (each once), cosine scores against
    all cohort vectors come from one matrix product per side (in blocks); ``mu`` and ``sd``
    are the mean and standard deviation (ddof 0) of its ``top_n`` highest cohort scores,
    found with ``np.partition``. ``top_n`` above the cohort size is clipped to it. When
    ``enroll_vectors is test_vectors`` (one utterance table for both sides) the statistics
    of an utterance used on both sides are computed once.

    Args:
        raw_scores: (n,) cosine scores from :func:`cosine_scores` with the same ``mean``.
        enroll_vectors, test_vectors, pairs_e, pairs_t, mean: as for :func:`cosine_scores`.
        cohort: (C, E) cohort vectors from :func:`speaker_cohort` (already centred).
        top_n: number of closest cohort vectors per side (METHOD.md: 600).
        enroll_stats: (M,) mean and (M,) standard deviation of every enrolment vector,
            computed earlier by :func:`cohort_statistics` (the speaker database stores
            them), instead of computing them here.
        dtype: float32 (default) or float64 arithmetic. In float32 the cohort scores carry
            ~1e-7 absolute error, which a small top-n standard deviation magnifies: with
            top_n = 600 results agree with float64 to ~1e-5, with top_n = 2 only to ~1e-4
            relative.

    Returns:
        (n,) float64 normalised scores.

    >>> rng = np.random.default_rng(0)
    >>> vectors, cohort = rng.normal(size=(3, 8)), rng.normal(size=(5, 8))
    >>> pairs_e, pairs_t = np.array([0, 1]), np.array([2, 2])
    >>> raw = cosine_scores(vectors, vectors, pairs_e, pairs_t)
    >>> as_norm(raw, vectors, vectors, pairs_e, pairs_t, length_normalize(cohort), top_n=3).shape
    (2,)
    """
    raw_scores = np.asarray(raw_scores, dtype=np.float64)
    dtype = _compute_dtype(dtype)
    cohort = _matrix(cohort, "cohort").astype(dtype, copy=False)
    top_n = _checked_top_n(top_n, cohort)
    same_table = enroll_vectors is test_vectors
    enroll_vectors = _matrix(enroll_vectors, "enroll_vectors")
    test_vectors = enroll_vectors if same_table else _matrix(test_vectors, "test_vectors")
    pairs_e = _pairs(pairs_e, len(enroll_vectors), "pairs_e")
    pairs_t = _pairs(pairs_t, len(test_vectors), "pairs_t")
    _check_as_norm_shapes(raw_scores, pairs_e, pairs_t, (enroll_vectors, test_vectors), cohort)

    def stats(vectors: np.ndarray, used: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mu, sd) of the used rows, and each trial's position among them."""
        rows, position = np.unique(used, return_inverse=True)
        prepared = center_and_normalize(vectors[rows], mean=mean).astype(dtype, copy=False)
        mu, sd = _top_stats(prepared, cohort, top_n)
        return mu, sd, position.ravel()

    if enroll_stats is not None and not same_table:
        mu_e, sd_e = (np.asarray(values, dtype=np.float64) for values in enroll_stats)
        pos_e = pairs_e
        mu_t, sd_t, pos_t = stats(test_vectors, pairs_t)
    elif same_table:
        mu, sd, position = stats(enroll_vectors, np.concatenate([pairs_e, pairs_t]))
        mu_e, sd_e, pos_e = mu, sd, position[: pairs_e.size]
        mu_t, sd_t, pos_t = mu, sd, position[pairs_e.size :]
    else:
        mu_e, sd_e, pos_e = stats(enroll_vectors, pairs_e)
        mu_t, sd_t, pos_t = stats(test_vectors, pairs_t)
    return 0.5 * (
        (raw_scores - mu_e[pos_e]) / sd_e[pos_e] + (raw_scores - mu_t[pos_t]) / sd_t[pos_t]
    )
