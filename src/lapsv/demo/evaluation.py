"""Evaluate one side of the demo: every seed's stage-1 systems in one frontend pass."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lapsv.data.manifest import read_manifest
from lapsv.demo.sides import Side
from lapsv.embeddings import EmbeddingSet
from lapsv.inference import SharedFrontendModel, extract_embeddings
from lapsv.scoring.evaluate import score_trials
from lapsv.scoring.trials import Trials, read_trials
from lapsv.speaker import load_model

MEAN_SUB = " + mean sub."


@dataclasses.dataclass
class SideResults:
    """table: label -> metrics of seed 0's systems (raw and mean-subtracted), the built-in
    model, stage 2 and LAP + AS-norm + QMF; seeds: seed -> label -> mean-subtracted EER %;
    det: label -> (scores, labels) of seed 0's mean-subtracted systems."""

    table: dict[str, dict[str, Any]]
    seeds: dict[int, dict[str, float]]
    det: dict[str, tuple[np.ndarray, np.ndarray]]


def evaluate_side(
    side: Side,
    models: dict[int, dict[str, Path]],
    labels: dict[str, str],
    corpus: Path,
    out: Path,
    *,
    stage2: Path | None = None,
    log: Callable[[str], None] = print,
) -> SideResults:
    """Test EER of every seed's systems (one frontend pass: they share the frozen frontend).

    Seed 0 (the first in ``models``) gets the full table: each system with and without mean
    subtraction, the side's built-in model and stage-2 model (their own frontends), and
    LAP + ASTP with AS-norm + QMF, whose calibration is saved beside its model.
    """
    trials = read_trials(corpus / "trials" / "test.txt")
    sets, speaker_of = _embed(side, models, trials, corpus, stage2)
    first = min(models)
    names = {f"{n}@{first}": label for n, label in labels.items()}
    names |= {"builtin": side.builtin_label, "stage2": "LAP + ASTP, stage 2"}

    def score(key: str, label: str, *, mean: bool, **options: Any):
        part = sets[key]
        return score_trials(
            part["test"],
            trials,
            out=out / (key.replace("@", "_seed") + ("_mean" if mean else "")),
            cohort_set=part["cohort"] if mean else None,
            cohort_speakers=[speaker_of[u] for u in part["cohort"].ids] if mean else None,
            title=label + (MEAN_SUB if mean else ""),
            **options,
        )

    table, det, seeds = {}, {}, {}
    for key, label in names.items():
        if key not in sets:
            continue
        table[label] = score(key, label, mean=False).metrics
        result = score(key, label, mean=True)
        table[label + MEAN_SUB] = result.metrics
        det[label] = (result.scores, result.trials.labels)
        log(f"      {label}: EER {result.metrics['eer']:.2f} % (mean subtraction)")
    for seed, runs in models.items():
        seeds[seed] = {
            labels[name]: (
                table[labels[name] + MEAN_SUB]["eer"]
                if seed == first
                else score(f"{name}@{seed}", labels[name], mean=True).metrics["eer"]
            )
            for name in runs
        }
    calibrated = score(
        f"lap_astp@{first}",
        "LAP + ASTP + AS-norm + QMF",
        mean=True,
        norm="asnorm",
        calibrate="qmf",
        top_n=100,
    )
    calibrated.state.save(models[first]["lap_astp"])  # for docs/cli.md's verify / identify
    table["LAP + ASTP + AS-norm + QMF"] = calibrated.metrics
    return SideResults(table, seeds, det)


EmbeddingParts = dict[str, dict[str, EmbeddingSet]]


def _embed(
    side: Side,
    models: dict[int, dict[str, Path]],
    trials: Trials,
    corpus: Path,
    stage2: Path | None,
) -> tuple[EmbeddingParts, dict[str, str]]:
    """key -> {"test", "cohort"} -> embeddings, for "name@seed" of every trained system (one
    pass of their shared frozen frontend), "builtin" and "stage2"; and cohort speakers."""
    audio = corpus / "audio"
    test_items = [(u, audio / u) for u in sorted(set(trials.enroll) | set(trials.test))]
    cohort_manifest = read_manifest(corpus / "cohort.tsv")
    cohort_items = [(u.utt, cohort_manifest.audio_path(u)) for u in cohort_manifest]
    speaker_of = {u.utt: u.speaker for u in cohort_manifest}
    parts = {"test": test_items, "cohort": cohort_items}
    loaded = {
        (seed, name): load_model(path)
        for seed, runs in models.items()
        for name, path in runs.items()
    }
    frontend = next(iter(loaded.values())).encoder.frontend
    backends = {f"{n}@{s}": m.encoder.backend for (s, n), m in loaded.items()}
    shared = SharedFrontendModel(frontend, backends)
    embedded = {
        part: extract_embeddings(shared, items, progress=True) for part, items in parts.items()
    }
    sets = {
        key: {part: embedded[part].columns(span) for part in parts}
        for key, span in shared.columns().items()
    }
    for key, model_path in {"builtin": side.builtin, "stage2": stage2}.items():
        if model_path is not None:  # models with frontends of their own
            model = load_model(model_path)
            sets[key] = {
                part: extract_embeddings(model, items, progress=True)
                for part, items in parts.items()
            }
    return sets, speaker_of
