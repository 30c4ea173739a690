"""Item 7: speed of the scoring back end on CPU: metrics, cosine + AS-norm, QMF calibration,
and the whole ``lapsv eval`` scoring path on a trial file.

Part of ``python -m benchmarks.run`` (``--only scoring`` for this item alone). Sizes
follow VoxCeleb1-E: 550,000 trials over 140,000 utterances, 192-d embeddings, cohorts of
600 and 5,994 (VoxCeleb2-dev) speakers; EER/minDCF on 10^7 scores. The eval path
(:func:`~lapsv.scoring.evaluate.score_trials` from embeddings already computed: read the
trial file, find each trial's rows by id, cosine, metrics, score file, DET and histogram
plots) runs on a VoxCeleb1-H-sized list: 550,000 trials over 137,000 utterances.
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy

from lapsv.embeddings import EmbeddingSet
from lapsv.scoring import (
    QMFCalibrator,
    as_norm,
    compute_metrics,
    cosine_scores,
    embedding_mean,
    sample_calibration_pairs,
    speaker_cohort,
)
from lapsv.scoring.evaluate import score_trials
from lapsv.scoring.trials import read_trials

FULL = {
    "metric_scores": 10_000_000,
    "trials": 550_000,
    "utterances": 140_000,
    "dim": 192,
    "cohort_small": 600,
    "cohort_large": 5_994,
    "cohort_utterances_per_speaker": 20,
    "top_n": 600,
    "qmf_pairs": 30_000,
    "eval_trials": 550_000,
    "eval_utterances": 137_000,
}
SMALL = {
    "metric_scores": 20_000,
    "trials": 5_000,
    "utterances": 1_000,
    "dim": 32,
    "cohort_small": 60,
    "cohort_large": 200,
    "cohort_utterances_per_speaker": 3,
    "top_n": 50,
    "qmf_pairs": 2_000,
    "eval_trials": 5_000,
    "eval_utterances": 1_400,
}


def _timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": cpus,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        # other processes on the machine inflate the timings; recorded to judge that
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def _bench_metrics(size: dict[str, int], rng: np.random.Generator) -> dict[str, Any]:
    """(a) EER + minDCF(0.01, 0.05) of random scores, from one sort."""
    n = size["metric_scores"]
    labels = (rng.random(n) < 0.1).astype(np.int8)
    scores = rng.normal(size=n) + 2.0 * labels
    seconds, metrics = _timed(lambda: compute_metrics(scores, labels))
    # the floor under any exact EER: one sort of the scores (compute_metrics sorts once)
    sort_seconds, _ = _timed(lambda: np.sort(scores))
    return {
        "metrics": {"n": n, "seconds": seconds, "sort_seconds": sort_seconds, "eer": metrics["eer"]}
    }


def _bench_norm(
    size: dict[str, int], rng: np.random.Generator, training: np.ndarray, speakers: np.ndarray
) -> dict[str, Any]:
    """(b) cohort, cosine and AS-norm; one utterance table serves both sides (VoxCeleb1-E/H)."""
    dim, n_utts, n_trials, top_n = size["dim"], size["utterances"], size["trials"], size["top_n"]
    embeddings = rng.normal(size=(n_utts, dim)).astype(np.float32) + 0.3
    pairs_e = rng.integers(0, n_utts, n_trials)
    pairs_t = rng.integers(0, n_utts, n_trials)
    unique = int(np.unique(np.r_[pairs_e, pairs_t]).size)
    results: dict[str, Any] = {}
    mean = embedding_mean(training)
    seconds, cohort_large = _timed(lambda: speaker_cohort(training, speakers, mean=mean))
    results["speaker_cohort"] = {
        "n_utterances": len(training),
        "n_speakers": len(cohort_large),
        "seconds": seconds,
    }
    seconds, raw = _timed(
        lambda: cosine_scores(embeddings, embeddings, pairs_e, pairs_t, mean=mean)
    )
    results["cosine"] = {"n_trials": n_trials, "n_unique_utterances": unique, "seconds": seconds}
    cohorts = {
        "as_norm_small_cohort": cohort_large[: size["cohort_small"]],
        "as_norm_large_cohort": cohort_large,
    }
    for key, cohort in cohorts.items():
        seconds, _ = _timed(
            lambda cohort=cohort: as_norm(
                raw, embeddings, embeddings, pairs_e, pairs_t, cohort, top_n=top_n, mean=mean
            )
        )
        results[key] = {
            "n_trials": n_trials,
            "n_unique_utterances": unique,
            "dim": dim,
            "cohort": len(cohort),
            "top_n": top_n,
            "seconds": seconds,
        }
    return results


def _bench_qmf(
    size: dict[str, int], rng: np.random.Generator, speakers: np.ndarray
) -> dict[str, Any]:
    """(c) QMF: sample balanced pairs of training speakers, fit on 9 features."""
    n_pairs = size["qmf_pairs"]
    seconds_pairs, (_, _, labels) = _timed(
        lambda: sample_calibration_pairs(speakers, n_pairs=n_pairs, seed=0)
    )
    features = rng.normal(size=(n_pairs, 9)) + labels[:, None] * np.linspace(1.5, 0.1, 9)
    seconds, _ = _timed(lambda: QMFCalibrator().fit(features, labels))
    return {"qmf": {"n_pairs": n_pairs, "sample_seconds": seconds_pairs, "fit_seconds": seconds}}


def _bench_eval(size: dict[str, int], rng: np.random.Generator) -> dict[str, Any]:
    """(d) ``lapsv eval``'s scoring of a trial file (VoxCeleb1-H sized) from embeddings."""
    n_utts, n_trials = size["eval_utterances"], size["eval_trials"]
    ids = [f"id{i // 8:05d}/video{i % 8}/{i:06d}.wav" for i in range(n_utts)]
    embeddings = rng.normal(size=(n_utts, size["dim"])).astype(np.float32)
    table = EmbeddingSet(ids, embeddings, np.full(n_utts, 8.0))
    enroll, test = rng.integers(0, n_utts, (2, n_trials))
    labels = rng.integers(0, 2, n_trials)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "trials.txt")
        with open(path, "w") as handle:
            handle.writelines(
                f"{label} {ids[e]} {ids[t]}\n"
                for label, e, t in zip(labels, enroll, test, strict=True)
            )
        seconds_read, trials = _timed(lambda: read_trials(path))
        out = os.path.join(folder, "results")
        seconds, _ = _timed(lambda: score_trials(table, trials, out=Path(out)))
    return {
        "eval": {
            "n_trials": n_trials,
            "n_utterances": n_utts,
            "read_seconds": seconds_read,
            "score_seconds": seconds,
        }
    }


def run(*, small: bool = False) -> dict[str, Any]:
    """Time each scoring stage on random data; seconds are wall-clock, one run each."""
    size = SMALL if small else FULL
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {"machine": machine(), "small": small, "sizes": dict(size)}
    results.update(_bench_metrics(size, rng))
    per_speaker = size["cohort_utterances_per_speaker"]
    training = rng.normal(size=(size["cohort_large"] * per_speaker, size["dim"]))
    speakers = np.repeat(np.arange(size["cohort_large"]).astype(str), per_speaker)
    results.update(_bench_norm(size, rng, training.astype(np.float32), speakers))
    results.update(_bench_qmf(size, rng, speakers))
    results.update(_bench_eval(size, rng))
    return results


if __name__ == "__main__":
    from benchmarks.run import main

    main(["--only", "scoring", *sys.argv[1:]])
