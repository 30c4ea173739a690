"""Extraction throughput with 1 and 2 processes: ``lapsv embed`` on the built-in ``ge2e``
model over generated clips, one plain process against ``accelerate launch`` (gloo on CPU).

Each configuration (1 or 2 processes of 1 torch thread) is measured twice:

* ``extraction``: a worker (this module with ``--worker``) loads the model, embeds one clip
  to warm up, waits for the other processes, then times
  :func:`lapsv.distributed.extract_sharded` (header reads, the chunks, the final barrier
  and the merge on process 0), the part that grows with the number of utterances;
* ``end_to_end``: the wall time of the real command (``python -m lapsv embed`` or
  ``accelerate launch ... -m lapsv embed``): start-up, imports and model loading included.

Also checks that the 2-process embeddings equal the 1-process ones (max abs difference).

    python -m benchmarks.extraction [--size tiny|small|full]   # -> results/extraction-cpu.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile
import torch

from benchmarks.common import load_average, machine
from lapsv.distributed import current_processes, extract_sharded
from lapsv.files import atomic_write_text
from lapsv.inference import expand_audio_inputs
from lapsv.speaker import load_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "extraction-cpu.json"
SAMPLE_RATE = 16_000
BATCH_SIZE = 16
# size -> (utterances, min seconds, max seconds)
SIZES: dict[str, tuple[int, float, float]] = {
    "tiny": (40, 1.0, 2.0),
    "small": (1000, 2.0, 6.0),
    "full": (5000, 2.0, 8.0),
}
# (processes, torch threads per process). One process with 2 threads is left out: on this
# shared 2-core machine its OpenMP threads wait for each other (18x slower than 1 thread
# on the tiny size; benchmarks/run.py runs torch with 1 thread on CPU for that reason).
CONFIGS = ((1, 1), (2, 1))


def _write_clips(folder: Path, count: int, low: float, high: float) -> float:
    """``count`` speech-like clips (harmonics with a moving pitch); returns their seconds."""
    rng = np.random.default_rng(0)
    total = 0.0
    for index in range(count):
        seconds = rng.uniform(low, high)
        t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
        f0 = rng.uniform(90, 260) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
        phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
        wave = sum(np.sin(k * phase) / k for k in range(1, 8)) + 0.01 * rng.normal(size=t.size)
        soundfile.write(folder / f"{index:05d}.flac", (0.2 * wave).astype(np.float32), SAMPLE_RATE)
        total += len(t) / SAMPLE_RATE
    return total


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _command(processes: int, module: str, args: list[str]) -> list[str]:
    """``python -m MODULE ARGS``, under ``accelerate launch`` for more than one process."""
    if processes == 1:
        return [sys.executable, "-m", module, *args]
    return [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), "-m", module, *args,
    ]  # fmt: skip


def _run(command: list[str], threads: int) -> float:
    """Wall seconds of ``command`` run from the repository root with ``threads`` threads."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    started = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} ... failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started


def _measure(audio: Path, work: Path, processes: int, threads: int) -> dict[str, Any]:
    name = f"{processes}x{threads}"
    timing, out = work / f"{name}.json", work / f"{name}-worker.npz"
    worker = ["--worker", str(audio), str(out), str(timing)]
    _run(_command(processes, "benchmarks.extraction", worker), threads)
    measured = json.loads(timing.read_text())
    cli = ["embed", "ge2e", str(audio), "--out", str(work / f"{name}.npz"), "--show", "0"]
    end_to_end = _run(_command(processes, "lapsv", cli), threads)
    count, seconds = measured["embedded"], measured["extraction_seconds"]
    return {
        "processes": processes,
        "threads_per_process": threads,
        "extraction_seconds": seconds,
        "utterances_per_second": count / seconds,
        "x_real_time": measured["audio_seconds"] / seconds,
        "end_to_end_seconds": end_to_end,
        "end_to_end_utterances_per_second": count / end_to_end,
        "load_average_after": load_average(),
    }


def run(size: str, log: Callable[[str], None]) -> dict[str, Any]:
    """Utterances per second of ``lapsv embed ge2e`` with 1 and 2 processes (see above)."""
    count, low, high = SIZES[size]
    results: dict[str, Any] = {
        "model": "ge2e",
        "utterances": count,
        "min_seconds": low,
        "max_seconds": high,
        "batch_size": BATCH_SIZE,
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="lapsv-extraction-") as tmp:
        audio = Path(tmp) / "audio"
        audio.mkdir()
        results["audio_seconds"] = _write_clips(audio, count, low, high)
        for processes, threads in CONFIGS:
            name = f"{processes}x{threads}"
            results["runs"][name] = measured = _measure(audio, Path(tmp), processes, threads)
            log(
                f"  extraction {processes} process(es) x {threads} thread(s): "
                f"{measured['utterances_per_second']:.1f} utt/s "
                f"({measured['end_to_end_seconds']:.1f} s end to end)"
            )
        one, two = (np.load(Path(tmp) / f"{n}.npz") for n in ("1x1", "2x1"))
        assert one["ids"].tolist() == two["ids"].tolist()
        results["max_abs_diff_2_vs_1"] = float(np.abs(one["embeddings"] - two["embeddings"]).max())
    runs = results["runs"]
    for key in ("utterances_per_second", "end_to_end_utterances_per_second"):
        results[f"speedup_2_vs_1_process_{key}"] = runs["2x1"][key] / runs["1x1"][key]
    return results


def _worker(audio: str, out: str, timing: str) -> None:
    """One process of a measured run: time the sharded extraction between two barriers."""
    processes = current_processes("cpu")
    model = load_model("ge2e")
    items = expand_audio_inputs([audio])
    model.embed(items[0][1])  # warm-up: the first call allocates
    processes.barrier()
    started = time.perf_counter()
    extraction = extract_sharded(
        model, items, out, model_id=model.model_id, batch_size=BATCH_SIZE, processes=processes
    )
    if extraction.embeddings is None:
        return
    seconds = time.perf_counter() - started
    extraction.finish()
    measured = {
        "extraction_seconds": seconds,
        "embedded": len(extraction.embeddings.ids),
        "audio_seconds": float(extraction.embeddings.seconds.sum()),
        "processes": processes.world,
        "torch_threads": torch.get_num_threads(),
    }
    atomic_write_text(timing, json.dumps(measured))


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.extraction")
    parser.add_argument("--size", choices=list(SIZES), default="small")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--worker", nargs=3, metavar=("AUDIO", "OUT", "TIMING"))
    args = parser.parse_args(argv)
    if args.worker:
        _worker(*args.worker)
        return None
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    data = {"size": args.size, "machine": machine(torch.device("cpu"))}
    data["extraction"] = run(args.size, log)
    data["total_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(data, indent=1) + "\n")
    log(f"wrote {args.out}")
    return data


if __name__ == "__main__":
    main()
