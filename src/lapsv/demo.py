"""`lapsv demo`: the whole method end to end on real speech, offline, on 2 CPU cores.

1. build the demo corpus (voices from Debian packages) and MUSAN/RIR-style noise folders;
2. stage 1 on the frozen GE2E frontend: LAP + ASTP, with SUPERB + ASTP and last-layer +
   ASTP trained in the same run on the same batches;
3. optionally stage 2 (joint fine-tuning of the GE2E layers) when the time budget allows;
4. evaluate every system and GE2E's own embedding on unseen test speakers, with and
   without mean subtraction, plus AS-norm + QMF for LAP + ASTP;
5. write report.md with the tables, a DET plot and LAP's layer-score plot.

Every step is skipped when its output exists, so the demo is re-runnable.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lapsv.audio import load_audio
from lapsv.config import FrontendConfig
from lapsv.data.manifest import read_manifest, write_manifest
from lapsv.errors import ConfigError
from lapsv.evaluate import format_metrics, score_trials
from lapsv.files import atomic_write_text
from lapsv.inference import extract_embeddings
from lapsv.scoring.trials import read_trials
from lapsv.training import TrainConfig, load_recipe, train

STAGE2_MINUTES = 5.0  # measured: about 2 min per epoch of joint fine-tuning on 2 cores
EVALUATION_MINUTES = 1.5
SYSTEMS = {
    "lap_astp": "LAP + ASTP",
    "superb_astp": "SUPERB + ASTP",
    "last_astp": "last layer + ASTP",
}


def demo_recipe() -> Path:
    """The packaged recipe of the demo's stage 1."""
    return Path(str(importlib.resources.files("lapsv") / "recipes" / "demo.yaml"))


@dataclasses.dataclass
class DemoResult:
    report: Path
    results: dict[str, dict[str, Any]]
    seconds: float


