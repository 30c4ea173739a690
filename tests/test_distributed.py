"""Distributed training: ``accelerate launch`` with 2 CPU processes (gloo) trains a tiny
model; after every optimizer step the weights are identical in both processes, the logged
global batch is per-process batch x processes x accumulation, and only rank 0 writes
checkpoints and logs. The rendezvous port is a free one found at run time."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import textwrap

from conftest import tiny_hf_config
from lapsv.config import BackendConfig, FrontendConfig, ModelConfig, dump_yaml, to_dict
from lapsv.training.config import DataConfig, OptimConfig, TrainConfig
from synthetic import make_corpus

PROCESSES, BATCH, ACCUMULATION, EPOCHS = 2, 8, 2, 2
PER_PROCESS = BATCH // (PROCESSES * ACCUMULATION)
STEPS = EPOCHS * (32 // PER_PROCESS // PROCESSES) // ACCUMULATION  # 32 utterances

# Runs in each process: trains, hashes the parameters after every step, and records every
# write into the output folder (Python audit events: open for writing, mkdir, rename, ...).
WORKER = textwrap.dedent(
    """
    import hashlib, json, os, sys
    out, logs = os.path.abspath(sys.argv[2]), sys.argv[3]
    writes = []
    EVENTS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.unlink",
              "shutil.rmtree", "os.chmod", "os.truncate", "os.link", "os.symlink"}

    def inside(path):
        try:
            path = os.path.abspath(os.fsdecode(path))
        except TypeError:  # a file descriptor
            return False
        return path == out or path.startswith(out + os.sep)

    def audit(event, args):
        if event == "open":
            path, mode, flags = args
            if isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR) and inside(path):
                writes.append(f"open {path}")
        elif event in EVENTS:
            paths = [a for a in args[:2] if isinstance(a, str | bytes | os.PathLike)]
            if any(inside(a) for a in paths):
                writes.append(f"{event} {args[0]}")

    sys.addaudithook(audit)

    from lapsv.training import load_recipe, train

    hashes, info = [], {}

    def on_step(trainer):
        digest = hashlib.sha256()
        for system in trainer.systems:
            step = trainer.accelerator.unwrap_model(system.step)
            for name, parameter in sorted(step.named_parameters()):
                digest.update(name.encode())
                digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
        hashes.append([trainer.step, digest.hexdigest()])
        info.update(rank=trainer.accelerator.process_index,
                    processes=trainer.accelerator.num_processes,
                    backend=str(trainer.accelerator.state.backend))

    train(load_recipe(sys.argv[1]), out, progress=False, on_step=on_step)
    with open(os.path.join(logs, f"rank{info['rank']}.json"), "w") as handle:
        json.dump({**info, "hashes": hashes, "writes": writes}, handle)
    """
)


# One process of a gloo group: a handler registered before lapsv's runs after it (atexit is
# last in, first out) and reports whether the group is still alive at exit.
LEAVER = textwrap.dedent(
    """
    import atexit, os
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{os.environ['PORT']}",
                            rank=0, world_size=1)
    atexit.register(lambda: print("alive at exit:", dist.is_initialized()))
    from lapsv.process_group import leave_process_group_at_exit
    leave_process_group_at_exit()
    leave_process_group_at_exit()  # twice: one handler
    dist.all_reduce(__import__("torch").ones(4))
    """
)


def test_the_process_group_is_destroyed_before_the_interpreter_exits(tmp_path):
    """A gloo process that exits with its group alive can abort at shutdown (SIGABRT,
    "terminate called without an active exception"): lapsv destroys it at exit."""
    script = tmp_path / "leaver.py"
    script.write_text(LEAVER)
    env = dict(os.environ, PORT=str(free_port()))
    result = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines() == ["alive at exit: False"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_cpu_processes_stay_identical_and_only_rank_0_writes(tmp_path):
    corpus = make_corpus(tmp_path, speakers=4, utterances=8, val_speakers=0)
    config = TrainConfig(
        model=ModelConfig(
            frontend=FrontendConfig(
                name="hf", hf_config=tiny_hf_config("wavlm").to_dict(), freeze=True
            ),
            backend=BackendConfig(lap_heads=4, lap_out_dim=32, embed_dim=16),
        ),
        data=DataConfig(train_manifest=str(corpus["train"]), crop_seconds=0.5, num_workers=0),
        optim=OptimConfig(epochs=EPOCHS, batch_size=BATCH, grad_accum=ACCUMULATION, lr=5e-3),
        checkpoint_every_steps=3,
    )
    recipe, worker = tmp_path / "recipe.yaml", tmp_path / "worker.py"
    recipe.write_text(dump_yaml(to_dict(config)))
    worker.write_text(WORKER)
    out, logs = tmp_path / "run", tmp_path / "logs"
    logs.mkdir()
    env = dict(os.environ, ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(PROCESSES), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()),
        str(worker), str(recipe), str(out), str(logs),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    ranks = [json.loads((logs / f"rank{r}.json").read_text()) for r in range(PROCESSES)]
    assert [r["processes"] for r in ranks] == [PROCESSES] * PROCESSES
    assert all("gloo" in r["backend"] for r in ranks)
    assert [s for s, _ in ranks[0]["hashes"]] == list(range(1, STEPS + 1))
    assert ranks[0]["hashes"] == ranks[1]["hashes"]  # identical weights after every step
    assert len({h for _, h in ranks[0]["hashes"]}) == STEPS  # and they did change

    rows = list(csv.DictReader((out / "metrics.csv").read_text().splitlines()))
    assert [int(r["global_batch"]) for r in rows] == [PER_PROCESS * PROCESSES * ACCUMULATION] * 2
    summary = json.loads((out / "lap_astp" / "training.json").read_text())
    assert (summary["per_process_batch"], summary["processes"]) == (PER_PROCESS, PROCESSES)

    assert ranks[0]["writes"], "the audit hook saw rank 0's writes"
    assert any("checkpoints" in w for w in ranks[0]["writes"])
    assert ranks[1]["writes"] == []  # rank 1 wrote nothing: no checkpoint, log or model
    assert (out / "lap_astp" / "model" / "model.safetensors").is_file()
