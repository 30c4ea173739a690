"""A training run killed with SIGKILL (mid-epoch, or while it writes a checkpoint) and
started again with the same command ends with exactly the weights of an uninterrupted run.

Every run is a real ``lapsv train`` process; the kills are deterministic fail points
(``LAPSV_FAILPOINT``), not timing. The three first runs (uninterrupted, killed after a
step, killed inside a checkpoint) and then the two restarts run side by side.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import soundfile
import torch

from conftest import tiny_train_config
from lapsv.config import dump_yaml, to_dict
from lapsv.training.checkpoints import average_states
from lapsv.training.config import OptimConfig
from lapsv.training.faults import FAILPOINT_ENV
from lapsv.training.state import load_tree
from synthetic import make_corpus

# 36 training utterances, micro-batches of 2, 2 accumulated: 9 optimizer steps an epoch.
STEPS_PER_EPOCH, EPOCHS, CHECKPOINT_EVERY = 9, 3, 4
KILL_AFTER_STEP = 13  # in epoch 2, one step after the checkpoint of step 12
KILL_IN_CHECKPOINT = 8  # while the checkpoint of step 8 is being written
SYSTEMS = ("lap_astp", "superb_astp")
TIMING_COLUMNS = {"seconds", "utterances_per_second"}


def tiny_recipe(root: Path) -> Path:
    corpus = make_corpus(root)
    noise = root / "musan" / "noise"
    noise.mkdir(parents=True)
    rng = np.random.default_rng(0)
    soundfile.write(noise / "n.wav", (0.1 * rng.normal(size=16000)).astype("float32"), 16000)
    config = tiny_train_config(
        {**corpus, "musan": root / "musan"},
        optim=OptimConfig(epochs=EPOCHS, batch_size=4, grad_accum=2, lr=5e-3, final_lr=1e-4),
        checkpoint_every_steps=CHECKPOINT_EVERY,
    )
    path = root / "recipe.yaml"
    path.write_text(dump_yaml(to_dict(config)))
    return path


def launch(recipe: Path, out: Path, failpoint: str | None = None) -> subprocess.Popen:
    """``lapsv train RECIPE --out OUT``: the command a user runs, and reruns."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop(FAILPOINT_ENV, None)
    if failpoint:
        env[FAILPOINT_ENV] = failpoint
    command = [sys.executable, "-m", "lapsv.cli", "train", str(recipe), "--out", str(out)]
    return subprocess.Popen(
        [*command, "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=600)
    return process.returncode, output.decode(errors="replace")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    recipe = tiny_recipe(root)
    dirs = {name: root / name for name in ("reference", "killed_after_step", "killed_in_save")}
    first = {
        "reference": launch(recipe, dirs["reference"]),
        "killed_after_step": launch(
            recipe, dirs["killed_after_step"], f"after-step:{KILL_AFTER_STEP}"
        ),
        "killed_in_save": launch(
            recipe, dirs["killed_in_save"], f"in-checkpoint:{KILL_IN_CHECKPOINT}"
        ),
    }
    results = {name: finish(process) for name, process in first.items()}
    assert results["reference"][0] == 0, results["reference"][1]
    after_kill = {
        name: sorted(p.name for p in (dirs[name] / "checkpoints").iterdir())
        for name in ("killed_after_step", "killed_in_save")
    }
    latest = dirs["killed_after_step"] / "checkpoints" / after_kill["killed_after_step"][-1]
    latest_state = json.loads((latest / "trainer.json").read_text())
    second = {name: launch(recipe, dirs[name]) for name in after_kill}
    restarts = {name: finish(process) for name, process in second.items()}
    return {
        "dirs": dirs,
        "first": results,
        "after_kill": after_kill,
        "latest_state": latest_state,
        "restarts": restarts,
    }


def final_tensors(out: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for system in SYSTEMS:
        for file in (
            out / system / "model" / "model.safetensors",
            out / system / "classifier.safetensors",
        ):
            for key, value in safetensors.torch.load_file(str(file)).items():
                tensors[f"{system}/{file.name}/{key}"] = value
    return tensors


def assert_same_run(out: Path, reference: Path) -> None:
    ours, theirs = final_tensors(out), final_tensors(reference)
    assert ours.keys() == theirs.keys()
    different = [k for k in ours if not torch.equal(ours[k], theirs[k])]
    assert not different, f"weights differ from the uninterrupted run: {different[:5]}"
    assert metrics(out) == metrics(reference)


def metrics(out: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in rows]


def assert_loadable(checkpoint: Path) -> None:
    state = json.loads((checkpoint / "trainer.json").read_text())
    assert state["format"] == 2
    for system in SYSTEMS:
        weights = safetensors.torch.load_file(str(checkpoint / f"{system}.safetensors"))
        assert all(torch.isfinite(v).all() for k, v in weights.items() if v.is_floating_point())
        assert load_tree(checkpoint / f"{system}.optim.safetensors")["state"]
    assert load_tree(checkpoint / "state.safetensors")["rng"]["torch"].dtype == torch.uint8


def test_sigkill_mid_epoch_then_the_same_command_resumes_exactly(runs):
    code, output = runs["first"]["killed_after_step"]
    assert code == -signal.SIGKILL, output
    out = runs["dirs"]["killed_after_step"]
    # killed in epoch 2, one step after the mid-epoch checkpoint of step 12
    assert runs["after_kill"]["killed_after_step"][-1] == "step-00000012"
    state = runs["latest_state"]  # epoch 2 (index 1), 6 micro-batches into it
    assert (state["epoch"], state["batches"], state["step"]) == (1, 6, 12)
    code, output = runs["restarts"]["killed_after_step"]
    assert code == 0, output
    assert_same_run(out, runs["dirs"]["reference"])


def test_a_kill_inside_a_checkpoint_leaves_only_loadable_checkpoints(runs):
    code, output = runs["first"]["killed_in_save"]
    assert code == -signal.SIGKILL, output
    names = runs["after_kill"]["killed_in_save"]
    visible = [n for n in names if not n.startswith(".")]
    # the half-written checkpoint of step 8 stayed a hidden temporary folder
    assert visible == ["step-00000004"]
    assert any(n.startswith(".step-00000008.") for n in names)
    out = runs["dirs"]["killed_in_save"]
    code, output = runs["restarts"]["killed_in_save"]
    assert code == 0, output
    assert_same_run(out, runs["dirs"]["reference"])
    checkpoints = sorted((out / "checkpoints").iterdir())
    assert not [p for p in checkpoints if p.name.startswith(".")]  # leftovers cleaned up
    for checkpoint in checkpoints:
        assert_loadable(checkpoint)


def test_best_n_by_validation_eer_and_the_last_are_kept_and_the_best_averaged(runs):
    out = runs["dirs"]["reference"]
    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    best = set()
    for system in SYSTEMS:
        history = [r for r in rows if r["system"] == system]
        ranked = sorted(history, key=lambda r: (float(r["val_eer"]), -int(r["epoch"])))
        best |= {int(r["epoch"]) for r in ranked[:2]}
        summary = json.loads((out / system / "training.json").read_text())
        chosen = sorted(int(r["epoch"]) for r in ranked[:2])
        assert summary["averaged_epochs"] == chosen
        averaged = average_states(
            [
                safetensors.torch.load_file(
                    str(out / "checkpoints" / f"epoch-{e:03d}" / f"{system}.safetensors")
                )
                for e in chosen
            ]
        )
        model = safetensors.torch.load_file(str(out / system / "model" / "model.safetensors"))
        for key, value in averaged.items():
            if key.startswith("backend."):
                assert torch.equal(model[key], value), key
    kept = {p.name for p in (out / "checkpoints").iterdir()}
    assert kept == {f"epoch-{e:03d}" for e in best | {EPOCHS}}
    for checkpoint in (out / "checkpoints").iterdir():
        assert_loadable(checkpoint)
    assert {r["global_batch"] for r in rows} == {"4"}


class SimulatedCrashError(Exception):
    """An in-process stand-in for a crash at a given step."""


def test_cached_frontend_views_resume_exactly_and_keep_last_n(tmp_path):
    """The demo's path (frozen frontend, cached views): a crash mid-epoch, then the same
    call resumes to the uninterrupted weights; ``keep_last`` checkpoints are kept and,
    without ``average_best``, the final model is the last epoch's."""
    import dataclasses

    from lapsv.training import load_recipe, train

    (tmp_path / "data").mkdir()
    config = load_recipe(tiny_recipe(tmp_path / "data"))
    config = dataclasses.replace(
        config,
        data=dataclasses.replace(config.data, cached_views=2, val_manifest=None),
        optim=dataclasses.replace(config.optim, epochs=2, grad_accum=1),
        checkpoint_every_steps=4,
        keep_best=1,
        keep_last=2,
        average_best=False,
    )
    reference = train(config, tmp_path / "reference", progress=False)

    def crash_at_step_6(trainer):
        if trainer.step == 6:
            raise SimulatedCrashError

    with pytest.raises(SimulatedCrashError):
        train(config, tmp_path / "crashed", progress=False, on_step=crash_at_step_6)
    assert (tmp_path / "crashed" / "checkpoints" / "step-00000004").is_dir()
    resumed = train(config, tmp_path / "crashed", progress=False)
    for system in SYSTEMS:
        ours = safetensors.torch.load_file(str(resumed[system] / "model.safetensors"))
        theirs = safetensors.torch.load_file(str(reference[system] / "model.safetensors"))
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), system
    # 18 steps (9 an epoch), checkpoints every 4: the last two are step 16 and epoch 2
    kept = sorted(p.name for p in (tmp_path / "reference" / "checkpoints").iterdir())
    assert kept == ["epoch-002", "step-00000016"]  # the best epoch is the last here
    last = safetensors.torch.load_file(
        str(tmp_path / "reference" / "checkpoints" / "epoch-002" / "lap_astp.safetensors")
    )
    final = safetensors.torch.load_file(str(reference["lap_astp"] / "model.safetensors"))
    for key, value in last.items():
        if key.startswith("backend."):
            assert torch.equal(final[key], value), key
