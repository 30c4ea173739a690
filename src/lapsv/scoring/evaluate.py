"""Evaluate a model on a trial list: cached embeddings, cosine / AS-norm scores, QMF
calibration, EER and minDCF, a score file, a DET curve and a score histogram.

Every score comes from :func:`~lapsv.scoring.state.score_pairs`, the path ``verify`` and
``identify`` use. Results, including the fitted scoring state, go into the output folder;
the model directory is written only with ``save_scoring``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lapsv.data.manifest import Manifest, read_manifest
from lapsv.distributed import current_processes, extract_sharded
from lapsv.embeddings import EmbeddingSet
from lapsv.errors import ConfigError, ScoringError
from lapsv.files import atomic_write_text
from lapsv.scoring.metrics import compute_metrics
from lapsv.scoring.norm import embedding_mean, enroll_models
from lapsv.scoring.plots import plot_det, plot_score_histogram
from lapsv.scoring.state import ScoringState, fit_scoring_state, score_pairs
from lapsv.scoring.trials import Trials, read_enrollment_map, read_trials, write_scores
from lapsv.speaker import Speaker, load_model

NORMS = ("none", "asnorm")
CALIBRATIONS = ("none", "qmf")


def cached_embeddings(
    model: Speaker,
    items: Sequence[tuple[str, str | Path]],
    cache: Path,
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> tuple[EmbeddingSet | None, int]:
    """Embeddings of ``items``, reusing ``cache`` (an .npz) when it holds them.

    The cache is keyed by :attr:`~lapsv.speaker.Speaker.model_id` (the content hash of the
    weights): another model, or changed weights, start it afresh. Returns the set (in
    cache order) and how many utterances were newly embedded. The missing ones are
    embedded by :func:`~lapsv.distributed.extract_sharded`: shared by the processes of an
    ``accelerate launch`` job, in chunk parts that a rerun of a killed job reuses; the
    other processes of such a job get ``(None, 0)`` (the main one writes the cache).
    """
    processes = current_processes(model.device)
    known = EmbeddingSet.empty()
    if cache.is_file():
        stored, stored_id = EmbeddingSet.load(cache)
        if stored_id == model.model_id:
            known = stored
    have = set(known.ids)
    missing = [(utt, path) for utt, path in items if utt not in have]
    if not missing:
        return (known, 0) if processes.is_main else (None, 0)
    extraction = extract_sharded(
        model,
        missing,
        cache,
        model_id=model.model_id,
        batch_size=batch_size,
        device=model.device,
        progress=progress,
        processes=processes,
    )
    if extraction.embeddings is None:
        return None, 0
    merged = known.merged(extraction.embeddings)
    merged.save(cache, model_id=model.model_id)
    extraction.finish()
    return merged, extraction.newly_embedded


@dataclasses.dataclass
class EvaluationResult:
    """What :func:`evaluate` measured and wrote; ``state``: the scoring state fitted on the
    cohort (mean, AS-norm cohort, QMF when calibrated; empty without a cohort)."""

    metrics: dict[str, Any]
    trials: Trials
    scores: np.ndarray
    out_dir: Path
    newly_embedded: int
    skipped_trials: int
    failures: list[tuple[str, str]]
    files: dict[str, Path]
    state: ScoringState = dataclasses.field(default_factory=ScoringState)


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
    save_scoring: bool = False,
    progress: bool = False,
    title: str | None = None,
    trust_pickle: bool = False,
) -> EvaluationResult | None:
    """Score a trial list with a model and write results into ``out``.

    Args:
        model: model directory, hub id, built-in name or exported file.
        trials: VoxCeleb, Kaldi or CSV trial list; ids are paths under ``audio_root``.
        cohort: manifest of TRAINING utterances: their mean embedding is subtracted before
            cosine scoring, their per-speaker means form the AS-norm cohort, and pairs of
            them train the QMF calibration. Without it, scores are raw cosines.
        norm: ``"none"`` or ``"asnorm"`` (top ``top_n`` cohort scores per side).
        calibrate: ``"none"`` or ``"qmf"``: scores become calibrated log-likelihood ratios
            (decision threshold 0 at p_target 0.5).
        save_scoring: also attach the scoring state (``scoring.npz``, ``qmf.json``) to the
            model directory, for ``lapsv verify`` / ``identify``. Without it the model
            directory is never written to.

    Writes ``scores.txt``, ``metrics.json``, ``det.png``, ``scores_hist.png``, the scoring
    state (with a cohort: ``scoring.npz``, and ``qmf.json`` when calibrated) and the
    embedding caches ``embeddings.npz`` / ``cohort_embeddings.npz``: a second run with the
    same model reuses them without embedding again. Under ``accelerate launch`` every
    process embeds its share (:func:`cached_embeddings`); the main one scores and writes,
    and the others return None.
    """
    _check_options(norm, calibrate, has_cohort=cohort is not None)
    if save_scoring and not (cohort is not None and Path(model).is_dir()):
        raise ConfigError(
            "save_scoring (--save-scoring) needs a cohort manifest (--cohort) and a model "
            f"directory to attach the scoring state to; {model} is not one"
            if cohort is not None
            else "save_scoring (--save-scoring) needs a cohort manifest (--cohort)"
        )
    out = Path(out)
    trial_list = read_trials(trials)  # the inputs are read before anything is written
    manifest = None if cohort is None else read_manifest(cohort)
    speaker = load_model(model, device=device, trust_pickle=trust_pickle)
    out.mkdir(parents=True, exist_ok=True)
    embed = {"batch_size": batch_size, "progress": progress}
    test_set, new_count = _embed_trials(speaker, trial_list, trials, Path(audio_root), out, embed)
    cohort_set, cohort_speakers, cohort_new = _embed_cohort(speaker, manifest, out, embed)
    if test_set is None:  # another process of an accelerate launch job: it helped embed
        return None
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
        title=title or Path(str(model)).name,
        context={"model": str(model), "trials": str(trials)},
    )
    if save_scoring:
        saved = result.state.save(model)
        result.files.update({f"model_{kind}": path for kind, path in saved.items()})
    result.newly_embedded = new_count + cohort_new
    return result


def _embed_trials(
    speaker: Speaker,
    trial_list: Trials,
    trials: str | Path,
    audio_root: Path,
    out: Path,
    embed: dict[str, Any],
) -> tuple[EmbeddingSet | None, int]:
    """The trials' utterances, embedded (or read from the cache); an error when none is;
    None on the other processes of a distributed job."""
    utterances = sorted(set(trial_list.enroll) | set(trial_list.test))
    items = [(u, audio_root / u) for u in utterances]
    test_set, new_count = cached_embeddings(speaker, items, out / "embeddings.npz", **embed)
    if test_set is not None and not test_set.ids and test_set.failures:
        utt, reason = test_set.failures[0]
        raise ScoringError(
            f"none of the {len(utterances)} audio files of {trials} could be embedded "
            f"(e.g. {audio_root / utt}: {reason}); are the trial list's paths relative to "
            f"--audio_root {audio_root}?"
        )
    return test_set, new_count


def _embed_cohort(
    speaker: Speaker, manifest: Manifest | None, out: Path, embed: dict[str, Any]
) -> tuple[EmbeddingSet | None, list[str] | None, int]:
    """The cohort's embeddings (or the cache's), their speakers and how many were newly
    embedded; (None, None, 0) without a cohort or on the other processes of a job."""
    if manifest is None:
        return None, None, 0
    items = [(u.utt, manifest.audio_path(u)) for u in manifest]
    cohort_set, new_count = cached_embeddings(
        speaker, items, out / "cohort_embeddings.npz", **embed
    )
    if cohort_set is None:
        return None, None, 0
    speaker_of = {u.utt: u.speaker for u in manifest}
    return cohort_set, [speaker_of[u] for u in cohort_set.ids], new_count


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
    title: str = "system",
    context: dict[str, Any] | None = None,
) -> EvaluationResult:
    """Score trials from embeddings already computed (through
    :func:`~lapsv.scoring.state.score_pairs`) and write results into ``out``; see
    :func:`evaluate`. ``cohort_set`` / ``cohort_speakers``: training utterances for mean
    subtraction, AS-norm and QMF; the fitted state is in the result and in ``out``.
    ``context``: more entries of ``metrics.json`` (what was evaluated)."""
    _check_options(norm, calibrate, has_cohort=cohort_set is not None)
    out.mkdir(parents=True, exist_ok=True)
    keep, pairs_e, pairs_t = test_set.trial_rows(trial_list.enroll, trial_list.test)
    if not keep.any():
        failed = f"; {len(test_set.failures)} files failed, e.g. {test_set.failures[0]}"
        raise ScoringError(
            f"none of the {len(keep)} trials has both sides embedded"
            + (failed if test_set.failures else ": their ids are not in the embedding set")
        )
    kept = _subset(trial_list, keep)
    fitted, files = ScoringState(), {}
    if cohort_set is not None:
        fitted = fit_scoring_state(
            cohort_set.embeddings,
            cohort_set.seconds,
            cohort_speakers,
            top_n=top_n,
            calibrate=calibrate == "qmf",
            calibration_pairs=calibration_pairs,
        )
        files.update(fitted.save(out))
    normalised = norm == "asnorm" or calibrate == "qmf"
    state = fitted if normalised else ScoringState(mean=fitted.mean)  # mean subtraction only
    vectors, seconds = test_set.embeddings, test_set.seconds
    scored = score_pairs(
        state, vectors, vectors, pairs_e, pairs_t, enroll_seconds=seconds, test_seconds=seconds
    )
    scores = scored.llr if calibrate == "qmf" else scored.asnorm if norm == "asnorm" else None
    scores = scored.cosine if scores is None else scores
    metrics = _write_results(scores, kept, out, files, calibrated=calibrate == "qmf", title=title)
    metrics.update(
        {
            "norm": norm,
            "calibrate": calibrate,
            "mean_subtraction": state.mean is not None,
            "n_trials_skipped": int((~keep).sum()),
            **(context or {}),
        }
    )
    atomic_write_text(files["metrics"], json.dumps(metrics, indent=1))
    skipped = int((~keep).sum())
    return EvaluationResult(metrics, kept, scores, out, 0, skipped, test_set.failures, files, state)


def _write_results(
    scores: np.ndarray,
    trials: Trials,
    out: Path,
    files: dict[str, Path],
    *,
    calibrated: bool,
    title: str,
) -> dict[str, Any]:
    """Write the score file (and with labels: DET and histogram); returns the metrics."""
    files["scores"] = write_scores(out / "scores.txt", trials, scores)
    files["metrics"] = out / "metrics.json"
    if trials.labels is None:
        return {}
    files["det"] = plot_det(scores, trials.labels, out / "det.png", name=title, title=title)
    files["histogram"] = plot_score_histogram(
        scores,
        trials.labels,
        out / "scores_hist.png",
        threshold=0.0 if calibrated else None,
        title=title,
    )
    return compute_metrics(scores, trials.labels, calibrated=calibrated)


def score_embeddings(
    embeddings: EmbeddingSet,
    trials: Trials,
    *,
    enrollment: str | Path | None = None,
    mean_from: EmbeddingSet | None = None,
) -> np.ndarray:
    """(n,) cosine scores of ``trials`` from stored embeddings (``lapsv score``).

    ``enrollment``: a Kaldi spk2utt file whose models (averaged utterances,
    :func:`~lapsv.scoring.norm.enroll_models`) are the trials' enrolment side;
    ``mean_from``: embeddings whose mean is subtracted first.
    """
    enroll = embeddings
    if enrollment is not None:
        ids, vectors = enroll_models(
            embeddings.ids, embeddings.embeddings, read_enrollment_map(enrollment)
        )
        enroll = EmbeddingSet(list(ids), vectors, np.zeros(len(ids)))
    mean = None if mean_from is None else embedding_mean(mean_from.embeddings)
    scored = score_pairs(
        ScoringState(mean=mean),
        enroll.embeddings,
        embeddings.embeddings,
        enroll.rows(trials.enroll),
        embeddings.rows(trials.test),
        enroll_seconds=enroll.seconds,
        test_seconds=embeddings.seconds,
    )
    return scored.cosine


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
