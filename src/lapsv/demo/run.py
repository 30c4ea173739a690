"""`lapsv demo`: the whole method end to end on real speech, offline, on 2 CPU cores.

1. build the demo corpus (voices from Debian packages) and MUSAN/RIR-style noise folders;
2. for each frozen frontend (GE2E, Whisper-base): a training-free profile of its layers on
   the validation speakers, then stage 1: LAP + ASTP with SUPERB + ASTP, last layer + ASTP
   (and, on Whisper, the profile's best single layer + ASTP) trained in the same run on the
   same batches;
3. stage 2 (joint fine-tuning of the frontend) for each side the time budget allows;
4. with ``seeds`` > 1, stage 1 again with other seeds;
5. evaluate every system of every seed on unseen test speakers, with and without mean
   subtraction, plus AS-norm + QMF for LAP + ASTP and the side's built-in embedding;
6. diarize simulated conversations of the test speakers with each side's LAP + ASTP and
   GE2E's own embedding (:mod:`lapsv.demo.diarization`);
7. write report.md with the tables, paired seed differences, DET, profile and LAP plots.

Every step is skipped when its output exists, so the demo is re-runnable.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lapsv.audio import load_audio
from lapsv.data.manifest import read_manifest, write_manifest
from lapsv.demo import corpus as demo_corpus
from lapsv.demo import noise as demo_noise
from lapsv.demo.corpus_summary import CorpusSummary
from lapsv.demo.diarization import System, build_demo_conversations, evaluate_diarization
from lapsv.demo.evaluation import evaluate_side
from lapsv.demo.profile import LayerProfile, layer_profile, plot_profile
from lapsv.demo.report import SideReport, write_report
from lapsv.demo.sides import SIDES, Side
from lapsv.errors import ConfigError
from lapsv.files import atomic_write_text
from lapsv.inference import extract_embeddings
from lapsv.inspection import dominant_layers, layer_view, plot_layer_weights, winner_statistics
from lapsv.scoring.norm import embedding_mean
from lapsv.scoring.plots import plot_det
from lapsv.scoring.state import ScoringState
from lapsv.speaker import Speaker, load_model
from lapsv.training import TrainConfig, load_recipe, train

STAGE2_EPOCHS = 2
ONE_SCALE: dict[str, Any] = {"long_windows": ()}  # diarization without the longer windows


@dataclasses.dataclass
class DemoResult:
    """report: report.md; results: side -> label -> test metrics of seed 0; seconds: run time."""

    report: Path
    results: dict[str, dict[str, dict[str, Any]]]
    seconds: float


def run_demo(
    out: str | Path = "lapsv-demo",
    *,
    frontends: Sequence[str] = tuple(SIDES),
    budget_minutes: float = 20.0,
    seeds: int = 1,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo into ``out`` (module docstring); returns the report and the metrics.

    Args:
        frontends: which sides to run (``ge2e``, ``whisper-base``).
        budget_minutes: decides whether stage 2 runs (the rest always runs).
        seeds: stage 1 is trained with seeds 0 .. seeds-1 (the extra ones after stage 2,
            outside the budget) and the report gives every system's spread over them.
        overrides: ``key.sub=value`` changes to every side's stage-1 recipe.
    """
    if seeds < 1:
        raise ConfigError(f"seeds must be at least 1, got {seeds}")
    unknown = sorted(set(frontends) - set(SIDES))
    if unknown or not frontends:
        raise ConfigError(
            f"unknown demo frontend {unknown or frontends}; choose from {list(SIDES)}"
        )
    started = time.perf_counter()
    out = Path(out).resolve()
    corpus = out / "corpus"
    summary = _prepare_data(out, log)
    paths = [
        f"data.train_manifest={corpus / 'train.tsv'}",
        f"data.val_manifest={corpus / 'val.tsv'}",
        f"data.val_trials={corpus / 'trials' / 'val.txt'}",
        f"data.musan={out / 'noise' / 'musan'}",
        f"data.rirs={out / 'noise' / 'rirs'}",
    ]
    sides = [SIDES[name] for name in frontends]
    runs: dict[str, _SideRun] = {}
    for number, side in enumerate(sides, 1):
        log(f"[3/7] side {number} of {len(sides)}: {side.title}")
        runs[side.name] = _stage1(side, corpus, out, [*paths, *overrides], log)
    evaluation = sum(side.evaluation_minutes for side in sides)
    for side in sides:
        left = budget_minutes - (time.perf_counter() - started) / 60 - evaluation
        _stage2(side, runs[side.name], left, log)
    for extra in range(1, seeds):
        for side in sides:
            run = runs[side.name]
            seeded = dataclasses.replace(run.config, seed=run.config.seed + extra)
            log(
                f"      {side.name}: stage 1 again with seed {seeded.seed} "
                f"(run {extra + 1} of {seeds})"
            )
            run.models[seeded.seed] = train(seeded, run.directory / f"stage1-seed{seeded.seed}")
    parts = [_evaluate(side, runs[side.name], corpus, log) for side in sides]
    log("[6/7] diarization of simulated conversations of the test speakers")
    diarization = evaluate_diarization(
        _diarization_systems(sides, runs, corpus),
        build_demo_conversations(out / "conversations", corpus, out / "noise", log),
        out / "diarization",
        log,
    )
    log("[7/7] plots and report")
    plot_profile({p.side.name: (p.profile, p.side.layer_names) for p in parts}, out / "profile.png")
    seconds = time.perf_counter() - started
    report = write_report(
        out, summary, parts, seconds=seconds, budget=budget_minutes, diarization=diarization
    )
    _write_results(out / "results.json", parts, diarization)
    log(f"report: {report}  ({seconds / 60:.1f} min)")
    return DemoResult(report, {p.side.name: p.results.table for p in parts}, seconds)


