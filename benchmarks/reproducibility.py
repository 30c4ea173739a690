"""Why a demo run's figures differ between x86 machines: the same computations under
instruction-set limits, on one machine (issue 25).

    python -m benchmarks.reproducibility               # writes results/reproducibility-cpu.json
    python -m benchmarks.reproducibility --steps 5     # quicker

Every setting runs in its own process (the limits are read when torch, oneDNN, MKL and numpy
load) and computes, from the same seed:

* ``ge2e`` / ``whisper``: the frozen frontends' hidden states of a bundled clip (the demo's
  two sides; Whisper-base's encoder runs on CTranslate2);
* ``training``: ``steps`` stage-1 training steps of LAP + ASTP with AAM-softmax and AdamW on
  fixed Whisper-base-shaped hidden states (the demo's backend, optimiser and loss), their
  losses, and the weights after them.

The parent compares each setting with the unpinned default: whether each result is
bit-identical, the largest difference, the first training step whose loss differs, and the
seconds per training step (ratios from the same run; settings alternate over ``rounds``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from lapsv.files import atomic_write_text

HERE = Path(__file__).parent
CLIP = HERE.parent / "tests" / "data" / "speaker_a_1.flac"
# Every limit a CPU library of the demo reads: torch's own kernels (ATen), oneDNN, MKL,
# CTranslate2 (the Whisper encoder), numpy's dispatch and OpenBLAS (scipy, numpy linalg).
AVX2_PINS = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
    "CT2_FORCE_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL",
    "OPENBLAS_CORETYPE": "Haswell",
}
SETTINGS: dict[str, dict[str, str]] = {
    "default": {},
    "default again": {},
    "ATEN_CPU_CAPABILITY=avx2": {"ATEN_CPU_CAPABILITY": "avx2"},
    "ONEDNN_MAX_CPU_ISA=AVX2, MKL_CBWR=AVX2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"},
    "CT2_FORCE_CPU_ISA=AVX2": {"CT2_FORCE_CPU_ISA": "AVX2"},
    "every AVX2 pin": AVX2_PINS,
    "1 thread": {"LAPSV_THREADS": "1"},
    "every AVX2 pin, 1 thread": {**AVX2_PINS, "LAPSV_THREADS": "1"},
}
KEYS = ("ge2e", "whisper", "training")
BATCH, FRAMES, CLASSES = 32, 80, 200  # one demo-sized batch of 1.6 s crops at 50 frames/s


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype=np.float32).tobytes()).hexdigest()


def _child(steps: int, out: Path) -> dict[str, Any]:
    """Run the computations under this process's environment; weights go to ``out``."""
    import torch

    from lapsv import build_backend
    from lapsv.audio import load_audio
    from lapsv.config import FrontendConfig
    from lapsv.frontends import build_frontend
    from lapsv.losses import AAMSoftmax

    if "LAPSV_THREADS" in os.environ:
        torch.set_num_threads(int(os.environ["LAPSV_THREADS"]))
    wave = torch.from_numpy(load_audio(CLIP))[None, : 3 * 16_000]
    lengths = torch.tensor([wave.shape[1]])
    result: dict[str, Any] = {"torch_threads": torch.get_num_threads()}
    arrays: dict[str, np.ndarray] = {}
    for name in ("ge2e", "whisper"):
        source = "whisper-base" if name == "whisper" else None
        frontend = build_frontend(FrontendConfig(name=name, source=source)).eval()
        with torch.no_grad():
            hidden = frontend(wave, lengths).hidden_states.numpy()
            seconds = []
            for _ in range(3):
                start = time.perf_counter()
                frontend(wave, lengths)
                seconds.append(time.perf_counter() - start)
        arrays[name] = hidden
        result[name] = _digest(hidden)
        result[f"{name}_seconds"] = statistics.median(seconds)
    torch.manual_seed(0)
    n_layers, dim = arrays["whisper"].shape[1], arrays["whisper"].shape[3]
    backend = build_backend("lap", "astp", in_dim=dim, n_layers=n_layers).train()
    head = AAMSoftmax(backend.embed_dim, CLASSES).train()
    hidden = torch.randn(BATCH, n_layers, FRAMES, dim)
    frame_lengths = torch.full((BATCH,), FRAMES)
    labels = torch.randint(0, CLASSES, (BATCH,))
    optimizer = torch.optim.AdamW([*backend.parameters(), *head.parameters()], lr=1e-3)
    losses, seconds = [], []
    for _ in range(steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = head(backend(hidden, frame_lengths), labels).loss
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
        losses.append(loss.item())
    weights = np.concatenate([p.detach().numpy().ravel() for p in backend.parameters()])
    arrays["weights"] = weights
    np.savez(out, **arrays)
    result.update(
        training=_digest(weights),
        losses=[value.hex() for value in losses],
        seconds_per_step=statistics.median(seconds[1:] or seconds),
    )
    return result


def _run_setting(name: str, steps: int, folder: Path) -> dict[str, Any]:
    env = {key: value for key, value in os.environ.items() if key not in AVX2_PINS}
    env.update(SETTINGS[name])
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{list(SETTINGS).index(name)}.npz"
    command = [sys.executable, "-m", "benchmarks.reproducibility", "--child", str(out)]
    done = subprocess.run(
        [*command, "--steps", str(steps)],
        env=env,
        cwd=HERE.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["arrays"] = str(out)
    return result


def _compare(run: dict[str, Any], default: dict[str, Any]) -> dict[str, Any]:
    """This setting against the default: identical or by how much it differs."""
    mine, base = np.load(run["arrays"]), np.load(default["arrays"])
    row: dict[str, Any] = {}
    for key in ("ge2e", "whisper", "training"):
        array = "weights" if key == "training" else key
        difference = np.abs(mine[array].astype(np.float64) - base[array]).max()
        scale = np.abs(base[array]).max()
        row[key] = {
            "identical": run[key] == default[key],
            "max_relative_difference": float(difference / scale),
        }
    losses = [float.fromhex(v) for v in run["losses"]]
    base_losses = [float.fromhex(v) for v in default["losses"]]
    differs = [i for i, (a, b) in enumerate(zip(losses, base_losses, strict=True)) if a != b]
    row["training"]["first_step_whose_loss_differs"] = differs[0] + 1 if differs else None
    row["training"]["max_loss_difference"] = max(
        abs(a - b) for a, b in zip(losses, base_losses, strict=True)
    )
    return row


def _median_ratio(runs: dict[str, list[dict[str, Any]]], name: str, key: str) -> float:
    """Median of ``key`` over the setting's rounds, over the default's."""
    mine = statistics.median(r[key] for r in runs[name])
    return mine / statistics.median(r[key] for r in runs["default"])


def run(steps: int, rounds: int) -> dict[str, Any]:
    """Every setting ``rounds`` times, alternating; compared with the default's first run."""
    with tempfile.TemporaryDirectory() as tmp:
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SETTINGS}
        for round_ in range(rounds):
            for name in SETTINGS:
                runs[name].append(_run_setting(name, steps, Path(tmp) / str(round_)))
                print(f"round {round_ + 1}/{rounds}: {name}", file=sys.stderr, flush=True)
        default = runs["default"][0]
        settings = {}
        for name, results in runs.items():
            seconds = statistics.median(r["seconds_per_step"] for r in results)
            settings[name] = {
                "environment": SETTINGS[name],
                "torch_threads": results[0]["torch_threads"],
                **_compare(results[0], default),
                "same_result_every_round": len({r["training"] for r in results}) == 1,
                "seconds_per_training_step": seconds,
                "time_vs_default": _median_ratio(runs, name, "seconds_per_step"),
                **{
                    f"{side}_time_vs_default": _median_ratio(runs, name, f"{side}_seconds")
                    for side in ("ge2e", "whisper")
                },
            }
    return {"steps": steps, "rounds": rounds, "settings": settings}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(HERE / "results" / "reproducibility-cpu.json"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.steps, Path(args.child))))
        return 0
    import torch

    from benchmarks.common import machine

    result = {"machine": machine(torch.device("cpu")), **run(args.steps, args.rounds)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    for name, row in result["settings"].items():
        same = ", ".join(f"{k} {'same' if row[k]['identical'] else 'differs'}" for k in KEYS)
        times = f"{row['time_vs_default']:.2f}x step, {row['whisper_time_vs_default']:.2f}x Whisper"
        print(f"{name:40s} {same}; {times}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
