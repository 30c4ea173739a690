"""Load test of ``lapsv serve``: one request at a time against N concurrent clients.

    python -m benchmarks.serve_load --out /tmp/serve_load.json            # 32 clients
    python -m benchmarks.serve_load --clients 32 --requests 512 --sequential 64

Starts a server subprocess on 127.0.0.1 (a free port; nothing leaves the machine) with
the built-in GE2E model, enrols the two speakers of ``tests/data``, then sends the same mix
of requests (``/v1/verify`` of every pair of the four clips, ``/v1/identify`` of each clip)
first one at a time, then from ``--clients`` concurrent clients. Every loop is bounded in
count (``--requests``, ``--sequential``) and in time (``--deadline`` seconds per phase).
Writes latency percentiles, throughput, their ratio, the status counts and every answer
to JSON. ``tests/test_serve_load.py`` runs it with fewer requests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from benchmarks.common import load_average, machine
from lapsv.serve.keys import KeyStore

HERE = Path(__file__).parent
CLIPS = HERE.parent / "tests" / "data"
THRESHOLD = 0.8  # the README's threshold for GE2E on these clips


@dataclasses.dataclass(frozen=True)
class Server:
    url: str
    admin_key: str
    verify_key: str
    db: Path
    process: subprocess.Popen


@dataclasses.dataclass(frozen=True)
class Call:
    """One request of the mix: a route and the clips it sends (verify: a, b; identify)."""

    route: str
    clips: tuple[str, ...]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float) -> None:
    """Poll ``/healthz`` until it answers (bounded by ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the server did not answer within {timeout:g} s")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (a graceful shutdown), then SIGKILL if it takes over 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextlib.contextmanager
def server(folder: Path, *, args: Sequence[str] = (), timeout: float = 120.0) -> Iterator[Server]:
    """A ``lapsv serve ge2e`` subprocess with an admin and a verify key, stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = KeyStore(folder / "keys.toml")
    admin, verify = keys.add("admin", role="admin"), keys.add("verify", role="verify")
    port = free_port()
    command = [
        *(sys.executable, "-m", "lapsv", "serve", "ge2e", "--db", str(folder / "speakers.db")),
        *("--keys", str(folder / "keys.toml"), "--port", str(port), "--log_level", "warning"),
        *args,
    ]
    log = open(folder / "server.log", "wb")  # noqa: SIM115 (closed below)
    env = {**os.environ, "TMPDIR": str(folder)}  # its upload folder too, even if killed
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, process, timeout)
        yield Server(url, admin, verify, folder / "speakers.db", process)
    finally:
        stop(process)
        log.close()


def enrol_speakers(srv: Server, clips: Path = CLIPS) -> dict[str, str]:
    """Enrol speaker_a_1 as alice and speaker_b_1 as bob; returns name -> clip."""
    enrolled = {"alice": "speaker_a_1.flac", "bob": "speaker_b_1.flac"}
    headers = {"Authorization": f"Bearer {srv.admin_key}"}
    for name, clip in enrolled.items():
        files = {"audio": (clip, (clips / clip).read_bytes())}
        answer = httpx.post(
            f"{srv.url}/v1/speakers/{name}", files=files, headers=headers, timeout=60
        )
        answer.raise_for_status()
    return enrolled


def request_mix(clips: Path = CLIPS) -> list[Call]:
    """verify of every pair of the clips, and identify of each clip."""
    names = sorted(p.name for p in clips.glob("*.flac"))
    verifies = [Call("/v1/verify", pair) for pair in itertools.combinations(names, 2)]
    return verifies + [Call("/v1/identify", (name,)) for name in names]


async def _send(client: httpx.AsyncClient, call: Call, audio: dict[str, bytes]) -> httpx.Response:
    data = {"threshold": str(THRESHOLD)}
    if call.route == "/v1/verify":
        files = [(field, (clip, audio[clip])) for field, clip in zip("ab", call.clips, strict=True)]
    else:
        files = [("audio", (call.clips[0], audio[call.clips[0]]))]
        data["top_k"] = "2"
    return await client.post(call.route, files=files, data=data)


async def _phase(
    url: str, key: str, mix: list[Call], *, clients: int, total: int, deadline: float
) -> dict[str, Any]:
    """``total`` requests of ``mix`` (round robin) from ``clients`` concurrent clients."""
    audio = {p.name: p.read_bytes() for p in CLIPS.glob("*.flac")}
    order = iter(range(total))
    records: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(
        base_url=url, headers=headers, limits=limits, timeout=120.0
    ) as client:

        async def worker() -> None:
            for index in order:  # shared iterator: each request is sent once
                call = mix[index % len(mix)]
                start = time.perf_counter()
                try:
                    response = await _send(client, call, audio)
                    status, body = response.status_code, response.json()
                except (httpx.HTTPError, ValueError) as error:
                    status, body = 0, {"error": f"{type(error).__name__}: {error}"}
                seconds = time.perf_counter() - start
                records.append(
                    {"call": index % len(mix), "status": status, "seconds": seconds, "body": body}
                )

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(clients))), deadline)
        wall = time.perf_counter() - start
    latencies = np.array([r["seconds"] for r in records])
    statuses: dict[str, int] = {}
    for record in records:
        statuses[str(record["status"])] = statuses.get(str(record["status"]), 0) + 1
    return {
        "clients": clients,
        "requests": len(records),
        "seconds": wall,
        "throughput_rps": len(records) / wall,
        "latency_p50_s": float(np.percentile(latencies, 50)),
        "latency_p99_s": float(np.percentile(latencies, 99)),
        "latency_max_s": float(latencies.max()),
        "status_counts": statuses,
        "server_errors": sum(1 for r in records if r["status"] >= 500 or r["status"] == 0),
        "records": records,
    }


def batch_totals(url: str, key: str) -> dict[str, float]:
    """Sums of the server's batch histograms (``/metrics``): batches, recordings, seconds."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {key}"}).text
    names = {
        "lapsv_batch_size_count": "batches",
        "lapsv_batch_size_sum": "recordings",
        "lapsv_batch_seconds_sum": "model_seconds",
    }
    values = dict(line.split() for line in text.splitlines() if line.split(" ")[0] in names)
    return {names[name]: float(value) for name, value in values.items()}


def _measured_phase(url: str, key: str, mix: list[Call], **options: Any) -> dict[str, Any]:
    """One phase, with what the model did meanwhile: mean batch size, busy share, ms per
    recording (from the server's metrics)."""
    before = batch_totals(url, key)
    result = asyncio.run(_phase(url, key, mix, **options))
    after = batch_totals(url, key)
    batches, recordings, busy = (
        after[k] - before[k] for k in ("batches", "recordings", "model_seconds")
    )
    result["model"] = {
        "batches": batches,
        "mean_batch_size": recordings / max(batches, 1),
        "busy_share": busy / result["seconds"],
        "ms_per_recording": 1e3 * busy / max(recordings, 1),
    }
    return result


def measure(
    url: str,
    key: str,
    *,
    clients: int = 32,
    requests: int = 256,
    sequential: int = 40,
    deadline: float = 300.0,
) -> dict[str, Any]:
    """One-at-a-time and concurrent phases on the same mix; a short warm-up first."""
    mix = request_mix()
    asyncio.run(_phase(url, key, mix, clients=4, total=len(mix), deadline=deadline))  # warm-up
    one = _measured_phase(url, key, mix, clients=1, total=sequential, deadline=deadline)
    many = _measured_phase(url, key, mix, clients=clients, total=requests, deadline=deadline)
    return {
        "mix": [dataclasses.asdict(call) for call in mix],
        "one_at_a_time": one,
        "concurrent": many,
        "throughput_ratio": many["throughput_rps"] / one["throughput_rps"],
    }


def summary(result: dict[str, Any]) -> str:
    one, many = result["one_at_a_time"], result["concurrent"]
    return (
        f"one at a time: {one['throughput_rps']:.1f} req/s (p50 {one['latency_p50_s'] * 1e3:.0f}"
        f" ms); {many['clients']} clients: {many['throughput_rps']:.1f} req/s (p50 "
        f"{many['latency_p50_s'] * 1e3:.0f} ms, p99 {many['latency_p99_s'] * 1e3:.0f} ms); "
        f"ratio {result['throughput_ratio']:.2f}x; 5xx or failed: {many['server_errors']}\n"
        f"model: {one['model']['ms_per_recording']:.1f} ms per recording alone (busy "
        f"{100 * one['model']['busy_share']:.0f}% of the time), "
        f"{many['model']['ms_per_recording']:.1f} ms in batches of "
        f"{many['model']['mean_batch_size']:.1f} (busy {100 * many['model']['busy_share']:.0f}%)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="JSON file (default: print the summary only)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=256, help="of the concurrent phase")
    parser.add_argument("--sequential", type=int, default=40, help="one-at-a-time requests")
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds per phase")
    parser.add_argument("--folder", type=Path, default=Path("/tmp/lapsv-serve-load"))
    parser.add_argument("--server_args", default="", help="more `lapsv serve` options")
    args = parser.parse_args(argv)
    server_args = ["--rate_limit", "0", "--max_concurrent", str(2 * args.clients)]
    load_at_start = load_average()  # other processes on the machine skew every figure
    with server(args.folder, args=server_args + args.server_args.split()) as srv:
        enrol_speakers(srv)
        result = measure(
            srv.url,
            srv.verify_key,
            clients=args.clients,
            requests=args.requests,
            sequential=args.sequential,
            deadline=args.deadline,
        )
    result["machine"] = {
        **machine(torch.device("cpu")),
        "load_average_start": load_at_start,
        "load_average_end": load_average(),
    }
    result["server_args"] = server_args + args.server_args.split()
    print(summary(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
        print(f"-> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