def _write_results(path: Path, parts: list[SideReport], diarization: dict[str, Any]) -> None:
    """results.json: each side's test table, EER by seed and profile; the diarization rows."""
    results: dict[str, Any] = {
        p.side.name: {
            "table": p.results.table,
            "EER % by seed": p.results.seeds,
            "profile EER % per layer": list(p.profile.eers),
        }
        for p in parts
    }
    results["diarization"] = {
        label: {speech: row["scores"] for speech, row in entry["test"].items()}
        for label, entry in diarization["systems"].items()
    }
    atomic_write_text(path, json.dumps(results, indent=1))


def _prepare_data(out: Path, log: Callable[[str], None]) -> CorpusSummary:
    """The corpus (with a cohort list) and the noise folders under ``out``."""
    corpus = out / "corpus"
    log("[1/7] demo corpus (real voices from Debian packages)")
    summary = demo_corpus.build_demo_corpus(corpus, cache=out / "cache", progress=log)
    log(summary.format_table())
    if not (corpus / "cohort.tsv").exists():  # for mean subtraction, AS-norm and QMF
        train_set = read_manifest(corpus / "train.tsv")
        write_manifest(
            corpus / "cohort.tsv", train_set.sample_per_speaker(15).utterances, root=train_set.root
        )
    log("[2/7] noise, music, babble and simulated room impulse responses")
    demo_noise.build_demo_noise(
        out / "noise", speech_manifest=corpus / "train.tsv", cache=out / "cache"
    )
    return summary


@dataclasses.dataclass
class _SideRun:
    config: TrainConfig
    directory: Path
    profile: LayerProfile
    labels: dict[str, str]
    models: dict[int, dict[str, Path]]
    stage2: Path | None = None


def _stage1(
    side: Side, corpus: Path, out: Path, overrides: list[str], log: Callable[[str], None]
) -> _SideRun:
    """The side's layer profile, then stage 1 with seed 0 (or the recipe's seed)."""
    directory = side.directory(out)
    recipe = load_recipe(side.recipe_path(), overrides)
    log("      training-free layer profile on the validation speakers")
    profile = layer_profile(
        recipe.model.frontend,
        val_manifest=corpus / "val.tsv",
        val_trials=corpus / "trials" / "val.txt",
        train_manifest=corpus / "train.tsv",
        out=directory / "profile",
    )
    if "layer_astp" in side.systems:  # the best single layer, chosen on validation speakers
        best = [
            "compare.layer_astp.aggregation=layer",
            f"compare.layer_astp.layer_index={profile.best}",
        ]
        recipe = load_recipe(side.recipe_path(), [*overrides, *best])
    labels = side.labels(best_layer=profile.best)
    log(f"      stage 1: {', '.join(labels.values())} on frozen {side.name} layers")
    models = train(recipe, directory / "stage1")
    return _SideRun(recipe, directory, profile, labels, {recipe.seed: models})


def _stage2(side: Side, run: _SideRun, minutes_left: float, log: Callable[[str], None]) -> None:
    """Stage 2 of the side if it fits the minutes left (or was already trained)."""
    stage2_dir = run.directory / "stage2"
    if minutes_left >= side.stage2_minutes or (stage2_dir / "lap_astp" / "model").exists():
        log(f"[4/7] stage 2 on {side.name}: joint fine-tuning of the frontend with LAP + ASTP")
        config = stage2_config(run.config, run.directory / "stage1")
        run.stage2 = train(config, stage2_dir)["lap_astp"]
    else:
        left = (
            f"{minutes_left:.1f} min of the time budget are left"
            if minutes_left >= 0
            else f"the time budget is spent ({-minutes_left:.1f} min over)"
        )
        log(
            f"[4/7] stage 2 on {side.name} skipped: {left} after reserving the evaluation, "
            f"and it needs {side.stage2_minutes:.0f} min; a larger --budget_minutes runs it"
        )


