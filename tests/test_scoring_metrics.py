"""Metrics against an independent brute-force threshold sweep, exact small cases, plots."""

from __future__ import annotations

import numpy as np
import pytest

from lapsv.errors import ScoringError
from lapsv.scoring import (
    actual_dcf,
    cllr,
    compute_metrics,
    det_curve,
    equal_error_rate,
    min_dcf,
    plot_det,
    plot_score_histogram,
)


def brute_force(scores: np.ndarray, labels: np.ndarray, p_target: float):
    """Sweep every threshold by direct counting (accept when score >= threshold)."""
    thresholds = np.r_[np.unique(scores), np.nextafter(scores.max(), np.inf)]
    target, nontarget = scores[labels == 1], scores[labels == 0]
    p_miss = np.concatenate(
        [(target[None, :] < t[:, None]).mean(axis=1) for t in np.array_split(thresholds, 20)]
    )
    p_fa = np.concatenate(
        [(nontarget[None, :] >= t[:, None]).mean(axis=1) for t in np.array_split(thresholds, 20)]
    )
    # EER: the segment between consecutive points that crosses p_miss == p_fa
    eer = threshold = None
    for k in range(1, len(thresholds)):
        before, after = p_fa[k - 1] - p_miss[k - 1], p_fa[k] - p_miss[k]
        if before > 0 >= after:
            alpha = before / (before - after)
            eer = p_miss[k - 1] + alpha * (p_miss[k] - p_miss[k - 1])
            threshold = thresholds[k - 1] + alpha * (thresholds[k] - thresholds[k - 1])
            break
    norm = min(p_target, 1 - p_target)
    costs = (p_target * p_miss + (1 - p_target) * p_fa) / norm
    return p_miss, p_fa, thresholds, eer, threshold, costs.min()


def random_trials(seed: int, n: int, *, ties: bool):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    scores = rng.normal(size=n) + 1.2 * labels
    if ties:
        scores = np.round(scores * 4) / 4  # a few dozen distinct values, many ties across classes
    return scores, labels


@pytest.mark.parametrize(("seed", "ties"), [(0, False), (1, False), (2, True), (3, True)])
def test_matches_brute_force_sweep(seed, ties):
    scores, labels = random_trials(seed, 10_000, ties=ties)
    p_miss, p_fa, thresholds, eer, eer_threshold, best = brute_force(scores, labels, 0.05)
    curve = det_curve(scores, labels)
    np.testing.assert_allclose(curve[0], p_miss, atol=1e-12)
    np.testing.assert_allclose(curve[1], p_fa, atol=1e-12)
    np.testing.assert_array_equal(curve[2], thresholds)
    result = equal_error_rate(scores, labels)
    assert result.rate == pytest.approx(eer, abs=1e-6)
    assert result.threshold == pytest.approx(eer_threshold, abs=1e-6)
    assert min_dcf(scores, labels, p_target=0.05).value == pytest.approx(best, abs=1e-6)
    metrics = compute_metrics(scores, labels)
    assert metrics["eer"] == pytest.approx(100 * eer, abs=1e-4)
    assert metrics["min_dcf_0.05"] == pytest.approx(best, abs=1e-6)
    assert metrics["min_dcf_0.01"] == pytest.approx(brute_force(scores, labels, 0.01)[5], abs=1e-6)


def test_hand_made_six_trials():
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    labels = np.array([0, 1, 0, 1, 1, 1])
    # thresholds 1..6, 6+: p_miss 0, 0, 1/4, 1/4, 2/4, 3/4, 1; p_fa 1, 1/2, 1/2, 0, 0, 0, 0.
    # p_fa - p_miss goes from 1/4 (t=3) to -1/4 (t=4): EER 1/4 halfway, at threshold 3.5.
    assert equal_error_rate(scores, labels) == (0.25, 3.5)
    # p_target 0.25: cost = p_miss + 3 p_fa, lowest (1/4) at threshold 4
    assert min_dcf(scores, labels, p_target=0.25) == (0.25, 4.0)
    # a tie across classes at 3: p_fa - p_miss goes from 1/3 (t=3) to -1/3 (t=4): EER 1/2
    tied = equal_error_rate(np.array([1, 2, 3, 3, 4, 5.0]), np.array([0, 1, 0, 1, 0, 1]))
    assert tied == (0.5, 3.5)


