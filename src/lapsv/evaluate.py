"""Evaluate a model on a trial list: cached embeddings, cosine / AS-norm scores, QMF
calibration, EER and minDCF, a score file, a DET curve and a score histogram.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lapsv.data.manifest import read_manifest
from lapsv.errors import ConfigError, ScoringError
from lapsv.files import atomic_write_text
from lapsv.inference import EmbeddingSet, extract_embeddings
from lapsv.model import CONFIG_FILE, PICKLE_WEIGHT_FILES, WEIGHTS_FILE
from lapsv.scoring.calibrate import QMFCalibrator, quality_features, sample_calibration_pairs
from lapsv.scoring.metrics import compute_metrics
from lapsv.scoring.norm import as_norm, cosine_scores, embedding_mean, speaker_cohort
from lapsv.scoring.plots import plot_det, plot_score_histogram
from lapsv.scoring.trials import Trials, read_trials, write_scores

NORMS = ("none", "asnorm")
CALIBRATIONS = ("none", "qmf")
SCORING_FILE = "scoring.npz"  # optional, beside a model: training mean and AS-norm cohort
QMF_FILE = "qmf.json"  # optional, beside a model: QMF calibration


def model_id(name_or_path: str | Path) -> str:
    """A cheap fingerprint of a model for the embedding cache, without loading it.

    A model directory: its config text and the size and time of its weight files
    (safetensors, or a pickle); a single file (an export or a checkpoint): its path, size
    and time; anything else (a built-in name, a hub id): the name itself.
    """
    path = Path(name_or_path)
    if path.is_dir():
        digest = hashlib.sha256(
            (path / CONFIG_FILE).read_bytes() if (path / CONFIG_FILE).is_file() else b""
        )
        weights = [path / name for name in (WEIGHTS_FILE, *PICKLE_WEIGHT_FILES)]
    elif path.is_file():
        digest = hashlib.sha256(str(path.resolve()).encode())
        weights = [path]
    else:
        return str(name_or_path)
    for weight in weights:
        if weight.is_file():
            stat = weight.stat()
            digest.update(f"{weight.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


class LazyModel:
    """Loads the model on first use, so that fully cached runs never load it."""

    def __init__(
        self, name_or_path: str | Path, *, device: str = "cpu", trust_pickle: bool = False
    ) -> None:
        self.name_or_path, self.device, self.trust_pickle = name_or_path, device, trust_pickle
        self._model = None

    def get(self):
        if self._model is None:
            from lapsv.loading import load_model

            self._model = load_model(
                self.name_or_path, device=self.device, trust_pickle=self.trust_pickle
            )
        return self._model


def cached_embeddings(
    model: LazyModel,
    items: Sequence[tuple[str, str | Path]],
    cache: Path,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[EmbeddingSet, int]:
    """Embeddings of ``items``, reusing ``cache`` (an .npz) when it holds them.

    Returns the set (in cache order) and how many utterances were newly embedded.
    """
    identity = model_id(model.name_or_path)
    known = EmbeddingSet([], np.zeros((0, 0), np.float32), np.zeros(0, np.float32))
    if cache.is_file():
        stored, stored_id = EmbeddingSet.load(cache)
        if stored_id == identity:
            known = stored
    have = set(known.ids)
    missing = [(utt, path) for utt, path in items if utt not in have]
    if not missing:
        return known, 0
    new = extract_embeddings(
        model.get(), missing, batch_size=batch_size, device=model.device, progress=progress
    )
    if known.ids:
        merged = EmbeddingSet(
            known.ids + new.ids,
            np.concatenate([known.embeddings, new.embeddings]),
            np.concatenate([known.seconds, new.seconds]),
            new.failures,
        )
    else:
        merged = new
    merged.save(cache, model_id=identity)
    return merged, len(new.ids)


@dataclasses.dataclass
class EvaluationResult:
    """What :func:`evaluate` measured and wrote."""

    metrics: dict[str, Any]
    trials: Trials
    scores: np.ndarray
    out_dir: Path
    newly_embedded: int
    skipped_trials: int
    failures: list[tuple[str, str]]
    files: dict[str, Path]


def evaluate(
    model: str | Path,
    trials: str | Path,
    audio_root: str | Path,
    *,
    out: str | Path,
    cohort: str | Path | None = None,
    norm: str = "none",
    calibrate: str = "none",
    top_n: int = 600,
    calibration_pairs: int = 30_000,
    batch_size: int = 16,
    device: str = "cpu",
    save_calibration: bool = True,
    progress: bool = False,
    title: str | None = None,
    trust_pickle: bool = False,
) -> EvaluationResult:
    """Score a trial list with a model and write results into ``out``.

    Args:
        model: model directory, hub id or built-in name.
        trials: VoxCeleb, Kaldi or CSV trial list; ids are paths under ``audio_root``.
        cohort: manifest of TRAINING utterances: their mean embedding is subtracted before
            cosine scoring, their per-speaker means form the AS-norm cohort, and pairs of
            them train the QMF calibration. Without it, scores are raw cosines.
        norm: ``"none"`` or ``"asnorm"`` (top ``top_n`` cohort scores per side).
        calibrate: ``"none"`` or ``"qmf"``: scores become calibrated log-likelihood ratios
            (decision threshold 0 at p_target 0.5); with ``save_calibration`` the mean,
            cohort and calibration are also written beside the model for ``lapsv verify``.

    Writes ``scores.txt``, ``metrics.json``, ``det.png``, ``scores_hist.png`` and the
    embedding caches ``embeddings.npz`` / ``cohort_embeddings.npz``: a second run with the
    same model reuses them without running the model.
    """
    _check_options(norm, calibrate, has_cohort=cohort is not None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trial_list = read_trials(trials)
    lazy = LazyModel(model, device=device, trust_pickle=trust_pickle)
    audio_root = Path(audio_root)
    utterances = sorted(set(trial_list.enroll) | set(trial_list.test))
    test_set, new_count = cached_embeddings(
        lazy,
        [(u, audio_root / u) for u in utterances],
        out / "embeddings.npz",
        batch_size=batch_size,
        progress=progress,
    )
    if not test_set.ids and test_set.failures:
        utt, reason = test_set.failures[0]
        raise ScoringError(
            f"none of the {len(utterances)} audio files of {trials} could be embedded "
            f"(e.g. {audio_root / utt}: {reason}); are the trial list's paths relative to "
            f"--audio_root {audio_root}?"
        )
    cohort_set, cohort_speakers = None, None
    if cohort is not None:
        manifest = read_manifest(cohort)
        cohort_set, cohort_new = cached_embeddings(
            lazy,
            [(u.utt, manifest.audio_path(u)) for u in manifest],
            out / "cohort_embeddings.npz",
            batch_size=batch_size,
            progress=progress,
        )
        new_count += cohort_new
        speaker_of = {u.utt: u.speaker for u in manifest}
        cohort_speakers = [speaker_of[u] for u in cohort_set.ids]
    result = score_trials(
        test_set,
        trial_list,
        out=out,
        cohort_set=cohort_set,
        cohort_speakers=cohort_speakers,
        norm=norm,
        calibrate=calibrate,
        top_n=top_n,
        calibration_pairs=calibration_pairs,
        calibration_dir=Path(model) if save_calibration and Path(model).is_dir() else None,
        title=title or Path(str(model)).name,
    )
    result.metrics.update({"model": str(model), "trials": str(trials)})
    atomic_write_text(result.files["metrics"], json.dumps(result.metrics, indent=1))
    result.newly_embedded = new_count
    return result


def score_trials(
    test_set: EmbeddingSet,
    trial_list: Trials,
    *,
    out: Path,
    cohort_set: EmbeddingSet | None = None,
    cohort_speakers: list[str] | None = None,
    norm: str = "none",
    calibrate: str = "none",
    top_n: int = 600,
    calibration_pairs: int = 30_000,
    calibration_dir: Path | None = None,
    title: str = "system",
) -> EvaluationResult:
    """Score trials from embeddings already computed; see :func:`evaluate`.

    ``cohort_set`` / ``cohort_speakers``: training utterances for mean subtraction, AS-norm
    and QMF; ``calibration_dir``: where to save the scoring state and QMF for verify.
    """
    _check_options(norm, calibrate, has_cohort=cohort_set is not None)
    out.mkdir(parents=True, exist_ok=True)
    index = test_set.index()
    keep = np.array(
        [a in index and b in index for a, b in zip(trial_list.enroll, trial_list.test, strict=True)]
    )
    if not keep.any():
        failed = f"; {len(test_set.failures)} files failed, e.g. {test_set.failures[0]}"
        raise ScoringError(
            f"none of the {len(keep)} trials has both sides embedded"
            + (failed if test_set.failures else ": their ids are not in the embedding set")
        )
    kept = _subset(trial_list, keep)
    pairs_e = np.array([index[u] for u in kept.enroll], dtype=np.int64)
    pairs_t = np.array([index[u] for u in kept.test], dtype=np.int64)
    vectors = test_set.embeddings

    mean = cohort_vectors = None
    if cohort_set is not None:
        mean = embedding_mean(cohort_set.embeddings)
        cohort_vectors = speaker_cohort(cohort_set.embeddings, cohort_speakers, mean=mean)

    scores = cosine_scores(vectors, vectors, pairs_e, pairs_t, mean=mean)
    normalised = None
    if cohort_vectors is not None and (norm == "asnorm" or calibrate == "qmf"):
        top = min(top_n, len(cohort_vectors))
        normalised = as_norm(
            scores, vectors, vectors, pairs_e, pairs_t, cohort_vectors, top_n=top, mean=mean
        )
        if norm == "asnorm":
            scores = normalised
    files: dict[str, Path] = {}
    calibrated = calibrate == "qmf"
    if calibrated:
        calibrator = _fit_qmf(
            cohort_set, cohort_speakers, cohort_vectors, mean, top_n, calibration_pairs
        )
        features = quality_features(
            normalised,
            vectors,
            vectors,
            test_set.seconds,
            test_set.seconds,
            pairs_e=pairs_e,
            pairs_t=pairs_t,
        )
        scores = calibrator.llr(features)
        files["qmf"] = calibrator.save(out / QMF_FILE)
        if calibration_dir is not None:
            top = min(top_n, len(cohort_vectors))
            save_scoring_state(calibration_dir, mean, cohort_vectors, top)
            files["model_qmf"] = calibrator.save(calibration_dir / QMF_FILE)

    files["scores"] = write_scores(out / "scores.txt", kept, scores)
    metrics: dict[str, Any] = {}
    if kept.labels is not None:
        metrics = compute_metrics(scores, kept.labels, calibrated=calibrated)
        name = title
        files["det"] = plot_det(scores, kept.labels, out / "det.png", name=name, title=name)
        files["histogram"] = plot_score_histogram(
            scores,
            kept.labels,
            out / "scores_hist.png",
            threshold=0.0 if calibrated else None,
            title=name,
        )
    metrics.update(
        {
            "norm": norm,
            "calibrate": calibrate,
            "mean_subtraction": mean is not None,
            "n_trials_skipped": int((~keep).sum()),
        }
    )
    files["metrics"] = out / "metrics.json"
    atomic_write_text(files["metrics"], json.dumps(metrics, indent=1))
    return EvaluationResult(
        metrics, kept, scores, out, 0, int((~keep).sum()), test_set.failures, files
    )


def _check_options(norm: str, calibrate: str, *, has_cohort: bool) -> None:
    if norm not in NORMS:
        raise ConfigError(f"norm must be one of {NORMS}, not {norm!r}")
    if calibrate not in CALIBRATIONS:
        raise ConfigError(f"calibrate must be one of {CALIBRATIONS}, not {calibrate!r}")
    if (norm == "asnorm" or calibrate == "qmf") and not has_cohort:
        raise ConfigError(f"norm={norm} / calibrate={calibrate} need a cohort manifest")


def _subset(trials: Trials, keep: np.ndarray) -> Trials:
    labels = None if trials.labels is None else np.asarray(trials.labels)[keep]
    enroll = tuple(u for u, k in zip(trials.enroll, keep, strict=True) if k)
    test = tuple(u for u, k in zip(trials.test, keep, strict=True) if k)
    return Trials(enroll, test, labels)


def _fit_qmf(
    cohort_set: EmbeddingSet,
    speakers: list[str],
    cohort_vectors: np.ndarray,
    mean: np.ndarray,
    top_n: int,
    n_pairs: int,
) -> QMFCalibrator:
    """Fit QMF on pairs of training (cohort) utterances, scored like the trials."""
    idx_a, idx_b, labels = sample_calibration_pairs(speakers, n_pairs=n_pairs, seed=0)
    vectors = cohort_set.embeddings
    raw = cosine_scores(vectors, vectors, idx_a, idx_b, mean=mean)
    top = min(top_n, len(cohort_vectors))
    normalised = as_norm(raw, vectors, vectors, idx_a, idx_b, cohort_vectors, top_n=top, mean=mean)
    features = quality_features(
        normalised,
        vectors,
        vectors,
        cohort_set.seconds,
        cohort_set.seconds,
        pairs_e=idx_a,
        pairs_t=idx_b,
    )
    return QMFCalibrator().fit(features, labels)


def save_scoring_state(model_dir: Path, mean: np.ndarray, cohort: np.ndarray, top_n: int) -> Path:
    """Store the training mean and AS-norm cohort beside a model (for verify / identify)."""
    from lapsv.files import atomic_path

    path = model_dir / SCORING_FILE
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.savez(handle, mean=mean, cohort=cohort, top_n=np.array(top_n))
    return path


def format_metrics(rows: dict[str, dict[str, Any]]) -> str:
    """A plain-text table: one row per system (EER %, minDCF 0.01 and 0.05, Cllr)."""
    header = f"{'system':<34} {'EER %':>7} {'minDCF.01':>10} {'minDCF.05':>10} {'Cllr':>6}"
    lines = [header, "-" * len(header)]
    for name, m in rows.items():
        cllr = f"{m['cllr']:.3f}" if "cllr" in m else "-"
        lines.append(
            f"{name:<34} {m['eer']:>7.2f} {m['min_dcf_0.01']:>10.3f} "
            f"{m['min_dcf_0.05']:>10.3f} {cllr:>6}"
        )
    return "\n".join(lines)