def _evaluate(side: Side, run: _SideRun, corpus: Path, log: Callable[[str], None]) -> SideReport:
    """Test metrics, DET curves and LAP's layer statistics of one side."""
    log(f"[5/7] evaluation of {side.name} on unseen test speakers")
    results = evaluate_side(
        side, run.models, run.labels, corpus, run.directory / "eval", stage2=run.stage2, log=log
    )
    title = f"{side.name}, test speakers"
    plot_det(None, None, run.directory / "det.png", systems=results.det, title=title)
    layers = _lap_layers(run.models[run.config.seed]["lap_astp"], corpus, run.directory, side)
    return SideReport(side, run.labels, results, run.config, run.profile, layers, STAGE2_EPOCHS)


def _diarization_systems(
    sides: list[Side], runs: dict[str, _SideRun], corpus: Path
) -> list[System]:
    """Each side's LAP + ASTP (seed 0, calibrated: spectral, with and without the longer
    windows, or AHC at LLR 0; Whisper: also the shared encoder pass) and GE2E's own
    embedding (with the training mean)."""
    systems = []
    for side in sides:
        run = runs[side.name]
        path = run.models[run.config.seed]["lap_astp"]
        choices = {
            "spectral": {},
            "spectral, one scale": ONE_SCALE,
            "AHC at LLR 0": {"clustering": "ahc"},
        }
        if side.name != "ge2e":
            choices = {
                "spectral, window pass": {},
                "spectral, window pass, one scale": ONE_SCALE,
                "spectral, shared pass": {"embedding_pass": "shared"},
                "AHC at LLR 0, shared pass": {"clustering": "ahc", "embedding_pass": "shared"},
            }
        systems.append(
            System(
                f"{side.name}_lap", f"{side.name} LAP + ASTP", lambda p=path: load_model(p), choices
            )
        )
        if side.builtin is not None:
            systems.append(
                System(
                    f"{side.name}_builtin",
                    side.builtin_label,
                    lambda b=side.builtin: _with_training_mean(load_model(b), corpus),
                    {"spectral": {}, "spectral, one scale": ONE_SCALE},
                )
            )
    return systems


def _with_training_mean(model: Speaker, corpus: Path) -> Speaker:
    """``model`` with the mean of its cohort-list embeddings as its training mean."""
    cohort = read_manifest(corpus / "cohort.tsv")
    items = [(u.utt, cohort.audio_path(u)) for u in cohort]
    mean = embedding_mean(extract_embeddings(model, items).embeddings)
    return Speaker(model.encoder, ScoringState(mean=mean))


def stage2_config(stage1: TrainConfig, stage1_dir: Path) -> TrainConfig:
    """Joint fine-tuning of the frontend from stage 1's LAP + ASTP (METHOD.md §5, sized for
    the demo): no speed-perturbation classes, full margin, a small learning rate."""
    frontend = dataclasses.replace(stage1.model.frontend, freeze=False)
    return dataclasses.replace(
        stage1,
        stage=2,
        compare={},
        init_from=str(stage1_dir),
        model=dataclasses.replace(stage1.model, frontend=frontend),
        data=dataclasses.replace(stage1.data, speed_perturb=False, cached_views=0),
        optim=dataclasses.replace(
            stage1.optim, epochs=STAGE2_EPOCHS, lr=1e-4, final_lr=1e-5, warmup_fraction=0.0
        ),
        loss=dataclasses.replace(
            stage1.loss, initial_margin=stage1.loss.margin, margin_ramp_epochs=0
        ),
    )


def _lap_layers(model_dir: Path, corpus: Path, out: Path, side: Side) -> dict[str, Any]:
    """LAP's layer scores on one test utterance (plot) and averaged over 12 test utterances."""
    model = load_model(model_dir).encoder
    manifest = read_manifest(corpus / "test.tsv")
    utterances = sorted(manifest, key=lambda u: -u.seconds)[:: max(len(manifest) // 12, 1)][:12]
    views = [layer_view(model, load_audio(manifest.audio_path(u))) for u in utterances]
    weights = [view.weights for view in views]
    winners = [view.winners for view in views]
    plot_layer_weights(
        weights[0],
        out / "layers.png",
        title=f"LAP layer scores on {side.name}, {utterances[0].utt}",
        frames_per_second=views[0].frames_per_second,
    )
    per_layer = np.concatenate([w.mean(axis=0) for w in weights]).mean(axis=0)
    spread = float(np.mean([w.std(axis=1).mean() for w in weights]))
    return {
        "mean_score_per_layer": [round(float(v), 3) for v in per_layer],
        "dominant_layers": dominant_layers(weights),
        "mean_std_over_time": round(spread, 4),
        "utterances": len(weights),
        "frames": int(sum(len(w) for w in winners)),
        "winners": winner_statistics(winners, n_layers=weights[0].shape[-1]),
    }
