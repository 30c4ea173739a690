"""What every benchmark item shares: devices, timing, memory, machine description.

Timings are wall-clock medians over ``repeats`` calls after ``warmup`` calls, with the
device synchronised around each call. Memory:

* on CUDA, ``torch.cuda.max_memory_allocated`` during the call, above what was allocated
  before it;
* on CPU, the same quantity from the torch profiler's allocation events (the "Total
  Allocated" of the CPU allocator in its trace): tensors only, exact, and unaffected by
  other processes. ``resource.ru_maxrss`` is a high-water mark of the whole process and
  tracemalloc does not see torch's allocations, so neither is used.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

SIZES = ("tiny", "small", "full")

# Dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched against
# torch.cuda.get_device_name(); the first matching key wins, so specific names come first.
GPU_BF16_PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,  # SXM / HBM3
    "H200": 989.4,
    "GH200": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "A800": 312.0,
    "L40S": 362.1,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 4090": 165.2,
    "RTX 3090": 71.0,
}


def gpu_bf16_peak_tflops(name: str) -> float | None:
    """The card's dense bf16 peak, looked up by (part of) its name; None if unknown."""
    for key, peak in GPU_BF16_PEAK_TFLOPS.items():
        if key.lower() in name.lower():
            return peak
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``precision == "bf16"``, else nothing (fp32)."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def time_call(
    function: Callable[[], Any], device: torch.device, *, repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median and min milliseconds of ``function()`` over ``repeats`` calls after ``warmup``."""
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(max(repeats, 1)):
        started = time.perf_counter()
        function()
        synchronize(device)
        times.append((time.perf_counter() - started) * 1e3)
    return {"ms": statistics.median(times), "min_ms": min(times), "repeats": len(times)}


def time_round_robin(
    functions: dict[str, Callable[[], Any]], device: torch.device, *, repeats: int
) -> dict[str, dict[str, float]]:
    """Like :func:`time_call` for several functions (already warm), called in turns.

    Interleaving spreads the load of other processes over all of them alike, so their
    ratios are fairer than those of back-to-back blocks on a shared machine.
    """
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(max(repeats, 1)):
        for name, function in functions.items():
            synchronize(device)
            started = time.perf_counter()
            function()
            synchronize(device)
            times[name].append((time.perf_counter() - started) * 1e3)
    return {
        name: {"ms": statistics.median(t), "min_ms": min(t), "repeats": len(t)}
        for name, t in times.items()
    }


def peak_memory(function: Callable[[], Any], device: torch.device) -> dict[str, Any]:
    """Peak tensor bytes allocated while ``function()`` runs, above those live before it."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        function()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        return {"peak_mb": peak / 2**20, "memory_method": "torch.cuda.max_memory_allocated"}
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as profiler:
        function()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        profiler.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text())["traceEvents"]
    totals = [
        event["args"]["Total Allocated"]
        for event in events
        if event.get("name") == "[memory]" and "Total Allocated" in event.get("args", {})
    ]
    # the profiler counts from zero at its start: the values are bytes above that
    peak = max(totals, default=0)
    return {"peak_mb": peak / 2**20, "memory_method": "torch.profiler CPU allocator events"}


@contextlib.contextmanager
def saved_tensor_bytes(exclude: set[int] = frozenset()) -> Iterator[dict[str, int]]:
    """Count the bytes of distinct storages autograd saves for backward inside the block,
    except those whose ``data_ptr`` is in ``exclude`` (e.g. the weights)."""
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in exclude:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    result = {"bytes": 0}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield result
    result["bytes"] = sum(storages.values())


def top_ops(function: Callable[[], Any], device: torch.device, rows: int = 15) -> list[dict]:
    """torch.profiler's top operators by self time (CUDA time on GPU) of one call."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with profile(activities=activities, record_shapes=True) as profiler:
        function()
        synchronize(device)
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = profiler.key_averages(group_by_input_shape=True)
    total = sum(getattr(event, key) for event in averages) or 1.0
    top = sorted(averages, key=lambda event: getattr(event, key), reverse=True)[:rows]
    return [
        {
            "op": event.key,
            "input_shapes": str(event.input_shapes)[:100],
            "self_ms": getattr(event, key) / 1e3,
            "share": getattr(event, key) / total,
            "calls": event.count,
        }
        for event in top
    ]


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def machine(device: torch.device) -> dict[str, Any]:
    """Where and with what the numbers were measured."""
    import scipy
    import transformers

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "machine_name": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        # other processes on a shared machine inflate timings: 1, 5, 15-minute load averages
        "load_average_start": load_average(),
        "device": str(device),
        "gpu": None,
    }
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        info["gpu"] = {
            "name": name,
            "memory_gb": torch.cuda.get_device_properties(device).total_memory / 1e9,
            "bf16_peak_tflops": gpu_bf16_peak_tflops(name),
            "cuda": torch.version.cuda,
        }
    return info


def finite_positive(value: Any) -> bool:
    return isinstance(value, int | float) and bool(np.isfinite(value)) and value > 0


def format_value(value: Any) -> str:
    """Numbers with as many decimals as their size deserves (3 significant digits)."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 0.01 or magnitude == 0:
        return f"{value:.2f}"
    return f"{value:.2g}"


def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; numbers through :func:`format_value`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(format_value(cell) for cell in row) + " |")
    return "\n".join(lines)
