"""`lapsv serve` as a server process on 127.0.0.1: 32 concurrent clients get the CLI's
answers with no 5xx, and a SIGKILL during an enrolment leaves the database consistent.

Every loop is bounded in count and time; the server listens on the loopback only.
``benchmarks/serve_load.py`` runs the same load with more requests and writes the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from lapsv.speakers import SpeakerDB  # noqa: E402
from test_fuzz_audio import wav_bytes  # noqa: E402
from test_serve import (  # noqa: E402
    THRESHOLD,
    _one_torch_thread,  # noqa: F401 (an autouse fixture: one torch thread here too)
    cli,
    identify_lines,
    verify_lines,
)

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level package beside src/
    sys.path.insert(0, str(ROOT))

from benchmarks import serve_load  # noqa: E402

DATA = Path(__file__).parent / "data"
SERVER_ARGS = ["--rate_limit", "0", "--max_concurrent", "64"]
ROBUST = ["--threads", "1"]  # the default run's server: fast on a busy 2-core machine too


def cli_answers(capsys, db: Path, mix: list[dict]) -> list[list[str]]:
    """What `lapsv verify` / `lapsv identify` print for each call of the mix (identify: one
    run for all the clips, cut into one block per recording)."""
    threshold = ["--threshold", str(THRESHOLD)]
    clips = sorted({call["clips"][0] for call in mix if call["route"] == "/v1/identify"})
    printed = cli(
        capsys, "identify", "ge2e", "--db", str(db), *(str(DATA / c) for c in clips),
        "--top-k", "2", *threshold,
    )  # fmt: skip
    starts = [i for i, line in enumerate(printed) if " -> " in line] + [len(printed)]
    blocks = {clip: printed[a:b] for clip, a, b in zip(clips, starts, starts[1:], strict=False)}
    answers = []
    for call in mix:
        if call["route"] == "/v1/identify":
            answers.append(blocks[call["clips"][0]])
        else:
            paths = [str(DATA / clip) for clip in call["clips"]]
            answers.append(cli(capsys, "verify", "ge2e", *paths, *threshold))
    return answers


def served_lines(route: str, body: dict, clips: list[str]) -> list[str]:
    if route == "/v1/verify":
        return verify_lines(body)
    return identify_lines(body["results"][0], str(DATA / clips[0]))


def check_load(result: dict, expected: list[list[str]]) -> None:
    """No 5xx or failed request, and every answer is the CLI's."""
    mix = result["mix"]
    for phase in ("one_at_a_time", "concurrent"):
        figures = result[phase]
        assert figures["server_errors"] == 0 and figures["status_counts"] == {
            "200": figures["requests"]
        }, figures["status_counts"]
        for record in figures["records"]:
            call = mix[record["call"]]
            lines = served_lines(call["route"], record["body"], call["clips"])
            assert lines == expected[record["call"]], (call, record["body"])
        assert 0 < figures["latency_p50_s"] <= figures["latency_p99_s"]
        assert figures["throughput_rps"] > 0


def test_32_concurrent_clients_get_the_clis_answers(tmp_path, capsys):
    with serve_load.server(tmp_path / "server", args=SERVER_ARGS + ROBUST) as srv:
        serve_load.enrol_speakers(srv)
        result = serve_load.measure(
            srv.url, srv.verify_key, clients=32, requests=64, sequential=12, deadline=120
        )
        expected = cli_answers(capsys, srv.db, result["mix"])
    assert result["concurrent"]["requests"] == 64 and result["one_at_a_time"]["requests"] == 12
    check_load(result, expected)
    assert result["concurrent"]["model"]["mean_batch_size"] > 1  # batched
    (tmp_path / "serve_load.json").write_text(json.dumps(result))
    with capsys.disabled():
        print(f"\n{serve_load.summary(result)}")


@pytest.mark.slow
def test_32_concurrent_clients_full_load(tmp_path, capsys):
    """The benchmark's sizes: 256 concurrent requests against 40 one at a time."""
    with serve_load.server(tmp_path / "server", args=SERVER_ARGS) as srv:
        serve_load.enrol_speakers(srv)
        result = serve_load.measure(srv.url, srv.verify_key, clients=32, deadline=300)
        expected = cli_answers(capsys, srv.db, result["mix"])
    check_load(result, expected)
    with capsys.disabled():
        print(f"\n{serve_load.summary(result)}")


def _recordings() -> list[tuple[str, tuple[str, bytes]]]:
    """Six different recordings (the clips, and two of them quieter): six utterances."""
    files = [("audio", (p.name, p.read_bytes())) for p in sorted(DATA.glob("*.flac"))]
    for path in sorted(DATA.glob("*_1.flac")):
        samples, rate = soundfile.read(path)
        files.append(("audio", (f"quiet_{path.stem}.wav", wav_bytes(0.5 * samples, rate))))
    return files


def _kill_during_enrol(folder: Path, *, when: str, delay: float = 0.0) -> tuple[int, int]:
    """Enrol carol with six recordings and SIGKILL the server at ``when``: "write" (as
    soon as the database's write-ahead log grows) or "delay" (``delay`` s after sending).
    Returns carol's utterances and alice's, read after the kill."""
    with serve_load.server(folder, args=SERVER_ARGS + ROBUST) as srv:
        serve_load.enrol_speakers(srv)
        wal = srv.db.with_name(srv.db.name + "-wal")
        size = wal.stat().st_size if wal.exists() else 0
        headers = {"Authorization": f"Bearer {srv.admin_key}"}

        def enrol() -> None:
            with contextlib.suppress(httpx.HTTPError):  # the connection dies with the server
                url = f"{srv.url}/v1/speakers/carol"
                httpx.post(url, files=_recordings(), headers=headers, timeout=60)

        sender = threading.Thread(target=enrol)
        sender.start()
        deadline = time.monotonic() + (delay if when == "delay" else 30.0)
        while time.monotonic() < deadline and sender.is_alive():
            if when == "write" and wal.exists() and wal.stat().st_size != size:
                break
            time.sleep(0.0005)
        os.kill(srv.process.pid, signal.SIGKILL)
        srv.process.wait(10)
        sender.join(60)
    assert not sender.is_alive()
    assert sqlite3.connect(srv.db).execute("PRAGMA integrity_check").fetchone() == ("ok",)
    with SpeakerDB(srv.db) as db:
        counts = {s.name: s.utterances for s in db.speakers()}
        models = db.models()
    assert np.isfinite(models.vectors).all()
    return counts.get("carol", 0), counts["alice"]


def test_sigkill_during_an_enrol_leaves_the_database_consistent(tmp_path):
    carol, alice = _kill_during_enrol(tmp_path / "server", when="write")
    assert carol in (0, 6) and alice == 1  # the enrolment is all there, or not at all


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.05, 0.2, 0.4, 0.6, 0.8, 1.2])
def test_sigkill_at_any_moment_of_an_enrol(tmp_path, delay):
    carol, alice = _kill_during_enrol(tmp_path / "server", when="delay", delay=delay)
    assert carol in (0, 6) and alice == 1