def run_demo(
    out: str | Path = "lapsv-demo",
    *,
    budget_minutes: float = 20.0,
    seeds: int = 1,
    overrides: list[str] | tuple[str, ...] = (),
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo into ``out``; returns the report path and the measured metrics.

    ``seeds`` > 1 trains stage 1 again with seeds 1 .. seeds-1 (after the main run, outside
    the time budget) and reports the spread of every system's EER over the seeds: on a
    corpus this small the seed moves the ranking of the systems.
    """
    from lapsv.data.demo_corpus import build_demo_corpus
    from lapsv.data.demo_noise import build_demo_noise

    if seeds < 1:
        raise ConfigError(f"seeds must be at least 1, got {seeds}")
    started = time.perf_counter()
    out = Path(out).resolve()
    cache = out / "cache"
    log("[1/5] demo corpus (real voices from Debian packages)")
    summary = build_demo_corpus(out / "corpus", cache=cache, progress=log)
    log(summary.format_table())
    corpus = out / "corpus"
    cohort = corpus / "cohort.tsv"
    if not cohort.exists():  # training utterances for mean subtraction, AS-norm and QMF
        train_set = read_manifest(corpus / "train.tsv")
        write_manifest(cohort, train_set.sample_per_speaker(15).utterances, root=train_set.root)
    log("[2/5] noise, music, babble and simulated room impulse responses")
    build_demo_noise(out / "noise", speech_manifest=corpus / "train.tsv", cache=cache)

    log("[3/5] stage 1: LAP + ASTP, SUPERB + ASTP, last layer + ASTP on frozen GE2E layers")
    paths = [
        f"data.train_manifest={corpus / 'train.tsv'}",
        f"data.val_manifest={corpus / 'val.tsv'}",
        f"data.val_trials={corpus / 'trials' / 'val.txt'}",
        f"data.musan={out / 'noise' / 'musan'}",
        f"data.rirs={out / 'noise' / 'rirs'}",
    ]
    config = load_recipe(demo_recipe(), [*paths, *overrides])
    models = train(config, out / "stage1")
    stage1_minutes = (time.perf_counter() - started) / 60
    log(f"      stage 1 done after {stage1_minutes:.1f} min in all")
    stage2 = None
    left = budget_minutes - stage1_minutes - EVALUATION_MINUTES
    if left >= STAGE2_MINUTES or (out / "stage2" / "lap_astp" / "model").exists():
        log("      stage 2: joint fine-tuning of the GE2E layers with LAP + ASTP")
        stage2 = train(stage2_config(config, out / "stage1"), out / "stage2")["lap_astp"]
    else:
        log(f"      stage 2 skipped: {left:.1f} min left of the budget, it needs {STAGE2_MINUTES}")

    log("[4/5] evaluation on unseen test speakers")
    results, det_systems = evaluate_systems(models, corpus, out / "eval", stage2=stage2, log=log)
    log(format_metrics(results))

    seed_results = {config.seed: _mean_subtracted_eers(results)}
    for extra in range(1, seeds):
        seeded = dataclasses.replace(config, seed=config.seed + extra)
        log(f"      stage 1 again with seed {seeded.seed} (run {extra + 1} of {seeds})")
        seed_models = train(seeded, out / f"stage1-seed{seeded.seed}")
        seed_eval, _ = evaluate_systems(
            seed_models, corpus, out / f"eval-seed{seeded.seed}", others=False, log=log
        )
        seed_results[seeded.seed] = _mean_subtracted_eers(seed_eval)

    log("[5/5] plots and report")
    from lapsv.scoring.plots import plot_det

    plot_det(None, None, out / "det.png", systems=det_systems, title="demo test speakers")
    layer_summary = _layer_plots(models["lap_astp"], corpus, out)
    seconds = time.perf_counter() - started
    report = _write_report(
        out, summary, config, results, layer_summary, seconds, budget_minutes, seed_results
    )
    atomic_write_text(
        out / "results.json",
        json.dumps({**results, "stage 1 EER % by seed": seed_results}, indent=1),
    )
    log(f"report: {report}  ({seconds / 60:.1f} min)")
    return DemoResult(report, results, seconds)


def stage2_config(stage1: TrainConfig, stage1_dir: Path) -> TrainConfig:
    """Joint fine-tuning of the GE2E layers from stage 1's LAP + ASTP (METHOD.md §5, sized
    for the demo): no speed-perturbation classes, full margin, a small learning rate."""
    return dataclasses.replace(
        stage1,
        stage=2,
        compare={},
        init_from=str(stage1_dir),
        model=dataclasses.replace(stage1.model, frontend=FrontendConfig(name="ge2e", freeze=False)),
        data=dataclasses.replace(stage1.data, speed_perturb=False, cached_views=0),
        optim=dataclasses.replace(
            stage1.optim, epochs=2, lr=1e-4, final_lr=1e-5, warmup_fraction=0.0
        ),
        loss=dataclasses.replace(
            stage1.loss, initial_margin=stage1.loss.margin, margin_ramp_epochs=0
        ),
    )


def evaluate_systems(
    models: dict[str, Path],
    corpus: Path,
    out: Path,
    *,
    stage2: Path | None = None,
    others: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, dict[str, Any]], dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every system with and without mean subtraction, and LAP + AS-norm + QMF.

    The trained systems share the frozen GE2E frontend, so one pass over the test and
    cohort audio embeds them all; GE2E's own embedding is a separate pass. ``others=False``
    evaluates the trained stage-1 systems only (no GE2E, stage 2 or AS-norm + QMF).
    """
    from lapsv.inference import SharedFrontendModel
    from lapsv.loading import load_model

    trials = read_trials(corpus / "trials" / "test.txt")
    audio = corpus / "audio"
    test_items = [(u, audio / u) for u in sorted(set(trials.enroll) | set(trials.test))]
    cohort_manifest = read_manifest(corpus / "cohort.tsv")
    cohort_items = [(u.utt, cohort_manifest.audio_path(u)) for u in cohort_manifest]
    speaker_of = {u.utt: u.speaker for u in cohort_manifest}

    loaded = {name: load_model(models[name]) for name in SYSTEMS}
    shared = SharedFrontendModel(
        loaded["lap_astp"].frontend, {name: m.backend for name, m in loaded.items()}
    )
    embedded = {
        "test": extract_embeddings(shared, test_items, progress=True),
        "cohort": extract_embeddings(shared, cohort_items, progress=True),
    }
    sets = {
        name: {part: embedded[part].columns(span) for part in embedded}
        for name, span in shared.columns().items()
    }
    separate = {"ge2e": "ge2e", **({"stage2": stage2} if stage2 else {})} if others else {}
    for name, model_path in separate.items():  # models with frontends of their own
        model = load_model(model_path)
        sets[name] = {
            part: extract_embeddings(model, items, progress=True)
            for part, items in (("test", test_items), ("cohort", cohort_items))
        }
    labels = {**SYSTEMS, "ge2e": "GE2E's own embedding", "stage2": "LAP + ASTP, stage 2"}
    results: dict[str, dict[str, Any]] = {}
    det_systems = {}
    for name, parts in sets.items():
        speakers = [speaker_of[u] for u in parts["cohort"].ids]
        for mean_subtraction in (False, True):
            key = labels[name] + (" + mean sub." if mean_subtraction else "")
            result = score_trials(
                parts["test"],
                trials,
                out=out / (name + ("_mean" if mean_subtraction else "")),
                cohort_set=parts["cohort"] if mean_subtraction else None,
                cohort_speakers=speakers if mean_subtraction else None,
                title=key,
            )
            results[key] = result.metrics
            if mean_subtraction:
                det_systems[labels[name]] = (result.scores, result.trials.labels)
        log(f"      {labels[name]}: EER {results[key]['eer']:.2f} %")
    if not others:
        return results, det_systems
    lap = sets["lap_astp"]
    calibrated = score_trials(
        lap["test"],
        trials,
        out=out / "lap_astp_asnorm_qmf",
        cohort_set=lap["cohort"],
        cohort_speakers=[speaker_of[u] for u in lap["cohort"].ids],
        norm="asnorm",
        calibrate="qmf",
        top_n=100,
        calibration_dir=models["lap_astp"],
        title="LAP + ASTP + AS-norm + QMF",
    )
    results["LAP + ASTP + AS-norm + QMF"] = calibrated.metrics
    return results, det_systems