def test_perfect_separation():
    scores = np.r_[np.linspace(-1, 0, 50), np.linspace(0.5, 1, 30)]
    labels = np.r_[np.zeros(50, int), np.ones(30, int)]
    metrics = compute_metrics(scores, labels)
    assert metrics["eer"] == 0.0
    assert metrics["min_dcf_0.01"] == 0.0
    assert metrics["min_dcf_0.05"] == 0.0
    assert 0.0 < equal_error_rate(scores, labels).threshold <= 0.5


def test_identical_distributions_give_half():
    rng = np.random.default_rng(7)
    scores = rng.normal(size=100_000)
    labels = rng.integers(0, 2, size=100_000)
    assert abs(compute_metrics(scores, labels)["eer"] - 50.0) < 1.5


@pytest.mark.parametrize("seed", range(5))
def test_min_dcf_never_above_one(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=500)
    scores = rng.normal(size=500) - 2.0 * labels * (seed % 2)  # some are worse than chance
    for p_target in (0.001, 0.01, 0.05, 0.5, 0.9):
        assert 0.0 <= min_dcf(scores, labels, p_target=p_target).value <= 1.0


def test_compute_metrics_keys():
    scores, labels = random_trials(4, 2000, ties=False)
    assert set(compute_metrics(scores, labels)) == {
        "eer",
        "min_dcf_0.01",
        "min_dcf_0.05",
        "n_target",
        "n_nontarget",
    }
    calibrated = compute_metrics(scores, labels, calibrated=True)
    assert set(calibrated) >= {"cllr", "act_dcf_0.01", "act_dcf_0.05"}
    assert calibrated["n_target"] + calibrated["n_nontarget"] == 2000


def test_cllr_and_actual_dcf():
    labels = np.array([1, 1, 0, 0])
    assert cllr(np.zeros(4), labels) == pytest.approx(1.0)
    assert cllr(np.array([30.0, 30.0, -30.0, -30.0]), labels) < 1e-10
    # a threshold of -logit(0.01) = 4.595: the LLR 4 target is missed, the LLR 5 non-target accepted
    dcf = actual_dcf(np.array([4.0, 9.0, 5.0, -9.0]), labels, p_target=0.01)
    assert dcf.threshold == pytest.approx(np.log(99))
    assert dcf.value == pytest.approx((0.01 * 0.5 + 0.99 * 0.5) / 0.01)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        (np.array([0.1, np.nan]), np.array([1, 0]), "NaN"),
        (np.array([0.1, 0.2]), np.array([1, 1]), "non-target"),
        (np.array([0.1, 0.2]), np.array([0, 0]), "target"),
        (np.array([0.1, 0.2]), np.array([1, 2]), "1 \\(target\\)"),
        (np.array([0.1, 0.2, 0.3]), np.array([1, 0]), "same length"),
    ],
)
def test_invalid_inputs(scores, labels, message):
    with pytest.raises(ScoringError, match=message):
        compute_metrics(scores, labels)


def test_plots_are_written(tmp_path):
    scores, labels = random_trials(5, 20_000, ties=False)
    det = plot_det(
        scores,
        labels,
        tmp_path / "det.png",
        title="test",
        systems={"better": (scores + labels, labels)},
    )
    histogram = plot_score_histogram(scores, labels, tmp_path / "hist.png", threshold=0.6)
    assert det.stat().st_size > 10_000
    assert histogram.stat().st_size > 10_000
    assert det.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["det.png", "hist.png"]  # no temp left
