"""Speaker clustering of window embeddings: spectral (eigen-gap count) and agglomerative.

Spectral clustering follows WeSpeaker's and NeMo's recipe: a cosine affinity matrix,
pruned row by row to each window's nearest neighbours (p-pruning: the top ``p`` share of
the row, at least ``min_neighbours``), binarised and symmetrised; the unnormalised graph
Laplacian's eigenvalues give the number of speakers (the largest gap between consecutive
eigenvalues, between ``min_speakers`` and ``max_speakers``), and k-means on its first
eigenvectors gives the labels. Agglomerative clustering is average linkage over any pair
score (cosine, or a calibrated LLR) cut at a threshold. Both take the cosines of windows
of several lengths averaged (:func:`multiscale_affinity`). scipy does the linear algebra
and the linkage, scikit-learn the k-means.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.linalg import eigh

from lapsv.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class SpeakerCount:
    """The number of speakers: ``exact``, or found between ``low`` and ``high``."""

    exact: int | None = None
    low: int = 1
    high: int = 10

    def __post_init__(self) -> None:
        if self.exact is not None and self.exact < 1:
            raise ConfigError(f"num_speakers must be at least 1, got {self.exact}")
        if self.low < 1:
            raise ConfigError(f"min_speakers must be at least 1, got {self.low}")
        if self.low > self.high:
            raise ConfigError(
                f"min_speakers ({self.low}) is larger than max_speakers ({self.high})"
            )


def cosine_affinity(embeddings: np.ndarray) -> np.ndarray:
    """(W, E) embeddings (already centred, if at all) -> (W, W) cosine similarities."""
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    return np.clip(unit @ unit.T, -1.0, 1.0)


def multiscale_affinity(
    embeddings: np.ndarray, longer: Sequence[tuple[np.ndarray, np.ndarray]]
) -> np.ndarray:
    """(W, W) mean, over scales, of the cosines of (W, E) window embeddings and of each
    longer scale's (W, 2) windows and (W, E) embeddings (the longer window nearest each
    window; NeMo's multi-scale affinity). Two longer windows that overlap share audio, which
    makes them alike whoever speaks: their pair takes the windows' own cosine instead.

    >>> x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> apart = (np.array([[0.0, 3.0], [5.0, 8.0], [10.0, 13.0]]), np.array([[1.0, 0.0]] * 3))
    >>> multiscale_affinity(x, [apart])[0].tolist()  # windows 0 and 1: (0 + 1) / 2
    [1.0, 0.5, 1.0]
    >>> sharing = (np.array([[0.0, 3.0], [1.0, 4.0], [10.0, 13.0]]), apart[1])
    >>> multiscale_affinity(x, [sharing])[0].tolist()  # 0 and 1 overlap: (0 + 0) / 2
    [1.0, 0.0, 1.0]
    """
    own = cosine_affinity(embeddings)
    total = own.copy()
    for windows, scaled in longer:
        affinity = cosine_affinity(scaled)
        starts, ends = windows[:, 0], windows[:, 1]
        np.copyto(affinity, own, where=(starts[:, None] < ends) & (starts < ends[:, None]))
        total += affinity
    total /= 1 + len(longer)
    return total


def pruned_affinity(affinity: np.ndarray, *, p: float, min_neighbours: int = 6) -> np.ndarray:
    """Keep each row's top ``p`` share (at least ``min_neighbours``) as 1, the rest 0;
    symmetrised: (A + A^T) / 2."""
    n = len(affinity)
    keep = min(n, max(min_neighbours, int(np.ceil(p * n))))
    top = np.argpartition(-affinity, keep - 1, axis=1)[:, :keep]
    pruned = np.zeros_like(affinity)
    np.put_along_axis(pruned, top, 1.0, axis=1)
    return (pruned + pruned.T) / 2


def _spectrum(
    affinity: np.ndarray, p: float, min_neighbours: int, high: int
) -> tuple[np.ndarray, np.ndarray]:
    """The smallest ``high + 1`` eigenvalues and their eigenvectors of the Laplacian of the
    p-pruned affinity."""
    pruned = pruned_affinity(affinity, p=p, min_neighbours=min_neighbours)
    laplacian = np.diag(pruned.sum(axis=1)) - pruned
    n = len(affinity)
    return eigh(laplacian, subset_by_index=[0, min(high, n - 1)])


def _eigen_gap_count(values: np.ndarray, low: int, high: int) -> tuple[int, float]:
    """The speaker count at the largest eigen-gap in [low, high], and that gap."""
    gaps = np.diff(values[low - 1 : high + 1])  # gap after the k-th eigenvalue, k = low..high
    best = int(np.argmax(gaps))
    return best + low, float(gaps[best])


def auto_pruning(
    affinity: np.ndarray, count: SpeakerCount, *, grid: int = 20, min_neighbours: int = 6
) -> float:
    """NME-SC's choice of p (Park et al., 2020, as in NeMo): the share of kept neighbours
    that minimises p / (the normalised largest eigen-gap), from ``grid`` values in (0, 0.5]."""
    n = len(affinity)
    high = min(count.high, n - 1)
    low = min(count.low, high)
    best_p, best_ratio = 0.5, np.inf
    for p in np.linspace(0.5 / grid, 0.5, grid):
        values, _ = _spectrum(affinity, p, min_neighbours, high)
        _, gap = _eigen_gap_count(values, low, high)
        ratio = p / (gap / max(float(values[-1]), 1e-10) + 1e-10)
        if ratio < best_ratio:
            best_p, best_ratio = float(p), ratio
    return best_p


def spectral_clusters(
    affinity: np.ndarray,
    count: SpeakerCount = SpeakerCount(),
    *,
    p: float | None = None,
    min_neighbours: int = 6,
    seed: int = 0,
) -> np.ndarray:
    """(W, W) window affinity (cosines) -> (W,) speaker labels 0..k-1 by spectral
    clustering.

    ``p``: the share of each row's neighbours kept; None chooses it per recording
    (:func:`auto_pruning`).

    >>> rng = np.random.default_rng(0)
    >>> centres = rng.normal(size=(3, 16))
    >>> x = np.repeat(centres, 20, axis=0) + 0.3 * rng.normal(size=(60, 16))
    >>> labels = spectral_clusters(cosine_affinity(x))
    >>> len(set(labels)), len(set(zip(labels, np.repeat([0, 1, 2], 20))))
    (3, 3)
    """
    n = len(affinity)
    if count.exact is not None and count.exact > n:
        raise ConfigError(f"num_speakers is {count.exact} but there are only {n} windows")
    if n <= 2 or count.exact == 1 or count.high == 1:
        return _few_windows(affinity, count)
    high = min(max(count.high, count.exact or 1), n - 1)
    if p is None:
        p = auto_pruning(affinity, count, min_neighbours=min_neighbours)
    values, vectors = _spectrum(affinity, p, min_neighbours, high)
    if count.exact is not None:
        k = count.exact
    else:
        k, _ = _eigen_gap_count(values, min(count.low, high), high)
    if k == 1:
        return np.zeros(n, np.int64)
    from sklearn.cluster import KMeans  # imported here: scikit-learn is slow to import

    kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(vectors[:, :k])
    return _first_seen_order(kmeans.labels_)


def agglomerative_clusters(
    pair_scores: np.ndarray,
    *,
    threshold: float,
    count: SpeakerCount = SpeakerCount(),
) -> np.ndarray:
    """(W, W) symmetric pair scores (higher: more alike) -> (W,) labels by average linkage.

    Clusters merge while their average pair score is at least ``threshold``; an exact
    ``count`` cuts the tree at that many clusters instead, and ``low`` / ``high`` bound
    the number found.

    >>> s = np.array([[1, .9, .1], [.9, 1, .2], [.1, .2, 1]])
    >>> agglomerative_clusters(s, threshold=0.5).tolist()
    [0, 0, 1]
    """
    n = len(pair_scores)
    if count.exact is not None and count.exact > n:
        raise ConfigError(f"num_speakers is {count.exact} but there are only {n} windows")
    if n == 1:
        return np.zeros(1, np.int64)
    top = float(np.max(pair_scores))
    distance = top - np.asarray(pair_scores, np.float64)  # >= 0; average linkage is shift-free
    condensed = distance[np.triu_indices(n, k=1)]
    tree = linkage(condensed, method="average")
    if count.exact is not None:
        labels = fcluster(tree, t=count.exact, criterion="maxclust")
    else:
        labels = fcluster(tree, t=top - threshold, criterion="distance")
        found = len(set(labels))
        if not count.low <= found <= count.high:
            bounded = min(max(found, count.low), count.high, n)
            labels = fcluster(tree, t=bounded, criterion="maxclust")
    return _first_seen_order(labels)


def viterbi_resegmentation(
    embeddings: np.ndarray, windows: np.ndarray, labels: np.ndarray, *, switch_penalty: float
) -> np.ndarray:
    """Re-assign (W,) cluster labels of (W, E) embeddings of (W, 2) sorted windows by
    Viterbi decoding: the best path scores each window by its cosine to its cluster's mean
    embedding and pays ``switch_penalty`` for each change of cluster between touching
    windows (windows of one speech region; a pause between regions costs nothing).
    ``switch_penalty`` 0 takes each window's nearest mean. O(W k^2) for k clusters.

    >>> e = np.array([[1.0, 0.0], [1.0, 0.0], [0.6, 0.8], [1.0, 0.0], [0.0, 1.0]])
    >>> w = np.array([[0.0, 1.5], [0.75, 2.25], [1.5, 3.0], [2.25, 3.75], [9.0, 10.5]])
    >>> labels = np.array([0, 0, 1, 0, 1])
    >>> viterbi_resegmentation(e, w, labels, switch_penalty=0.0).tolist()
    [0, 0, 1, 0, 1]
    >>> viterbi_resegmentation(e, w, labels, switch_penalty=0.5).tolist()
    [0, 0, 0, 0, 1]
    """
    k = int(labels.max()) + 1
    if k == 1:
        return labels
    unit = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    centroids = np.stack([unit[labels == c].mean(axis=0) for c in range(k)])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    scores = unit @ centroids.T  # (W, k)
    touching = np.r_[False, np.diff(_region_of_windows(windows)) == 0]
    switch = 1.0 - np.eye(k)  # (from, to)
    best = scores[0].copy()
    came_from = np.zeros(scores.shape, np.int64)
    for t in range(1, len(scores)):
        moves = best[:, None] - (switch_penalty if touching[t] else 0.0) * switch
        came_from[t] = np.argmax(moves, axis=0)
        best = moves[came_from[t], np.arange(k)] + scores[t]
    path = np.empty(len(scores), np.int64)
    path[-1] = int(np.argmax(best))
    for t in range(len(scores) - 1, 0, -1):
        path[t - 1] = came_from[t, path[t]]
    return _first_seen_order(path)


def smooth_windows(embeddings: np.ndarray, windows: np.ndarray, width: int = 1) -> np.ndarray:
    """(W, E) embeddings of (W, 2) sorted windows -> (W, E): each the mean of itself and up
    to ``width`` windows on each side that belong to the same run of touching windows (one
    speech region), length-normalised. ``width`` 0 returns the embeddings unchanged.

    >>> e = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> smooth_windows(e, np.array([[0.0, 1.5], [0.75, 2.25], [5.0, 6.5]])).round(3).tolist()
    [[0.707, 0.707], [0.707, 0.707], [1.0, 0.0]]
    """
    if width == 0 or len(embeddings) < 2:
        return embeddings
    run = _region_of_windows(windows)
    total = np.zeros_like(embeddings, dtype=np.float64)
    for shift in range(-width, width + 1):  # O(W * width)
        source = np.clip(np.arange(len(run)) + shift, 0, len(run) - 1)
        same = (run[source] == run) & (np.abs(source - np.arange(len(run))) == abs(shift))
        total += np.where(same[:, None], embeddings[source], 0.0)
    return total / np.maximum(np.linalg.norm(total, axis=1, keepdims=True), 1e-12)


def _region_of_windows(windows: np.ndarray) -> np.ndarray:
    """(W, 2) sorted windows -> (W,) index of the run of touching windows (one speech
    region) each belongs to."""
    return np.r_[0, np.cumsum(windows[1:, 0] > windows[:-1, 1] + 1e-6)]


def _few_windows(affinity: np.ndarray, count: SpeakerCount) -> np.ndarray:
    """One or two windows, or one speaker asked for: too few for a graph."""
    n = len(affinity)
    wanted = count.exact or (1 if count.high == 1 else None)
    if wanted == 1 or n == 1:
        return np.zeros(n, np.int64)
    if wanted == n:
        return np.arange(n)
    return agglomerative_clusters(affinity, threshold=0.5, count=count)


def _first_seen_order(labels: np.ndarray) -> np.ndarray:
    """Relabel so that cluster 0 is the first window's, 1 the next new one's, ..."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))
    return order[np.unique(labels, return_inverse=True)[1]].astype(np.int64)
