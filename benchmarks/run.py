"""The benchmark suite of issue 7, in one process so that ratios are fair.

    python -m benchmarks.run                      # CPU, sizes that fit 10 minutes on 2 cores
    python -m benchmarks.run --device cuda        # GPU: the issue's full sizes, bf16 autocast
    python -m benchmarks.run --size tiny --only backend scoring --out /tmp/b.json

Items (``--only`` names):

* ``backend``: 1. backend training step, LAP+ASTP vs SUPERB+ASTP vs SUPERB+ECAPA-TDNN
  (C=1024) vs LAP+MHFA on WavLM-Base+ and -Large shaped hidden states;
* ``frontend``: 2. stage-1 step with the frozen frontend in the loop, 3. its FLOP
  utilisation, 4. stage 2/3 fine-tuning memory with and without gradient checkpointing;
* ``data``: 5. data-loading utterances/s of one CPU worker;
* ``inference``: 6. ``embed`` speed, length-bucketed vs one-by-one, same embeddings;
* ``scoring``: 7. EER/minDCF on 10^7 scores, cosine + AS-norm on 550k trials.

On CPU torch runs 1 thread unless ``--threads`` says otherwise: on a shared 2-core machine
two OpenMP threads that wait for each other were up to 3x slower than one (measured on
GE2E, which the inference item times at 1 and 2 threads); numpy (scoring) keeps its own
threads. Writes ``benchmarks/results/bench-<device>.json`` (``--out``; with ``--only`` the other
items already in that file are kept) and regenerates ``benchmarks/RESULTS.md``
(``--markdown``) from every ``bench-*.json`` beside it: one section per device.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks import augment, backend, frontend, inference, report, scoring
from benchmarks.common import SIZES, load_average, machine
from lapsv.files import atomic_write_text

HERE = Path(__file__).parent
RESULTS_DIR = HERE / "results"
MARKDOWN = HERE / "RESULTS.md"
ITEMS = ("backend", "frontend", "data", "inference", "scoring")
DEFAULT_SIZE = {"cpu": "small", "cuda": "full"}


def _run_item(name: str, size: str, device: torch.device, precision: str, log) -> dict[str, Any]:
    if name == "backend":
        return backend.run(size, device, precision, log)
    if name == "frontend":
        return frontend.run(size, device, precision, log)
    if name == "inference":
        return inference.run(size, device, "fp32", log)
    if name == "data":
        return augment.run(size)
    if name == "scoring":
        return scoring.run(small=size == "tiny")
    raise ValueError(name)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--size",
        choices=SIZES,
        help="tiny (smoke test), small (CPU default), full (the issue's sizes; GPU default)",
    )
    parser.add_argument("--only", nargs="+", choices=ITEMS, metavar="NAME", help=", ".join(ITEMS))
    parser.add_argument("--out", type=Path, help="JSON file (default results/bench-DEVICE.json)")
    parser.add_argument("--markdown", type=Path, default=MARKDOWN, help="markdown report")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads; default 1 with --device cpu (on a shared machine, OpenMP "
        "threads that wait for each other make timings erratic and slow), 0: torch's default",
    )
    parser.add_argument(
        "--precision",
        choices=["bf16", "fp32"],
        help="autocast of the training items (default bf16 on cuda, fp32 on cpu)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("error: --device cuda but torch sees no CUDA device")
    device = torch.device(args.device)
    threads = torch.get_num_threads()
    wanted = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    if wanted > 0:
        torch.set_num_threads(wanted)
    try:
        return _main(args, device)
    finally:
        torch.set_num_threads(threads)


def _main(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    size = args.size or DEFAULT_SIZE[args.device]
    precision = args.precision or ("bf16" if args.device == "cuda" else "fp32")
    suffix = "" if size == DEFAULT_SIZE[args.device] else f"-{size}"
    out = args.out or RESULTS_DIR / f"bench-{args.device}{suffix}.json"
    items = list(args.only or ITEMS)
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)

    data: dict[str, Any] = {"items": {}}
    if args.only and out.exists():  # keep the items measured before
        previous = json.loads(out.read_text())
        if previous.get("device") == args.device and previous.get("size") == size:
            data = previous
    data.update(
        {
            "device": args.device,
            "size": size,
            "precision": precision,
            "command": " ".join(["python -m benchmarks.run", *args.argv]),
            "machine": machine(device),
        }
    )
    log(f"device {device}, size {size}, precision {precision}, items {', '.join(items)}")
    for name in items:
        item_started = time.perf_counter()
        log(f"{name} ...")
        result = _run_item(name, size, device, precision, log)
        result["seconds"] = time.perf_counter() - item_started
        result["date"] = data["machine"]["date"]
        result["load_average_after"] = load_average()
        data["items"][name] = result
        log(f"{name} done in {result['seconds']:.1f} s")
    data["machine"]["load_average_end"] = load_average()
    data["total_seconds"] = time.perf_counter() - started
    data["targets"] = report.targets(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(data, indent=1) + "\n")
    atomic_write_text(args.markdown, report.render(out.parent))
    log(f"wrote {out} and {args.markdown} ({data['total_seconds']:.0f} s in all)")
    print(report.render_targets(data))
    return data


if __name__ == "__main__":
    main()
