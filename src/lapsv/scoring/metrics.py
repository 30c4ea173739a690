"""Verification metrics from one sort of the scores: DET curve, EER, minDCF, Cllr, actDCF.

Conventions (METHOD.md §6):

* ``labels`` are 1 for target trials (same speaker) and 0 for non-target trials.
* A trial is accepted when ``score >= threshold``. The DET curve lists one operating point
  per distinct score value plus the reject-all point, so tied scores always move together.
* The EER is where the straight segment between two consecutive operating points
  (p_miss, p_fa) crosses the line p_miss = p_fa; its threshold is interpolated on the
  same segment. Rates are fractions in [0, 1]; only :func:`compute_metrics` gives percent.
* DCF values are normalised by ``min(c_miss * p_target, c_fa * (1 - p_target))``, the cost
  of the better of "accept all" and "reject all", so minDCF never exceeds 1.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from lapsv.errors import ScoringError

__all__ = [
    "DCF",
    "EER",
    "actual_dcf",
    "cllr",
    "compute_metrics",
    "det_curve",
    "equal_error_rate",
    "min_dcf",
]


class EER(NamedTuple):
    """Equal error rate as a fraction in [0, 1] and the score threshold where it occurs."""

    rate: float
    threshold: float


class DCF(NamedTuple):
    """Normalised detection cost and the threshold that achieves it."""

    value: float
    threshold: float


def _validated(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n,) float64 scores and (n,) bool labels, or a :class:`ScoringError` saying why not."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ScoringError(
            f"scores and labels must be 1-D arrays of the same length, got shapes "
            f"{scores.shape} and {labels.shape}"
        )
    if not np.isfinite(scores).all():
        bad = int(np.count_nonzero(~np.isfinite(scores)))
        raise ScoringError(f"{bad} score(s) are NaN or infinite; score every trial first")
    if labels.dtype != np.bool_:
        if labels.size and not ((labels == 0) | (labels == 1)).all():
            raise ScoringError("labels must be 1 (target) or 0 (non-target)")
        labels = labels.astype(bool)
    n_target = int(np.count_nonzero(labels))
    if n_target == 0 or n_target == labels.size:
        raise ScoringError(
            f"need both target and non-target trials, got {n_target} target and "
            f"{labels.size - n_target} non-target"
        )
    return scores, labels


def _det(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The DET curve of validated inputs, from one sort (of each class, then a merge)."""
    # np.sort is several times faster than np.argsort; merging the two sorted classes with
    # searchsorted gives the sorted scores together with their labels.
    target = np.sort(scores[labels])
    nontarget = np.sort(scores[~labels])
    n_target, n_nontarget = target.size, nontarget.size
    n = n_target + n_nontarget
    target_at = np.searchsorted(nontarget, target) + np.arange(n_target)
    is_target = np.zeros(n, dtype=bool)
    is_target[target_at] = True
    sorted_scores = np.empty(n, dtype=np.float64)
    sorted_scores[target_at] = target
    sorted_scores[~is_target] = nontarget
    # targets strictly below sorted position i: targets_below[i], for i in 0..n
    targets_below = np.empty(n + 1, dtype=np.int64)
    targets_below[0] = 0
    np.cumsum(is_target, out=targets_below[1:])
    # point k rejects the trials below the k-th distinct score value; the last rejects all
    is_new = np.empty(n, dtype=bool)
    is_new[0] = True
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=is_new[1:])
    if is_new.all():  # no ties: every position starts a new value
        rejected = np.arange(n + 1)
        thresholds = np.append(sorted_scores, np.nextafter(sorted_scores[-1], np.inf))
    else:
        rejected = np.append(np.flatnonzero(is_new), n)
        thresholds = np.append(
            sorted_scores[rejected[:-1]], np.nextafter(sorted_scores[-1], np.inf)
        )
        targets_below = targets_below[rejected]
    p_miss = targets_below / n_target
    p_fa = (n_nontarget - (rejected - targets_below)) / n_nontarget
    return p_miss, p_fa, thresholds


def _eer(p_miss: np.ndarray, p_fa: np.ndarray, thresholds: np.ndarray) -> EER:
    # p_miss rises from 0 and p_fa falls to 0, so the first k with p_miss >= p_fa is >= 1
    k = int(np.argmax(p_miss >= p_fa))
    gap_before = p_fa[k - 1] - p_miss[k - 1]  # > 0
    gap_after = p_fa[k] - p_miss[k]  # <= 0
    alpha = gap_before / (gap_before - gap_after)
    rate = p_miss[k - 1] + alpha * (p_miss[k] - p_miss[k - 1])
    threshold = thresholds[k - 1] + alpha * (thresholds[k] - thresholds[k - 1])
    return EER(float(rate), float(threshold))


def _dcf_weights(p_target: float, c_miss: float, c_fa: float) -> tuple[float, float]:
    if not 0.0 < p_target < 1.0:
        raise ScoringError(f"p_target must be strictly between 0 and 1, got {p_target}")
    if c_miss <= 0 or c_fa <= 0:
        raise ScoringError(f"costs must be positive, got c_miss={c_miss}, c_fa={c_fa}")
    norm = min(c_miss * p_target, c_fa * (1.0 - p_target))
    return c_miss * p_target / norm, c_fa * (1.0 - p_target) / norm


def _min_dcf(
    p_miss: np.ndarray,
    p_fa: np.ndarray,
    thresholds: np.ndarray,
    *,
    p_target: float,
    c_miss: float,
    c_fa: float,
) -> DCF:
    w_miss, w_fa = _dcf_weights(p_target, c_miss, c_fa)
    costs = w_miss * p_miss + w_fa * p_fa
    k = int(np.argmin(costs))
    return DCF(float(costs[k]), float(thresholds[k]))


