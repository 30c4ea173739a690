"""Quality-measure-function (QMF) calibration, METHOD.md §6.

A logistic regression maps 9 quality features of a trial to a log-likelihood ratio. The
columns of :func:`quality_features` (and :data:`FEATURE_NAMES`) are, in order:

0. ``as_norm_score``: the AS-norm score;
1. ``log_seconds_enroll``, 2. ``log_seconds_test``: natural log of each side's duration;
3. ``l1_enroll``, 4. ``l1_test``: L1 norm of each side's raw (un-normalised) embedding;
5. ``l2_enroll``, 6. ``l2_test``: L2 norm of each raw embedding;
7. ``std_enroll``, 8. ``std_test``: standard deviation of the entries of each raw embedding.

The regression is trained with balanced class weights, so its output is the log posterior
odds at prior 0.5, i.e. an LLR: accept when ``llr >= -logit(p_target)``
(:meth:`QMFCalibrator.threshold_for`); LLR 0 is the Bayes threshold at p_target 0.5.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

from lapsv.errors import ScoringError
from lapsv.files import atomic_write_text

__all__ = ["FEATURE_NAMES", "QMFCalibrator", "quality_features", "sample_calibration_pairs"]

FEATURE_NAMES = (
    "as_norm_score",
    "log_seconds_enroll",
    "log_seconds_test",
    "l1_enroll",
    "l1_test",
    "l2_enroll",
    "l2_test",
    "std_enroll",
    "std_test",
)
FORMAT = "lapsv-qmf"
FORMAT_VERSION = 1


def _side(
    raw: np.ndarray, seconds: np.ndarray, pairs: np.ndarray | None, n: int, name: str
) -> np.ndarray:
    """(n, 4) log seconds, L1, L2 and std of one side of every trial."""
    raw = np.asarray(raw, dtype=np.float64)
    seconds = np.asarray(seconds, dtype=np.float64)
    if raw.ndim != 2 or seconds.shape != (raw.shape[0],):
        raise ScoringError(
            f"{name}: embeddings must be (m, E) with (m,) durations, got {raw.shape} and "
            f"{seconds.shape}"
        )
    if not (np.isfinite(seconds) & (seconds > 0)).all():
        raise ScoringError(f"{name}: every duration must be a positive number of seconds")
    stats = np.stack(
        [np.log(seconds), np.abs(raw).sum(axis=1), np.linalg.norm(raw, axis=1), raw.std(axis=1)],
        axis=1,
    )
    if pairs is None:
        if raw.shape[0] != n:
            raise ScoringError(f"{name}: {raw.shape[0]} rows for {n} trials; pass pairs_*")
        return stats
    pairs = np.asarray(pairs)
    if pairs.shape != (n,):
        raise ScoringError(f"{name}: pairs of shape {pairs.shape} for {n} trials")
    return stats[pairs]


def quality_features(
    as_norm_scores: np.ndarray,
    enroll_raw: np.ndarray,
    test_raw: np.ndarray,
    enroll_seconds: np.ndarray,
    test_seconds: np.ndarray,
    *,
    pairs_e: np.ndarray | None = None,
    pairs_t: np.ndarray | None = None,
) -> np.ndarray:
    """(n, 9) float64 QMF features, columns as in :data:`FEATURE_NAMES` (module docstring).

    Args:
        as_norm_scores: (n,) AS-norm scores.
        enroll_raw, test_raw: raw embeddings of each side, (n, E) per trial; or, with
            ``pairs_e`` / ``pairs_t``, (m, E) unique rows that the (n,) pairs index (a
            multi-utterance model uses the mean of its raw embeddings).
        enroll_seconds, test_seconds: durations in seconds, one per row of the embeddings.

    >>> raw = np.array([[3.0, -4.0], [1.0, 1.0]])
    >>> features = quality_features(np.array([2.5]), raw[:1], raw[1:], np.ones(1), np.full(1, 4.0))
    >>> features.round(3).tolist()
    [[2.5, 0.0, 1.386, 7.0, 2.0, 5.0, 1.414, 3.5, 0.0]]
    """
    scores = np.asarray(as_norm_scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ScoringError(f"as_norm_scores must be 1-D, got shape {scores.shape}")
    n = scores.size
    enroll = _side(enroll_raw, enroll_seconds, pairs_e, n, "enroll")
    test = _side(test_raw, test_seconds, pairs_t, n, "test")
    interleaved = np.stack([enroll, test], axis=2).reshape(n, 8)  # e0 t0 e1 t1 ...
    return np.concatenate([scores[:, None], interleaved], axis=1)


def sample_calibration_pairs(
    speakers: Sequence[str], *, n_pairs: int = 30000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random balanced trials between distinct utterances, for fitting a calibration.

    Target pairs: an utterance drawn uniformly among those whose speaker has at least two,
    paired with another utterance of the same speaker. Non-target pairs: an utterance drawn
    uniformly, paired with one drawn uniformly among the other speakers' utterances. Pairs
    are drawn with replacement and shuffled; ``n_pairs // 2`` are targets.

    Args:
        speakers: (n,) speaker label of each utterance.

    Returns:
        ``(idx_a, idx_b, labels)``: (n_pairs,) int64 utterance indices and int8 labels.

    >>> a, b, labels = sample_calibration_pairs(["x", "x", "y", "z"], n_pairs=6)
    >>> int(labels.sum()), bool((a != b).all())
    (3, True)
    """
    if n_pairs < 2:
        raise ScoringError(f"n_pairs must be at least 2, got {n_pairs}")
    codes = np.unique(np.asarray(speakers, dtype=object).astype(str), return_inverse=True)[1]
    codes = codes.ravel()
    counts = np.bincount(codes)
    if counts.size < 2:
        raise ScoringError("need utterances of at least 2 speakers for non-target pairs")
    if counts.max() < 2:
        raise ScoringError("no speaker has 2 utterances, so there are no target pairs")
    order = np.argsort(codes, kind="stable")  # utterances grouped by speaker
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    rng = np.random.default_rng(seed)
    n_target = n_pairs // 2
    n_nontarget = n_pairs - n_target

    eligible = order[counts[codes[order]] >= 2]
    anchor = eligible[rng.integers(0, eligible.size, n_target)]
    spk = codes[anchor]
    rank = np.empty(codes.size, dtype=np.int64)  # position of each utterance inside its speaker
    rank[order] = np.arange(codes.size) - np.repeat(starts, counts)
    within = (rank[anchor] + rng.integers(1, counts[spk])) % counts[spk]
    target_b = order[starts[spk] + within]

    first = rng.integers(0, codes.size, n_nontarget)
    spk = codes[first]
    other = rng.integers(0, codes.size - counts[spk])  # index among the other speakers
    other = np.where(other < starts[spk], other, other + counts[spk])
    nontarget_b = order[other]

    idx_a = np.concatenate([anchor, first])
    idx_b = np.concatenate([target_b, nontarget_b])
    labels = np.r_[np.ones(n_target, np.int8), np.zeros(n_nontarget, np.int8)]
    shuffle = rng.permutation(n_pairs)
    return idx_a[shuffle].astype(np.int64), idx_b[shuffle].astype(np.int64), labels[shuffle]


