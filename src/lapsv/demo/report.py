"""report.md of the demo: per frontend, the test table, seeds, layer profile and LAP's view."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from lapsv.demo.diarization import diarization_section
from lapsv.demo.evaluation import SideResults
from lapsv.demo.profile import LayerProfile
from lapsv.demo.sides import Side
from lapsv.files import atomic_write_text
from lapsv.training import TrainConfig

LAP = "LAP + ASTP"


@dataclasses.dataclass
class SideReport:
    """Everything the report says about one side."""

    side: Side
    labels: dict[str, str]
    results: SideResults
    config: TrainConfig
    profile: LayerProfile
    layers: dict[str, Any]
    stage2_epochs: int


def paired_differences(seed_results: dict[int, dict[str, float]]) -> list[str]:
    """Markdown bullets: LAP + ASTP's EER minus each other system's, paired by seed.

    Pairing removes what the seeds share (the test trials' difficulty), so the mean
    difference over its standard error (a paired t statistic, n - 1 degrees of freedom)
    says whether a ranking holds across seeds; |t| > 2.78 is p < 0.05 at 5 seeds.

    Example:
        >>> runs = {0: {"LAP + ASTP": 4.0, "SUPERB + ASTP": 3.0, "last layer + ASTP": 4.5},
        ...         1: {"LAP + ASTP": 5.0, "SUPERB + ASTP": 3.5, "last layer + ASTP": 4.5}}
        >>> print("\\n".join(paired_differences(runs)))
        LAP + ASTP minus the baselines, seed by seed (mean ± standard error, percentage points):
        - SUPERB + ASTP: +1.25 ± 0.25 (t = 5.00, LAP better on 0 of 2 seeds)
        - last layer + ASTP: +0.00 ± 0.50 (t = 0.00, LAP better on 1 of 2 seeds)
    """
    lines = [
        "LAP + ASTP minus the baselines, seed by seed (mean ± standard error, percentage points):"
    ]
    for label, gaps in _paired_gaps(seed_results).items():
        error = gaps.std(ddof=1) / np.sqrt(len(gaps))
        t = gaps.mean() / error if error > 0 else float("nan")
        lines.append(
            f"- {label}: {gaps.mean():+.2f} ± {error:.2f} (t = {t:.2f}, LAP better on "
            f"{int((gaps < 0).sum())} of {len(gaps)} seeds)"
        )
    return lines


def _paired_gaps(seed_results: dict[int, dict[str, float]]) -> dict[str, np.ndarray]:
    """Per other system: LAP + ASTP's EER minus its EER, one value per seed (< 0: LAP better)."""
    seeds = sorted(seed_results)
    lap = np.array([seed_results[s][LAP] for s in seeds])
    return {
        label: lap - np.array([seed_results[s][label] for s in seeds])
        for label in seed_results[seeds[0]]
        if label != LAP
    }


def _seed_table(seed_results: dict[int, dict[str, float]]) -> list[str]:
    """Markdown lines: every stage-1 system's EER (mean subtraction) per seed, mean and sd."""
    seeds = sorted(seed_results)
    lines = [
        "EER % with mean subtraction on the test speakers; the seed changes the crops, the "
        "augmentation, the initialisation and the dropout draws.",
        "",
        "| system | " + " | ".join(f"seed {s}" for s in seeds) + " | mean ± sd |",
        "|---|" + "---|" * (len(seeds) + 1),
    ]
    for label in seed_results[seeds[0]]:
        eers = np.array([seed_results[s][label] for s in seeds])
        cells = " | ".join(f"{e:.2f}" for e in eers)
        lines.append(f"| {label} | {cells} | {eers.mean():.2f} ± {eers.std(ddof=1):.2f} |")
    return [*lines, "", *paired_differences(seed_results), "", goal_sentence(seed_results), ""]


def goal_sentence(seed_results: dict[int, dict[str, float]]) -> str:
    """Whether LAP + ASTP beats each other system: a lower mean EER with paired t > 2.

    Example:
        >>> runs = {0: {"LAP + ASTP": 3.0, "SUPERB + ASTP": 4.0, "last layer + ASTP": 2.5},
        ...         1: {"LAP + ASTP": 3.5, "SUPERB + ASTP": 4.4, "last layer + ASTP": 3.0},
        ...         2: {"LAP + ASTP": 3.2, "SUPERB + ASTP": 4.3, "last layer + ASTP": 3.9}}
        >>> print(goal_sentence(runs).replace("; ", ";\\n"))
        LAP + ASTP beats (lower EER, paired t > 2): SUPERB + ASTP;
        it does not beat: last layer + ASTP.
    """
    beaten, not_beaten = [], []
    for label, gaps in _paired_gaps(seed_results).items():
        error = gaps.std(ddof=1) / np.sqrt(len(gaps))
        (beaten if error > 0 and -gaps.mean() / error > 2 else not_beaten).append(label)
    parts = [f"beats (lower EER, paired t > 2): {', '.join(beaten) or 'none'}"]
    if not_beaten:
        parts.append(f"it does not beat: {', '.join(not_beaten)}")
    return f"{LAP} " + "; ".join(parts) + "."


def _stage2_sentence(part: SideReport) -> str:
    """Whether stage 2 ran and, if so, whether it helped LAP + ASTP (mean-subtracted EER)."""
    table = part.results.table
    before = table[f"{LAP} + mean sub."]["eer"]
    after = table.get("LAP + ASTP, stage 2 + mean sub.", {}).get("eer")
    if after is None:
        return (
            f"Stage 2 (joint fine-tuning of the frontend, about {part.side.stage2_minutes:.0f} "
            "min on 2 cores) was skipped: it did not fit the time budget."
        )
    verdict = "it helps" if after < before else "it does not help"
    return (
        f"Stage 2 ({part.stage2_epochs} epochs of joint fine-tuning of the frontend with "
        f"LAP + ASTP, from stage 1): EER with mean subtraction {before:.2f} -> {after:.2f} %, "
        f"so on this run {verdict}."
    )


def _winner_sentence(layers: dict[str, Any], names: tuple[str, ...]) -> str:
    """What LAP's max over layers keeps, in words (see inspection.winner_statistics)."""
    stats = layers["winners"]
    shares = ", ".join(
        f"{name} {100 * share:.0f}"
        for name, share in zip(names, stats["share_per_layer"], strict=True)
    )
    return (
        f"LAP pools the scored layers with a max per channel. Over {layers['frames']} test "
        f"frames the layers win these shares (%) of the (frame, channel) cells: {shares}; one "
        f"layer wins more than 90 % of the frames on {stats['dominated_channels']} of "
        f"{stats['channels']} channels, and a channel's winning layer changes on "
        f"{100 * stats['switch_rate']:.0f} % of consecutive frames."
    )


def _best_layer_sentence(part: SideReport) -> str:
    """How much of LAP's max the profile's best layer wins, against an even split."""
    names, best = part.side.layer_names, part.profile.best
    shares = part.layers["winners"]["share_per_layer"]
    most = int(np.argmax(shares))
    return (
        f"The layer that carries the speaker best on its own ({names[best]}, "
        f"{part.profile.eers[best]:.1f} % EER in the profile) wins {100 * shares[best]:.0f} % "
        f"of those cells, against {100 / len(names):.0f} % for an even split over "
        f"{len(names)} layers; the layer winning most is {names[most]} "
        f"({100 * shares[most]:.0f} %, {part.profile.eers[most]:.1f} % EER alone)."
    )


def _augmentation_words(cached_views: int) -> str:
    """How stage 1 augmented its crops, in words for the report."""
    if cached_views <= 0:
        return "live noise/music/babble/reverberation (fresh crops every epoch)"
    return (
        f"noise/music/babble/reverberation on {cached_views} cached views of fresh crops "
        f"(epoch e reuses view e mod {cached_views})"
    )


def _metrics_table(table: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| system | EER % | minDCF 0.01 | minDCF 0.05 | Cllr |", "|---|---|---|---|---|"]
    for name, m in table.items():
        cllr = f"{m['cllr']:.3f}" if "cllr" in m else "-"
        lines.append(
            f"| {name} | {m['eer']:.2f} | {m['min_dcf_0.01']:.3f} | {m['min_dcf_0.05']:.3f} "
            f"| {cllr} |"
        )
    return lines


def _profile_sentence(part: SideReport) -> str:
    names, eers = part.side.layer_names, part.profile.eers
    cells = ", ".join(f"{n} {e:.1f}" for n, e in zip(names, eers, strict=True))
    return (
        "Training-free layer profile on the validation speakers (each hidden layer alone, "
        "mean+std pooled over frames, standardised with training-utterance statistics, "
        f"cosine): EER % {cells}. Best: {names[part.profile.best]}"
        + (", the layer of the best-single-layer system." if "layer_astp" in part.labels else ".")
    )


def side_section(part: SideReport, prefix: str) -> list[str]:
    """The markdown of one side; its pictures are named ``{prefix}det.png`` and so on."""
    config, side = part.config, part.side
    norm = config.model.backend.per_layer_norm
    recipe = (
        f"Stage 1 trained {config.optim.epochs} epochs of {config.data.crop_seconds} s crops "
        f"with speed-perturbation classes and {_augmentation_words(config.data.cached_views)}"
        f"{'; every layer normalised on its own first (per_layer_norm)' if norm else ''}; "
        "the final model of each system averages its best epochs by validation EER "
        "(held-out training speakers, never the test trials). Mean subtraction uses the mean "
        "embedding of training utterances."
    )
    lines = [
        f"## {side.title}",
        "",
        "Results on the test speakers (never seen in training or validation):",
        "",
        *_metrics_table(part.results.table),
        "",
        recipe,
        "",
        _stage2_sentence(part),
        "",
        f"![DET curves]({prefix}det.png)",
        "",
    ]
    if len(part.results.seeds) > 1:
        lines += ["### The same stage 1 with other seeds", "", *_seed_table(part.results.seeds)]
    lines += [
        "### Which layers carry the speaker",
        "",
        _profile_sentence(part),
        "",
        "### What LAP looks at",
        "",
        f"Mean LAP layer score per hidden layer ({', '.join(side.layer_names)}) over "
        f"{part.layers['utterances']} test utterances: {part.layers['mean_score_per_layer']}; the "
        f"scores vary over time with a mean standard deviation of "
        f"{part.layers['mean_std_over_time']}.",
        "",
        _winner_sentence(part.layers, side.layer_names),
        "",
        _best_layer_sentence(part),
        "",
        f"![LAP layer scores]({prefix}layers.png)",
        "",
        f"Training curves: ![curves]({prefix}stage1/curves.png)",
        "",
    ]
    return lines


def write_report(
    out: Path,
    summary: Any,
    parts: list[SideReport],
    *,
    seconds: float,
    budget: float,
    diarization: dict[str, Any] | None = None,
) -> Path:
    """Write ``out/report.md``: run time, corpus, each side's section, the layer profiles,
    and the diarization table."""
    lines = [
        "# lapsv demo report",
        "",
        f"Run time: {seconds / 60:.1f} min on this machine (time budget {budget:.0f} min: it "
        "decides whether stage 2 runs).",
        "",
        "## Corpus",
        "",
        "```",
        summary.format_table(),
        "```",
        "",
    ]
    for part in parts:
        prefix = f"{part.side.folder}/" if part.side.folder else ""
        lines += side_section(part, prefix)
    lines += ["## Layer profiles", "", "![training-free layer profiles](profile.png)", ""]
    if diarization is not None:
        lines += diarization_section(diarization, "diarization/")
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
