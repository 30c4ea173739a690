"""`lapsv demo` end to end on a generated corpus (the real corpus comes from apt)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from lapsv import load_model
from lapsv.demo import corpus as demo_corpus
from lapsv.demo import diarization as demo_diarization
from lapsv.demo import noise as demo_noise
from lapsv.demo import run_demo
from synthetic import make_corpus


class FakeSummary:
    def format_table(self) -> str:
        return "split speakers items minutes\n(generated test corpus)"


def fake_corpus(out, *, cache=None, progress=None, **_):
    if not (out / "train.tsv").exists():
        paths = make_corpus(out, speakers=4, utterances=4, val_speakers=4)
        (out / "trials").mkdir(exist_ok=True)
        shutil.copy(paths["val_trials"], out / "trials" / "val.txt")
        shutil.copy(paths["val_trials"], out / "trials" / "test.txt")  # test speakers = val here
        shutil.copy(paths["val"], out / "test.tsv")
    return FakeSummary()


def fake_noise(out, *, speech_manifest=None, cache=None, **_):
    return {}


@pytest.fixture
def demo_out(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_corpus, "build_demo_corpus", fake_corpus)
    monkeypatch.setattr(demo_noise, "build_demo_noise", fake_noise)
    monkeypatch.setattr(demo_diarization, "TEST_CONVERSATIONS", 2)  # a few short ones
    monkeypatch.setattr(demo_diarization, "VAL_CONVERSATIONS", 1)
    monkeypatch.setattr(demo_diarization, "MINUTES", (0.15, 0.25))
    return tmp_path / "demo"


def test_demo_writes_the_report_with_every_system(demo_out):
    overrides = [
        "optim.epochs=2",
        "optim.batch_size=8",
        "data.num_workers=0",
        "data.mean_utterances=8",
    ]
    overrides += ["data.musan=null", "data.rirs=null", "data.cached_views=1"]
    result = run_demo(demo_out, overrides=overrides, budget_minutes=60, log=lambda _: None)
    report = result.report.read_text()
    flat = report.replace("\n", " ")
    ge2e, whisper = report.split("## Whisper-base encoder")
    for system in ("LAP + ASTP", "SUPERB + ASTP", "last layer + ASTP", "GE2E's own embedding"):
        assert f"| {system} |" in ge2e
        assert f"| {system} + mean sub. |" in ge2e
    profile = result_profile(demo_out)
    best = ("emb", "L1", "L2", "L3", "L4", "L5", "L6")[int(np.argmin(profile))]
    for system in (
        "LAP + ASTP",
        "SUPERB + ASTP",
        "last layer + ASTP",
        f"best single layer ({best}) + ASTP",
    ):
        assert f"| {system} + mean sub. |" in whisper
    assert f"Best: {best}, the layer of the best-single-layer system." in whisper.replace("\n", " ")
    model = load_model(demo_out / "whisper-base" / "stage1" / "layer_astp" / "model").encoder
    assert model.config.backend.layer_index == int(np.argmin(profile))
    assert "| LAP + ASTP + AS-norm + QMF |" in ge2e and "| LAP + ASTP + AS-norm + QMF |" in whisper
    assert "| LAP + ASTP, stage 2 + mean sub. |" in ge2e  # joint fine-tuning fitted the budget
    assert "| LAP + ASTP, stage 2 + mean sub. |" in whisper
    before = result.results["ge2e"]["LAP + ASTP + mean sub."]["eer"]
    after = result.results["ge2e"]["LAP + ASTP, stage 2 + mean sub."]["eer"]
    verdict = "it helps" if after < before else "it does not help"
    assert f"EER with mean subtraction {before:.2f} -> {after:.2f} %, so on this run {verdict}" in (
        flat
    )
    assert "of the (frame, channel) cells: LSTM 1" in flat and "cells: emb" in flat
    assert f"({best}, {min(profile):.1f} % EER in the profile) wins" in whisper.replace("\n", " ")
    assert "against 14 % for an even split over 7 layers" in whisper.replace("\n", " ")
    pictures = ["det.png", "layers.png", "stage1/curves.png", "profile.png"]
    pictures += [f"whisper-base/{p}" for p in ("det.png", "layers.png", "stage1/curves.png")]
    for picture in pictures:
        assert (demo_out / picture).stat().st_size > 10_000, picture
    model = load_model(demo_out / "stage1" / "lap_astp" / "model").encoder
    assert model.config.backend.aggregation == "lap"
    assert (demo_out / "stage1" / "lap_astp" / "model" / "qmf.json").is_file()
    assert (demo_out / "whisper-base" / "stage1" / "lap_astp" / "model" / "qmf.json").is_file()
    # re-runnable: finished stages are reused; a second seed adds one stage-1 run per side
    again = run_demo(demo_out, overrides=overrides, seeds=2, frontends=["ge2e"], log=lambda _: None)
    assert again.results["ge2e"].keys() == result.results["ge2e"].keys()
    assert (
        again.results["ge2e"]["LAP + ASTP + mean sub."]
        == (result.results["ge2e"]["LAP + ASTP + mean sub."])
    )
    assert (demo_out / "stage1-seed1" / "lap_astp" / "model" / "model.safetensors").is_file()
    seed_table = again.report.read_text().split("### The same stage 1 with other seeds")[1]
    row = next(line for line in seed_table.splitlines() if line.startswith("| LAP + ASTP |"))
    seed0, seed1, spread = (cell.strip() for cell in row.strip("|").split("|")[1:])
    assert float(seed0) == pytest.approx(before, abs=0.005)
    mean, sd = (float(x) for x in spread.split(" ± "))
    assert mean == pytest.approx((float(seed0) + float(seed1)) / 2, abs=0.01)
    assert sd == pytest.approx(abs(float(seed0) - float(seed1)) / 2**0.5, abs=0.01)
    # the paired comparison: LAP minus last layer, seed by seed
    last_row = next(line for line in seed_table.splitlines() if line.startswith("| last layer"))
    last0, last1 = (float(cell) for cell in last_row.strip("|").split("|")[1:3])
    gaps = [float(seed0) - last0, float(seed1) - last1]
    paired = next(line for line in seed_table.splitlines() if line.startswith("- last layer"))
    gap = float(paired.split(": ")[1].split(" ± ")[0])
    assert gap == pytest.approx(sum(gaps) / 2, abs=0.011)  # from the table's rounded cells
    assert f"LAP better on {sum(gap < 0 for gap in gaps)} of 2 seeds" in paired
    assert "LAP + ASTP beats (lower EER, paired t > 2): " in seed_table
    diarization = report.split("## Diarization")[1]
    for system in ("ge2e LAP + ASTP", "GE2E's own embedding", "whisper-base LAP + ASTP"):
        assert f"| {system} | Silero VAD |" in diarization
        assert f"| {system} | oracle |" in diarization
    assert "shared pass" in diarization and (demo_out / "diarization" / "timeline.png").is_file()
    assert set(result_diarization(demo_out)) == {"ge2e LAP + ASTP", "GE2E's own embedding"}


def result_diarization(demo_out):
    return json.loads((demo_out / "results.json").read_text())["diarization"]


def result_profile(demo_out):
    return json.loads((demo_out / "results.json").read_text())["whisper-base"][
        "profile EER % per layer"
    ]


@pytest.mark.parametrize(
    ("option", "expected"), [([], ("ge2e", "whisper-base")), (["--frontend", "ge2e"], ("ge2e",))]
)
def test_cli_demo_runs_the_chosen_sides(option, expected, tmp_path, monkeypatch, capsys):
    import lapsv.cli.project_verbs
    import lapsv.demo
    from lapsv.cli import main

    calls = []

    def fake_run_demo(out, **options):
        calls.append(options)
        return lapsv.demo.DemoResult(tmp_path / "report.md", {}, 60.0)

    monkeypatch.setattr(lapsv.cli.project_verbs, "run_demo", fake_run_demo)
    assert main(["demo", "--out", str(tmp_path / "d"), *option]) == 0
    assert calls[0]["frontends"] == expected
    assert "done in 1.0 min" in capsys.readouterr().out