class QMFCalibrator:
    """Logistic-regression calibration of quality features into LLRs.

    Features are standardised with the training mean and std, then an L2-regularised
    (weights only, strength ``l2``) logistic regression with balanced class weights is
    fitted by L-BFGS-B with the analytic gradient. Works with any number of feature
    columns (e.g. a score-only calibration); ``feature_names`` defaults to
    :data:`FEATURE_NAMES` for 9 columns.

    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat([1, 0], 200)
    >>> features = rng.normal(size=(400, 9)) + labels[:, None]
    >>> calibrator = QMFCalibrator().fit(features, labels)
    >>> calibrator.llr(features).shape
    (400,)
    >>> QMFCalibrator.threshold_for(0.5)
    0.0
    """

    def __init__(self, *, l2: float = 1e-4, feature_names: Sequence[str] | None = None) -> None:
        if l2 < 0:
            raise ScoringError(f"l2 must be >= 0, got {l2}")
        self.l2 = float(l2)
        self.feature_names = tuple(feature_names) if feature_names is not None else None
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.weights: np.ndarray | None = None
        self.bias: float | None = None

    @property
    def fitted(self) -> bool:
        return self.weights is not None

    @staticmethod
    def threshold_for(p_target: float) -> float:
        """Bayes decision threshold on the LLR for a target prior: ``-logit(p_target)``.

        >>> round(QMFCalibrator.threshold_for(0.01), 4)
        4.5951
        """
        if not 0.0 < p_target < 1.0:
            raise ScoringError(f"p_target must be strictly between 0 and 1, got {p_target}")
        return math.log((1.0 - p_target) / p_target)

    def _features(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float64)
        if features.ndim != 2:
            raise ScoringError(f"features must be (n, d), got shape {features.shape}")
        if not np.isfinite(features).all():
            raise ScoringError("features contain NaN or infinite values")
        if self.mean is not None and features.shape[1] != self.mean.size:
            raise ScoringError(
                f"calibrator expects {self.mean.size} feature columns, got {features.shape[1]}"
            )
        return features

    def fit(self, features: np.ndarray, labels: np.ndarray) -> QMFCalibrator:
        """Fit on (n, d) features and (n,) labels (1 target / 0 non-target); returns self."""
        self.mean = None
        features = self._features(features)
        labels = np.asarray(labels)
        if labels.shape != (features.shape[0],) or not np.isin(labels, (0, 1)).all():
            raise ScoringError(f"labels must be {features.shape[0]} values of 1 or 0")
        target = labels.astype(bool)
        n_target = int(target.sum())
        if n_target == 0 or n_target == target.size:
            raise ScoringError("calibration needs both target and non-target pairs")
        dims = features.shape[1]
        if self.feature_names is None:
            names = FEATURE_NAMES if dims == len(FEATURE_NAMES) else ()
            self.feature_names = names or tuple(f"x{i}" for i in range(dims))
        if len(self.feature_names) != dims:
            raise ScoringError(f"{len(self.feature_names)} feature names for {dims} columns")

        mean = features.mean(axis=0)
        scale = features.std(axis=0)
        scale[scale == 0] = 1.0
        z = (features - mean) / scale
        # each class weighs one half in total: the log-odds come out at prior 0.5 (an LLR)
        sample_weight = np.where(target, 0.5 / n_target, 0.5 / (target.size - n_target))
        sign = np.where(target, 1.0, -1.0)  # loss log(1 + exp(-sign * a))

        def loss_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = params[:-1], params[-1]
            margin = sign * (z @ w + b)
            loss = sample_weight @ np.logaddexp(0.0, -margin) + 0.5 * self.l2 * (w @ w)
            coef = -sample_weight * sign * expit(-margin)  # d loss / d activation
            grad = np.r_[z.T @ coef + self.l2 * w, coef.sum()]
            return float(loss), grad

        result = minimize(
            loss_and_grad,
            np.zeros(dims + 1),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": 1000, "gtol": 1e-9},
        )
        if not np.isfinite(result.x).all():
            raise ScoringError(f"calibration did not converge: {result.message}")
        self.mean, self.scale = mean, scale
        self.weights, self.bias = result.x[:-1].copy(), float(result.x[-1])
        return self

    def llr(self, features: np.ndarray) -> np.ndarray:
        """(n, d) features -> (n,) float64 log-likelihood ratios (natural log)."""
        if not self.fitted:
            raise ScoringError("the calibrator is not fitted; call fit() or load() first")
        z = (self._features(features) - self.mean) / self.scale
        return z @ self.weights + self.bias

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/YAML-safe description: format, version, names and fitted parameters."""
        if not self.fitted:
            raise ScoringError("the calibrator is not fitted; nothing to save")
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "feature_names": list(self.feature_names or ()),
            "l2": self.l2,
            "mean": [float(v) for v in self.mean],
            "scale": [float(v) for v in self.scale],
            "weights": [float(v) for v in self.weights],
            "bias": float(self.bias),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QMFCalibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict` output."""
        if data.get("format") != FORMAT or data.get("version") != FORMAT_VERSION:
            raise ScoringError(
                f"not a {FORMAT} version {FORMAT_VERSION} calibrator: format "
                f"{data.get('format')!r}, version {data.get('version')!r}"
            )
        try:
            calibrator = cls(l2=float(data["l2"]), feature_names=list(data["feature_names"]))
            mean = np.array(data["mean"], dtype=np.float64)
            scale = np.array(data["scale"], dtype=np.float64)
            weights = np.array(data["weights"], dtype=np.float64)
            bias = float(data["bias"])
        except (KeyError, TypeError, ValueError) as error:
            raise ScoringError(f"incomplete calibrator description: {error}") from error
        dims = len(calibrator.feature_names or ())
        if not mean.shape == scale.shape == weights.shape == (dims,):
            raise ScoringError(f"calibrator parameters do not match its {dims} feature names")
        calibrator.mean, calibrator.scale = mean, scale
        calibrator.weights, calibrator.bias = weights, bias
        return calibrator

    def save(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON, atomically."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> QMFCalibrator:
        """Read a calibrator written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ScoringError(f"{path}: cannot read calibrator ({error})") from error
        if not isinstance(data, dict):
            raise ScoringError(f"{path}: not a calibrator JSON object")
        try:
            return cls.from_dict(data)
        except ScoringError as error:
            raise ScoringError(f"{path}: {error}") from error
