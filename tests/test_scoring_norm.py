"""Cosine scoring, enrolment, cohorts and AS-norm against straightforward per-trial loops."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from lapsv.embeddings import EmbeddingSet
from lapsv.errors import ScoringError
from lapsv.scoring import (
    as_norm,
    cosine_scores,
    embedding_mean,
    enroll_models,
    length_normalize,
    speaker_cohort,
)
from lapsv.scoring import norm as norm_module
from lapsv.scoring.norm import group_means

ROOT = Path(__file__).resolve().parents[1]


def prepare(vector, mean):
    """Length-normalise, subtract the mean, length-normalise, one vector at a time."""
    vector = vector / np.linalg.norm(vector)
    if mean is not None:
        vector = vector - mean
        vector = vector / np.linalg.norm(vector)
    return vector


def reference_as_norm(raw, enroll, test, pairs_e, pairs_t, cohort, top_n, mean):
    scores = []
    for score, e, t in zip(raw, pairs_e, pairs_t, strict=True):
        normalised = []
        for vector in (prepare(enroll[e], mean), prepare(test[t], mean)):
            top = np.sort(cohort @ vector)[::-1][:top_n]
            normalised.append((score - top.mean()) / top.std())
        scores.append(0.5 * sum(normalised))
    return np.array(scores)


def random_setup(seed=0, *, n_enroll=30, n_test=40, n_trials=300, dim=64, n_cohort=80):
    rng = np.random.default_rng(seed)
    enroll = rng.normal(size=(n_enroll, dim)) * rng.uniform(0.5, 3.0, size=(n_enroll, 1)) + 0.4
    test = rng.normal(size=(n_test, dim)) + 0.4
    cohort = length_normalize(rng.normal(size=(n_cohort, dim)))
    pairs_e = rng.integers(0, n_enroll, n_trials)
    pairs_t = rng.integers(0, n_test, n_trials)
    mean = embedding_mean(rng.normal(size=(200, dim)) + 0.4)
    return enroll, test, cohort, pairs_e, pairs_t, mean


@pytest.mark.parametrize("with_mean", [False, True])
def test_cosine_scores_match_loop(monkeypatch, with_mean):
    enroll, test, _, pairs_e, pairs_t, mean = random_setup()
    mean = mean if with_mean else None
    monkeypatch.setattr(norm_module, "_CHUNK_ELEMENTS", 64 * 7)  # 7 trials per block
    scores = cosine_scores(enroll, test, pairs_e, pairs_t, mean=mean)
    expected = [
        prepare(enroll[e], mean) @ prepare(test[t], mean)
        for e, t in zip(pairs_e, pairs_t, strict=True)
    ]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert scores.dtype == np.float64


@pytest.mark.parametrize("top_n", [2, 5, 17, 80, 600])
@pytest.mark.parametrize("with_mean", [False, True])
def test_as_norm_matches_loop(monkeypatch, top_n, with_mean):
    enroll, test, cohort, pairs_e, pairs_t, mean = random_setup(top_n)
    mean = mean if with_mean else None
    monkeypatch.setattr(norm_module, "_CHUNK_ELEMENTS", 80 * 3)  # 3 vectors per cohort block
    raw = cosine_scores(enroll, test, pairs_e, pairs_t, mean=mean, dtype=np.float64)
    expected = reference_as_norm(raw, enroll, test, pairs_e, pairs_t, cohort, min(top_n, 80), mean)
    exact = as_norm(
        raw, enroll, test, pairs_e, pairs_t, cohort, top_n=top_n, mean=mean, dtype=np.float64
    )
    np.testing.assert_allclose(exact, expected, atol=1e-5)
    # float32 cohort scores: ~1e-7 errors, magnified by small top-n standard deviations
    fast = as_norm(raw, enroll, test, pairs_e, pairs_t, cohort, top_n=top_n, mean=mean)
    np.testing.assert_allclose(fast, expected, rtol=1e-5 if top_n >= 17 else 3e-4, atol=1e-5)


def test_as_norm_one_table_for_both_sides():
    table, _, cohort, pairs_e, _, mean = random_setup(3, n_enroll=50)
    pairs_t = np.random.default_rng(1).integers(0, 50, pairs_e.size)
    raw = cosine_scores(table, table, pairs_e, pairs_t, mean=mean)
    shared = as_norm(raw, table, table, pairs_e, pairs_t, cohort, top_n=10, mean=mean)
    separate = as_norm(raw, table, table.copy(), pairs_e, pairs_t, cohort, top_n=10, mean=mean)
    expected = reference_as_norm(raw, table, table, pairs_e, pairs_t, cohort, 10, mean)
    np.testing.assert_allclose(shared, expected, atol=1e-5)
    np.testing.assert_allclose(separate, shared, atol=1e-9)


def test_as_norm_errors():
    enroll, test, cohort, pairs_e, pairs_t, _ = random_setup()
    raw = cosine_scores(enroll, test, pairs_e, pairs_t)
    with pytest.raises(ScoringError, match="top_n >= 2"):
        as_norm(raw, enroll, test, pairs_e, pairs_t, cohort, top_n=1)
    with pytest.raises(ScoringError, match="same length"):
        as_norm(raw[:-1], enroll, test, pairs_e, pairs_t, cohort, top_n=5)
    with pytest.raises(ScoringError, match="outside"):
        as_norm(raw, enroll, test, pairs_e + 100, pairs_t, cohort, top_n=5)


def test_enroll_models_average_normalised_embeddings():
    ids = ["u1", "u2", "u3", "u4"]
    embeddings = np.array([[10.0, 0.0, 0.0], [0.0, 0.5, 0.0], [0.0, 0.0, 2.0], [3.0, 4.0, 0.0]])
    models, vectors = enroll_models(ids, embeddings, {"m2": ["u4"], "m1": ["u1", "u2", "u3"]})
    assert models == ("m2", "m1")
    np.testing.assert_allclose(vectors[0], [0.6, 0.8, 0.0], atol=1e-6)
    np.testing.assert_allclose(vectors[1], np.ones(3) / np.sqrt(3), atol=1e-6)
    assert vectors.dtype == np.float32


def test_missing_ids_are_listed():
    table = EmbeddingSet(["a", "b"], np.eye(2), np.zeros(2))
    wanted = ["a", *[f"missing{i}" for i in range(7)], "missing0"]
    with pytest.raises(ScoringError, match="7 id\\(s\\) have no embedding") as error:
        table.rows(wanted)
    message = str(error.value)
    assert "missing4" in message and "missing5" not in message  # at most 5 listed
    with pytest.raises(ScoringError, match="no embedding, e.g. \\['x'\\]"):
        enroll_models(["a", "b"], np.eye(2), {"m": ["a", "x"]})
    with pytest.raises(ScoringError, match="duplicate"):
        EmbeddingSet(["a", "a"], np.eye(2), np.zeros(2)).rows(["a"])


def test_group_means_equal_the_mean_of_each_group():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, 3))
    for groups in (rng.permutation(12), rng.integers(0, 4, 12)):  # one row per group, or more
        groups[: groups.max() + 1] = np.arange(groups.max() + 1)  # every group non-empty
        means = group_means(vectors, groups, groups.max() + 1)
        for group, mean in enumerate(means):
            np.testing.assert_allclose(mean, vectors[groups == group].mean(axis=0), atol=1e-12)
    one_each = rng.permutation(12)
    assert np.array_equal(group_means(vectors, one_each, 12)[one_each], vectors)  # exact


def test_the_id_index_is_built_once_and_follows_new_ids():
    table = EmbeddingSet(["a", "b", "c"], np.eye(3), np.zeros(3))
    assert table.index() is table.index()  # kept between lookups
    assert table.rows(["c"]).tolist() == [2]
    table.ids = ("c", "b", "a")  # new ids: a new index
    assert table.rows(["c", "a"]).tolist() == [0, 2]
    keep, pairs_e, pairs_t = table.trial_rows(["a", "x", "b"], ["b", "a", "z"])
    assert keep.tolist() == [True, False, False] and (pairs_e[0], pairs_t[0]) == (2, 1)


def test_speaker_cohort_means_per_speaker():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(9, 4)) + 1.0
    speakers = ["s2", "s1", "s2", "s3", "s1", "s1", "s3", "s2", "s3"]
    mean = embedding_mean(embeddings)
    cohort = speaker_cohort(embeddings, speakers, mean=mean)
    assert cohort.shape == (3, 4)
    for row, speaker in enumerate(["s1", "s2", "s3"]):
        members = [prepare(embeddings[i], mean) for i, s in enumerate(speakers) if s == speaker]
        expected = np.mean(members, axis=0)
        np.testing.assert_allclose(cohort[row], expected / np.linalg.norm(expected), atol=1e-6)


def test_benchmark_small_run():
    spec = importlib.util.spec_from_file_location("scoring_bench", ROOT / "benchmarks/scoring.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    report = module.run(small=True)
    assert set(report) >= {
        "machine",
        "metrics",
        "cosine",
        "as_norm_small_cohort",
        "as_norm_large_cohort",
        "qmf",
        "eval",
    }
    assert set(report["machine"]) >= {"platform", "cpu_count", "numpy"}
    assert report["as_norm_large_cohort"]["seconds"] > 0
    assert report["qmf"]["n_pairs"] == 2000
