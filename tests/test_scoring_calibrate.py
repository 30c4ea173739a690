"""QMF calibration: features, balanced pair sampling, fit, LLR quality, serialisation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lapsv.errors import ScoringError
from lapsv.scoring import (
    FEATURE_NAMES,
    QMFCalibrator,
    cllr,
    quality_features,
    sample_calibration_pairs,
)


def synthetic_trials(seed: int, n: int = 20_000):
    """Trials whose score distributions shift with duration: longer audio, higher scores."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    seconds_e = np.exp(rng.uniform(np.log(1.5), np.log(60), n))
    seconds_t = np.exp(rng.uniform(np.log(1.5), np.log(60), n))
    quality = np.log(seconds_e) + np.log(seconds_t)
    sigma, gap, slope = 0.1, 0.25, 0.06
    scores = gap * labels + slope * quality + sigma * rng.normal(size=n)
    oracle = gap / sigma**2 * (scores - gap / 2 - slope * quality)  # the true LLR
    raw_e = rng.normal(size=(n, 8)) * rng.uniform(0.5, 2.0, (n, 1))
    raw_t = rng.normal(size=(n, 8)) * rng.uniform(0.5, 2.0, (n, 1))
    features = quality_features(scores, raw_e, raw_t, seconds_e, seconds_t)
    return features, labels, oracle


def test_qmf_beats_raw_and_score_only_calibration():
    train_features, train_labels, _ = synthetic_trials(0)
    features, labels, oracle = synthetic_trials(1)
    qmf = QMFCalibrator().fit(train_features, train_labels)
    score_only = QMFCalibrator().fit(train_features[:, :1], train_labels)
    qmf_cllr = cllr(qmf.llr(features), labels)
    score_only_cllr = cllr(score_only.llr(features[:, :1]), labels)
    raw_cllr = cllr(features[:, 0], labels)
    assert qmf_cllr < score_only_cllr - 0.05
    assert qmf_cllr < raw_cllr
    assert qmf_cllr < 1.0
    assert qmf_cllr == pytest.approx(cllr(oracle, labels), abs=0.02)
    # the duration columns carry the correction; with the score they dominate the weights
    assert set(np.argsort(-np.abs(qmf.weights))[:3].tolist()) == {0, 1, 2}
    assert qmf.feature_names == FEATURE_NAMES


def test_well_calibrated_llrs_have_cllr_below_one():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, 5000)
    llrs = np.where(labels == 1, 2.0, -2.0) + 2.0 * rng.normal(size=5000)  # N(+-2, 4): calibrated
    assert cllr(llrs, labels) < 1.0


def test_round_trips_are_exact(tmp_path):
    features, labels, _ = synthetic_trials(2, n=3000)
    calibrator = QMFCalibrator(l2=1e-3).fit(features, labels)
    expected = calibrator.llr(features)
    data = json.loads(json.dumps(calibrator.to_dict()))
    assert data["format"] == "lapsv-qmf" and data["version"] == 1
    assert data["feature_names"] == list(FEATURE_NAMES)
    np.testing.assert_array_equal(QMFCalibrator.from_dict(data).llr(features), expected)
    path = calibrator.save(tmp_path / "qmf.json")
    np.testing.assert_array_equal(QMFCalibrator.load(path).llr(features), expected)


def test_calibrator_errors(tmp_path):
    features, labels, _ = synthetic_trials(4, n=500)
    with pytest.raises(ScoringError, match="not fitted"):
        QMFCalibrator().llr(features)
    calibrator = QMFCalibrator().fit(features, labels)
    with pytest.raises(ScoringError, match="expects 9 feature columns"):
        calibrator.llr(features[:, :3])
    with pytest.raises(ScoringError, match="both target and non-target"):
        QMFCalibrator().fit(features, np.ones(500, int))
    with pytest.raises(ScoringError, match="version"):
        QMFCalibrator.from_dict({**calibrator.to_dict(), "version": 99})
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ScoringError, match="bad.json"):
        QMFCalibrator.load(tmp_path / "bad.json")


def test_threshold_for():
    assert QMFCalibrator.threshold_for(0.5) == 0.0
    assert QMFCalibrator.threshold_for(0.01) == pytest.approx(math.log(99))
    with pytest.raises(ScoringError, match="p_target"):
        QMFCalibrator.threshold_for(1.0)


def test_quality_features_columns_and_pairs():
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(6, 5))
    seconds = rng.uniform(1, 10, 6)
    pairs_e, pairs_t = np.array([0, 0, 3, 5]), np.array([1, 2, 4, 4])
    scores = rng.normal(size=4)
    features = quality_features(
        scores, raw, raw, seconds, seconds, pairs_e=pairs_e, pairs_t=pairs_t
    )
    direct = quality_features(
        scores, raw[pairs_e], raw[pairs_t], seconds[pairs_e], seconds[pairs_t]
    )
    np.testing.assert_array_equal(features, direct)
    assert features.shape == (4, 9) and features.dtype == np.float64
    e, t = raw[pairs_e[2]], raw[pairs_t[2]]
    expected = [
        scores[2],
        np.log(seconds[3]),
        np.log(seconds[4]),
        np.abs(e).sum(),
        np.abs(t).sum(),
        np.linalg.norm(e),
        np.linalg.norm(t),
        e.std(),
        t.std(),
    ]
    np.testing.assert_allclose(features[2], expected)
    with pytest.raises(ScoringError, match="positive"):
        quality_features(scores, raw[:4], raw[:4], np.zeros(4), seconds[:4])


def test_sample_calibration_pairs():
    speakers = ["a"] * 5 + ["b"] * 2 + ["c"] + ["d"] * 40
    idx_a, idx_b, labels = sample_calibration_pairs(speakers, n_pairs=1001, seed=3)
    assert idx_a.shape == idx_b.shape == labels.shape == (1001,)
    assert int(labels.sum()) == 500
    spk = np.array(speakers)
    assert (idx_a != idx_b).all()
    assert (spk[idx_a][labels == 1] == spk[idx_b][labels == 1]).all()
    assert (spk[idx_a][labels == 0] != spk[idx_b][labels == 0]).all()
    assert "c" not in set(spk[idx_a][labels == 1])  # c has one utterance
    again = sample_calibration_pairs(speakers, n_pairs=1001, seed=3)
    np.testing.assert_array_equal(again[0], idx_a)
    with pytest.raises(ScoringError, match="no speaker has 2 utterances"):
        sample_calibration_pairs(["a", "b", "c"])
    with pytest.raises(ScoringError, match="at least 2 speakers"):
        sample_calibration_pairs(["a", "a", "a"])