def _layer_plots(model_dir: Path, corpus: Path, out: Path) -> dict[str, Any]:
    """LAP's layer scores on one test utterance (plot) and averaged over the test set."""
    from lapsv.inspection import dominant_layers, layer_view, plot_layer_weights, winner_statistics
    from lapsv.loading import load_model

    model = load_model(model_dir)
    manifest = read_manifest(corpus / "test.tsv")
    utterances = sorted(manifest, key=lambda u: -u.seconds)[:: max(len(manifest) // 12, 1)][:12]
    views = [layer_view(model, load_audio(manifest.audio_path(u))) for u in utterances]
    weights = [view.weights for view in views]
    winners = [view.winners for view in views]
    plot_layer_weights(
        weights[0], out / "layers.png", title=f"LAP layer scores, {utterances[0].utt}"
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


def _stage2_sentence(results: dict[str, dict[str, Any]], epochs: int) -> str:
    """Whether stage 2 ran and, if so, whether it helped LAP + ASTP (mean-subtracted EER)."""
    before = results["LAP + ASTP + mean sub."]["eer"]
    after = results.get("LAP + ASTP, stage 2 + mean sub.", {}).get("eer")
    if after is None:
        return "Stage 2 (joint fine-tuning of the GE2E layers) was skipped: no time left."
    verdict = "it helps" if after < before else "it does not help"
    return (
        f"Stage 2 ({epochs} epochs of joint fine-tuning of the GE2E layers with LAP + ASTP, "
        f"from stage 1): EER with mean subtraction {before:.2f} -> {after:.2f} %, so on this "
        f"run {verdict}."
    )


def _mean_subtracted_eers(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Stage-1 systems' EER % with mean subtraction, by system label."""
    return {label: results[f"{label} + mean sub."]["eer"] for label in SYSTEMS.values()}


def _seed_table(seed_results: dict[int, dict[str, float]]) -> list[str]:
    """Markdown lines: every stage-1 system's EER (mean subtraction) per seed, mean and sd."""
    seeds = sorted(seed_results)
    lines = [
        "## The same stage 1 with other seeds",
        "",
        "EER % with mean subtraction on the test speakers; the seed changes the crops, the "
        "augmentation, the initialisation and the dropout draws.",
        "",
        "| system | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for label in SYSTEMS.values():
        eers = np.array([seed_results[s][label] for s in seeds])
        cells = " | ".join(f"{e:.2f}" for e in eers)
        lines.append(f"| {label} | {cells} | {eers.mean():.2f} ± {eers.std(ddof=1):.2f} |")
    return [*lines, "", *_paired_differences(seed_results), ""]


def _paired_differences(seed_results: dict[int, dict[str, float]]) -> list[str]:
    """Markdown bullets: LAP + ASTP's EER minus each baseline's, paired by seed.

    Pairing removes what the seeds share (the test trials' difficulty), so the mean
    difference over its standard error (a paired t statistic, n - 1 degrees of freedom)
    says whether a ranking holds across seeds; |t| > 2.57 is p < 0.05 at 6 seeds.

    Example:
        >>> runs = {0: {"LAP + ASTP": 4.0, "SUPERB + ASTP": 3.0, "last layer + ASTP": 4.5},
        ...         1: {"LAP + ASTP": 5.0, "SUPERB + ASTP": 3.5, "last layer + ASTP": 4.5}}
        >>> print("\\n".join(_paired_differences(runs)))
        LAP + ASTP minus the baselines, seed by seed (mean ± standard error, percentage points):
        - SUPERB + ASTP: +1.25 ± 0.25 (t = 5.00, LAP better on 0 of 2 seeds)
        - last layer + ASTP: +0.00 ± 0.50 (t = 0.00, LAP better on 1 of 2 seeds)
    """
    seeds = sorted(seed_results)
    lap = np.array([seed_results[s][SYSTEMS["lap_astp"]] for s in seeds])
    lines = [
        "LAP + ASTP minus the baselines, seed by seed (mean ± standard error, percentage points):"
    ]
    for key in ("superb_astp", "last_astp"):
        label = SYSTEMS[key]
        gaps = lap - np.array([seed_results[s][label] for s in seeds])
        error = gaps.std(ddof=1) / np.sqrt(len(gaps))
        t = gaps.mean() / error if error > 0 else float("nan")
        lines.append(
            f"- {label}: {gaps.mean():+.2f} ± {error:.2f} (t = {t:.2f}, LAP better on "
            f"{int((gaps < 0).sum())} of {len(gaps)} seeds)"
        )
    return lines


def _winner_sentence(layers: dict[str, Any]) -> str:
    """What LAP's max over layers keeps, in words (see inspection.winner_statistics)."""
    stats = layers["winners"]
    shares = ", ".join(f"{100 * share:.0f}" for share in stats["share_per_layer"])
    return (
        f"LAP pools the scored layers with a max per channel. Over {layers['frames']} test "
        f"frames the layers win {shares} % of the (frame, channel) cells; one layer wins "
        f"more than 90 % of the frames on {stats['dominated_channels']} of "
        f"{stats['channels']} channels, and a channel's winning layer changes on "
        f"{100 * stats['switch_rate']:.0f} % of consecutive frames."
    )


def _augmentation_words(cached_views: int) -> str:
    """How stage 1 augmented its crops, in words for the report."""
    if cached_views <= 0:
        return "live noise/music/babble/reverberation (fresh crops every epoch)"
    return (
        f"noise/music/babble/reverberation on {cached_views} cached views of fresh crops "
        f"(epoch e reuses view e mod {cached_views})"
    )


def _write_report(out, summary, config, results, layers, seconds, budget, seed_results) -> Path:
    lines = [
        "# lapsv demo report",
        "",
        f"Run time: {seconds / 60:.1f} min on this machine (budget {budget:.0f} min).",
        "",
        "## Corpus",
        "",
        "```",
        summary.format_table(),
        "```",
        "",
        "## Results on the test speakers (never seen in training or validation)",
        "",
        "| system | EER % | minDCF 0.01 | minDCF 0.05 | Cllr |",
        "|---|---|---|---|---|",
    ]
    for name, m in results.items():
        cllr = f"{m['cllr']:.3f}" if "cllr" in m else "-"
        dcf = f"{m['min_dcf_0.01']:.3f} | {m['min_dcf_0.05']:.3f}"
        lines.append(f"| {name} | {m['eer']:.2f} | {dcf} | {cllr} |")
    lines += [
        "",
        "Mean subtraction uses the mean embedding of the training utterances. Stage 1 "
        f"trained {config.optim.epochs} epochs of {config.data.crop_seconds} s crops with "
        f"speed-perturbation classes and {_augmentation_words(config.data.cached_views)}; "
        "the final model of each system averages its best epochs by validation EER "
        "(held-out training speakers, never the test trials).",
        "",
        _stage2_sentence(results, stage2_config(config, out / "stage1").optim.epochs),
        "",
        "![DET curves](det.png)",
        "",
        *(_seed_table(seed_results) if len(seed_results) > 1 else []),
        "## What LAP looks at",
        "",
        f"Mean layer score per GE2E layer (1st, 2nd, 3rd LSTM layer) over {layers['utterances']} "
        f"test utterances: {layers['mean_score_per_layer']}; the scores vary over time with a "
        f"mean standard deviation of {layers['mean_std_over_time']}.",
        "",
        _winner_sentence(layers),
        "",
        "![LAP layer scores](layers.png)",
        "",
        "Training curves: ![curves](stage1/curves.png)",
        "",
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