def det_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Miss and false-alarm rates at every distinct threshold, from one O(n log n) sort.

    Args:
        scores: (n,) trial scores, higher means more likely the same speaker.
        labels: (n,) 1 for target, 0 for non-target trials.

    Returns:
        ``(p_miss, p_fa, thresholds)``, each (m + 1,) for m distinct score values, ordered by
        increasing threshold. Point k accepts the trials with ``score >= thresholds[k]``;
        the first point accepts everything (p_miss 0, p_fa 1), the last, at the next float
        above the highest score, rejects everything (p_miss 1, p_fa 0).

    >>> p_miss, p_fa, thresholds = det_curve(np.array([0.1, 0.5, 0.5, 0.9]), np.array([0, 0, 1, 1]))
    >>> p_miss.tolist(), p_fa.tolist(), thresholds[:3].tolist()
    ([0.0, 0.0, 0.5, 1.0], [1.0, 0.5, 0.0, 0.0], [0.1, 0.5, 0.9])
    """
    return _det(*_validated(scores, labels))


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> EER:
    """Equal error rate (fraction in [0, 1]) and its threshold.

    The EER is where the segment between the two consecutive DET operating points that
    bracket p_miss = p_fa crosses that line (linear interpolation in probability, which is
    also how tied scores are treated); the threshold is interpolated on the same segment.

    >>> equal_error_rate(np.array([1, 2, 3, 4, 5, 6.0]), np.array([0, 1, 0, 1, 1, 1]))
    EER(rate=0.25, threshold=3.5)
    """
    return _eer(*_det(*_validated(scores, labels)))


def min_dcf(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    p_target: float,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> DCF:
    """Minimum normalised detection cost over all thresholds (never above 1).

    DCF = (c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa) divided by
    ``min(c_miss * p_target, c_fa * (1 - p_target))``.

    >>> min_dcf(np.array([1, 2, 3, 4, 5, 6.0]), np.array([0, 1, 0, 1, 1, 1]), p_target=0.25)
    DCF(value=0.25, threshold=4.0)
    """
    curve = _det(*_validated(scores, labels))
    return _min_dcf(*curve, p_target=p_target, c_miss=c_miss, c_fa=c_fa)


def cllr(llrs: np.ndarray, labels: np.ndarray) -> float:
    """Log-likelihood-ratio cost in bits: 0 is perfect, 1 is an uninformative LLR of 0.

    Cllr = (mean_target log2(1 + e^-llr) + mean_nontarget log2(1 + e^llr)) / 2.

    >>> cllr(np.zeros(4), np.array([0, 1, 0, 1]))
    1.0
    """
    llrs, labels = _validated(llrs, labels)
    target_cost = np.logaddexp(0.0, -llrs[labels]).mean()
    nontarget_cost = np.logaddexp(0.0, llrs[~labels]).mean()
    return float((target_cost + nontarget_cost) / (2.0 * math.log(2.0)))


def actual_dcf(
    llrs: np.ndarray,
    labels: np.ndarray,
    *,
    p_target: float,
    c_miss: float = 1.0,
    c_fa: float = 1.0,
) -> DCF:
    """Normalised DCF of calibrated LLRs at the Bayes threshold log(c_fa (1-p) / (c_miss p)).

    With unit costs the threshold is ``-logit(p_target)``; LLR 0 is the threshold at 0.5.

    >>> actual_dcf(np.array([-3.0, -1.0, 2.0, 6.0]), np.array([0, 1, 0, 1]), p_target=0.5)
    DCF(value=1.0, threshold=0.0)
    """
    llrs, labels = _validated(llrs, labels)
    w_miss, w_fa = _dcf_weights(p_target, c_miss, c_fa)
    threshold = math.log(c_fa * (1.0 - p_target) / (c_miss * p_target))
    accepted = llrs >= threshold
    p_miss = np.count_nonzero(~accepted & labels) / np.count_nonzero(labels)
    p_fa = np.count_nonzero(accepted & ~labels) / np.count_nonzero(~labels)
    return DCF(float(w_miss * p_miss + w_fa * p_fa), threshold)


def compute_metrics(
    scores: np.ndarray, labels: np.ndarray, *, calibrated: bool = False
) -> dict[str, float | int]:
    """The METHOD.md §6 metrics of one score set, from a single sort.

    Returns a dict with ``eer`` (percent), ``min_dcf_0.01``, ``min_dcf_0.05`` (C_miss =
    C_fa = 1), ``n_target`` and ``n_nontarget``; with ``calibrated=True`` the scores are
    taken as LLRs and ``cllr``, ``act_dcf_0.01`` and ``act_dcf_0.05`` are added.

    >>> metrics = compute_metrics(np.array([1, 2, 3, 4, 5, 6.0]), np.array([0, 1, 0, 1, 1, 1]))
    >>> metrics["eer"], metrics["n_target"], metrics["n_nontarget"]
    (25.0, 4, 2)
    """
    scores, labels = _validated(scores, labels)
    curve = _det(scores, labels)
    n_target = int(np.count_nonzero(labels))
    metrics: dict[str, float | int] = {
        "eer": 100.0 * _eer(*curve).rate,
        "min_dcf_0.01": _min_dcf(*curve, p_target=0.01, c_miss=1.0, c_fa=1.0).value,
        "min_dcf_0.05": _min_dcf(*curve, p_target=0.05, c_miss=1.0, c_fa=1.0).value,
        "n_target": n_target,
        "n_nontarget": int(labels.size - n_target),
    }
    if calibrated:
        metrics["cllr"] = cllr(scores, labels)
        metrics["act_dcf_0.01"] = actual_dcf(scores, labels, p_target=0.01).value
        metrics["act_dcf_0.05"] = actual_dcf(scores, labels, p_target=0.05).value
    return metrics
