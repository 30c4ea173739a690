"""Diarization speed and memory (issue 24): ``diarize`` end to end on generated conversations.

Conversations are built deterministically (seeded) from real speech: by default the bundled
clips in tests/data (2 speakers, 3.5-5 s each, repeated), with ``--corpus`` the clips of a
manifest (4 of its speakers); one clip per turn, the speaker changing at every turn, each at
a random gain (peak -1 to -13 dBFS), followed by a pause of 0.2-1.5 s of faint noise
(-60 dBFS); written as 16-bit FLAC. A shorter conversation with the same seed is the start
of a longer one. Items:

* **GE2E** (the built-in default): ``diarize`` on a file (Silero VAD + window embeddings +
  spectral clustering), ``repeats`` runs per thread count (torch's, and numpy / scipy's
  BLAS pools: both are set), all reported, the best one's stage shares; x real time =
  audio seconds / wall seconds;
* **Whisper**: an untrained LAP + ASTP (the demo recipe's sizes) on the built-in
  whisper-base encoder, ``embedding_pass`` window (each 1.5 s window alone) vs shared (one
  encoder pass per 30 s block, windows pooled from its hidden states);
* **long recording**: ``diarize`` with GE2E on a long file in a fresh process: wall time,
  peak resident memory (the child's own VmHWM: ``RUSAGE_CHILDREN``'s ru_maxrss would count
  this process's pages at the fork), resident memory sampled every 0.1 s (its peak per
  stage), and the number of speakers it prints;
* **clustering**: spectral clustering alone on W synthetic window embeddings (256-d, 4
  speakers), with diarize's default ``p`` and with ``p`` chosen per recording (NME-SC):
  seconds, how many eigen-decompositions it runs and their seconds, peak numpy memory
  (tracemalloc).

    python -m benchmarks.diarization --size full   # 10 min, Whisper 10 min, 1 hour
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import scipy.linalg
import soundfile
import torch
from threadpoolctl import threadpool_limits

import lapsv
from benchmarks.common import load_average, machine
from benchmarks.report import render
from lapsv.audio import SAMPLE_RATE, load_audio
from lapsv.config import BackendConfig, FrontendConfig, ModelConfig
from lapsv.data.manifest import read_manifest
from lapsv.diarization import DiarizeOptions, SileroVAD, clustering, diarize
from lapsv.files import atomic_write_text

HERE = Path(__file__).parent
ROOT = HERE.parent
RESULTS_DIR, MARKDOWN = HERE / "results", HERE / "RESULTS.md"
CLIPS_DIR = ROOT / "tests" / "data"
SEED = 24
WHISPER_BACKEND = BackendConfig(  # recipes/demo_whisper.yaml's LAP + ASTP
    aggregation="lap",
    speaker_net="astp",
    embed_dim=128,
    lap_heads=16,
    lap_out_dim=256,
    lap_init="identity",
    per_layer_norm=True,
)


@dataclasses.dataclass(frozen=True)
class Size:
    """Seconds of each conversation, runs per setting, torch thread counts, cluster sizes."""

    conversation: float  # GE2E
    whisper: float
    long: float  # the fresh-process memory run
    repeats: int  # GE2E runs per thread count
    whisper_repeats: int
    threads: tuple[int, ...]
    cluster_windows: tuple[int, ...]
    auto_windows: int  # clustering with the default p up to this many windows


SIZES = {
    "tiny": Size(40.0, 10.0, 60.0, 1, 1, (1,), (300,), 300),
    "small": Size(600.0, 120.0, 600.0, 3, 2, (1, 2), (1000, 2000), 1000),
    "full": Size(600.0, 600.0, 3600.0, 3, 2, (1, 2), (1000, 2000, 4000, 8000), 2000),
}


@dataclasses.dataclass(frozen=True)
class Clips:
    """Speech to build conversations from: speaker -> mono 16 kHz clips."""

    source: str
    speakers: dict[str, list[np.ndarray]]


def bundled_clips() -> Clips:
    """tests/data's four clips: speaker_a_1/2 and speaker_b_1/2."""
    speakers: dict[str, list[np.ndarray]] = {}
    for path in sorted(CLIPS_DIR.glob("speaker_*.flac")):
        speakers.setdefault(path.stem.rsplit("_", 1)[0], []).append(load_audio(path))
    return Clips(f"tests/data ({', '.join(sorted(speakers))}; clips repeated)", speakers)


def corpus_clips(manifest: str | Path, *, n_speakers: int = 4, per_speaker: int = 40) -> Clips:
    """Up to ``per_speaker`` clips of each of ``n_speakers`` speakers of a manifest (seeded)."""
    corpus = read_manifest(manifest)
    rng = np.random.default_rng(SEED)
    names = sorted(rng.choice(corpus.speakers, min(n_speakers, len(corpus.speakers)), False))
    speakers = {}
    for name in names:
        own = [u for u in corpus if u.speaker == name]
        chosen = rng.choice(len(own), min(per_speaker, len(own)), replace=False)
        speakers[str(name)] = [load_audio(corpus.audio_path(own[i])) for i in sorted(chosen)]
    count = sum(len(c) for c in speakers.values())
    return Clips(f"{manifest} ({', '.join(speakers)}; {count} clips)", speakers)


def write_conversation(path: Path, clips: Clips, seconds: float) -> dict[str, Any]:
    """A seeded conversation of exactly ``seconds`` as 16-bit FLAC; what it holds."""
    rng = np.random.default_rng(SEED)
    names = sorted(clips.speakers)
    total, written, speech, turns = round(seconds * SAMPLE_RATE), 0, 0, 0
    used: set[str] = set()
    previous = None
    with soundfile.SoundFile(path, "w", SAMPLE_RATE, 1, subtype="PCM_16") as out:
        while written < total:
            choices = [n for n in names if n != previous] or names
            previous = choices[rng.integers(len(choices))]
            group = clips.speakers[previous]
            clip = group[rng.integers(len(group))]
            level = 10 ** (rng.uniform(-13.0, -1.0) / 20) / max(float(np.abs(clip).max()), 1e-4)
            pause = rng.normal(0.0, 1e-3, round(rng.uniform(0.2, 1.5) * SAMPLE_RATE))
            turn = np.concatenate([clip * level, pause]).astype(np.float32)[: total - written]
            out.write(turn)
            speech += min(len(clip), len(turn))
            written += len(turn)
            turns += 1
            used.add(previous)
    return {
        "seconds": total / SAMPLE_RATE,
        "speakers": len(used),
        "turns": turns,
        "speech_seconds": speech / SAMPLE_RATE,
        "file_mb": path.stat().st_size / 2**20,
    }


@contextlib.contextmanager
def thread_count(n: int) -> Iterator[None]:
    """``n`` torch threads (torch.set_num_threads) and ``n`` BLAS / OpenMP threads for numpy
    and scipy (threadpoolctl) inside the block; torch's previous count restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(n):
            yield
    finally:
        torch.set_num_threads(before)


def timed_runs(
    model: lapsv.Speaker,
    path: Path,
    *,
    vad: SileroVAD,
    options: DiarizeOptions,
    repeats: int,
) -> dict[str, Any]:
    """``repeats`` runs of ``diarize`` on a file: each run's wall time and stage seconds;
    the best run's x real time and stage shares (of its wall time)."""
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = diarize(model, path, options=options, vad=vad)
        wall = time.perf_counter() - start
        runs.append(
            {
                "wall_s": wall,
                "x_real_time": result.duration / wall,
                "seconds": dict(result.seconds),
                "num_speakers": len(result.speakers),
            }
        )
    best = min(runs, key=lambda run: run["wall_s"])
    shares = {stage: s / best["wall_s"] for stage, s in best["seconds"].items()}
    shares["other"] = max(0.0, 1.0 - sum(shares.values()))  # opening the file, segments
    return {
        "duration_s": result.duration,
        "speech_s": result.speech_seconds,
        "runs": runs,
        "best_wall_s": best["wall_s"],
        "best_x_real_time": best["x_real_time"],
        "stage_share": shares,
        "num_speakers": best["num_speakers"],
        "load_average_after": load_average(),
    }


def by_threads(threads: Sequence[int], measure: Callable[[], dict]) -> dict[str, Any]:
    """``measure()`` under each thread count."""
    out = {}
    for n in threads:
        with thread_count(n):
            out[str(n)] = measure()
    return out


def ge2e_item(path: Path, warm: Path, vad: SileroVAD, size: Size, log: Callable) -> dict:
    """The built-in GE2E end to end, per thread count."""
    model = lapsv.load_model("ge2e")
    diarize(model, warm, vad=vad)  # imports and first-call set-up, not timed
    options = DiarizeOptions()
    threads = {}
    for n in size.threads:
        with thread_count(n):
            threads[str(n)] = timed_runs(
                model, path, vad=vad, options=options, repeats=size.repeats
            )
        log(f"diarization: ge2e, {n} thread(s): {threads[str(n)]['best_x_real_time']:.1f}x")
    best = max(threads, key=lambda n: threads[n]["best_x_real_time"])
    return {"model": "ge2e", "embedding_pass": "window", "threads": threads, "best_threads": best}


def whisper_model() -> lapsv.Speaker:
    """An untrained LAP + ASTP on the built-in whisper-base encoder (speed only)."""
    config = ModelConfig(FrontendConfig(name="whisper", source="whisper-base"), WHISPER_BACKEND)
    return lapsv.Speaker(lapsv.SpeakerModel.build(config).eval())


def whisper_item(path: Path, warm: Path, vad: SileroVAD, size: Size, log: Callable) -> dict:
    """Window pass vs shared pass of the Whisper model, per thread count."""
    start = time.perf_counter()
    model = whisper_model()
    built = time.perf_counter() - start
    passes: dict[str, dict] = {}
    for name in ("window", "shared"):
        options = DiarizeOptions(embedding_pass=name)
        diarize(model, warm, options=options, vad=vad)  # not timed
        passes[name] = by_threads(
            size.threads,
            lambda options=options: timed_runs(
                model, path, vad=vad, options=options, repeats=size.whisper_repeats
            ),
        )
        rates = {n: round(r["best_x_real_time"], 1) for n, r in passes[name].items()}
        log(f"diarization: whisper, {name} pass: {rates}x by threads")
    backend = dataclasses.asdict(WHISPER_BACKEND)
    return {
        "model": "whisper-base + LAP/ASTP (untrained)",
        "backend": {k: v for k, v in backend.items() if v is not None},
        "build_s": built,
        "passes": passes,
    }


def _memory_mb(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MB (not inherited across exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class RSSSampler:
    """Resident memory every ``period`` seconds in a thread: [(perf_counter, MB)]."""

    def __init__(self, period: float = 0.1) -> None:
        self.period, self.samples = period, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.perf_counter(), _memory_mb("VmRSS")))
            self._stop.wait(self.period)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def child(path: str, threads: int) -> None:
    """In a fresh process: GE2E ``diarize`` on ``path``; prints the speakers, then JSON."""
    model, vad = lapsv.load_model("ge2e"), SileroVAD()  # the VAD's import sets 1 thread
    loaded = _memory_mb("VmRSS")
    with thread_count(threads), RSSSampler() as sampler:
        start = time.perf_counter()
        result = diarize(model, path, vad=vad)
        wall = time.perf_counter() - start
    by_stage, edge = {}, start
    for stage, seconds in result.seconds.items():
        inside = [mb for t, mb in sampler.samples if edge <= t < edge + seconds]
        by_stage[stage] = max(inside, default=float("nan"))
        edge += seconds
    print(f"speakers found: {len(result.speakers)}")
    measured = {
        "threads": threads,
        "duration_s": result.duration,
        "speech_s": result.speech_seconds,
        "wall_s": wall,
        "x_real_time": result.duration / wall,
        "seconds": dict(result.seconds),
        "num_speakers": len(result.speakers),
        "rss_after_load_mb": loaded,
        "peak_rss_mb": _memory_mb("VmHWM"),
        "peak_rss_by_stage_mb": by_stage,
    }
    print(json.dumps(measured), flush=True)


def long_item(path: Path, conversation: dict, threads: int) -> dict[str, Any]:
    """``child`` in a fresh process: its wall time, memory, and what it printed."""
    code = f"from benchmarks import diarization as b; b.child({str(path)!r}, {threads})"
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    process = time.perf_counter() - start
    lines = done.stdout.strip().splitlines()
    return {
        "conversation": conversation,
        **json.loads(lines[-1]),
        "printed": lines[0],
        "process_wall_s": process,
    }


def synthetic_windows(n: int, *, dim: int = 256, speakers: int = 4) -> np.ndarray:
    """(n, dim) float32 unit vectors around ``speakers`` centres (window embeddings' shape)."""
    rng = np.random.default_rng(n)
    centres = rng.normal(size=(speakers, dim))
    x = centres[rng.integers(speakers, size=n)] + rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


class EighCalls:
    """Counts and times the eigen-decompositions of :mod:`lapsv.diarization.clustering` (its
    module-level ``eigh``, wrapped for the block): how many one clustering runs, and their
    share of its time."""

    def __init__(self) -> None:
        self.calls, self.seconds = 0, 0.0
        self._patch = mock.patch.object(clustering, "eigh", self._eigh)

    def _eigh(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return scipy.linalg.eigh(*args, **kwargs)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - start

    def __enter__(self) -> EighCalls:
        self._patch.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._patch.stop()


def clustered(x: np.ndarray, options: DiarizeOptions, p: float | None) -> dict[str, Any]:
    """One ``spectral_clusters`` call: seconds, eigen-decompositions, numpy peak memory."""
    tracemalloc.start()
    with EighCalls() as eigh:
        start = time.perf_counter()
        labels = clustering.spectral_clusters(clustering.cosine_affinity(x), options.count, p=p)
        seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {
        "p": "auto" if p is None else p,
        "seconds": seconds,
        "eigh_calls": eigh.calls,
        "eigh_seconds": eigh.seconds,
        "peak_numpy_mb": peak / 2**20,
        "clusters_found": int(labels.max()) + 1,
    }


def clustering_item(size: Size, log: Callable) -> dict[str, Any]:
    """Spectral clustering alone on W synthetic windows, per thread count: with diarize's
    default ``p``, and with ``p`` chosen per recording (NME-SC, up to ``size.auto_windows``
    windows) when that is not the default."""
    options = DiarizeOptions()
    clustering.spectral_clusters(
        clustering.cosine_affinity(synthetic_windows(100))
    )  # imports, not timed
    modes = {"default_p": options.p} | ({} if options.p is None else {"auto_p": None})
    out = {}
    for n in size.cluster_windows:
        x = synthetic_windows(n)
        row: dict[str, Any] = {
            "speech_hours": n * options.hop / 3600,  # windows every hop seconds of speech
            "matrix_mb": n * n * x.dtype.itemsize / 2**20,
        }
        for mode, p in modes.items():
            if p is not None or n <= size.auto_windows:
                row[mode] = by_threads(size.threads, lambda x=x, p=p: clustered(x, options, p))
        out[str(n)] = row
        log(f"diarization: clustering {n} windows: {row}")
    default = "auto" if options.p is None else options.p
    return {"dim": 256, "speakers": 4, "default_p": default, "windows": out}


def git_commit() -> dict[str, Any]:
    """The lapsv commit measured, and whether the working tree differed from it."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "uncommitted_changes": None}
    return {"commit": head, "uncommitted_changes": bool(status.strip())}


def run(size: Size, clips: Clips, log: Callable) -> dict[str, Any]:
    """Every item on conversations written to a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        paths = {name: Path(folder) / f"{name}.flac" for name in ("warm", "conv", "whisper")}
        write_conversation(paths["warm"], clips, 20.0)
        conversation = write_conversation(paths["conv"], clips, size.conversation)
        whisper_conversation = write_conversation(paths["whisper"], clips, size.whisper)
        vad = SileroVAD()
        silero_threads = torch.get_num_threads()
        ge2e = ge2e_item(paths["conv"], paths["warm"], vad, size, log)
        whisper = whisper_item(paths["whisper"], paths["warm"], vad, size, log)
        long_path = Path(folder) / "long.flac"
        long_conversation = write_conversation(long_path, clips, size.long)
        log(f"diarization: {size.long:.0f} s file in a fresh process ({long_conversation})")
        long = long_item(long_path, long_conversation, int(ge2e["best_threads"]))
        log(f"diarization: long recording: {long}")
    ge2e["conversation"] = conversation
    whisper["conversation"] = whisper_conversation
    return {
        "torch_threads_after_loading_the_vad": silero_threads,
        "ge2e": ge2e,
        "whisper": whisper,
        "long": long,
        "clustering": clustering_item(size, log),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--corpus", help="a manifest to build conversations from")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "diarization-cpu.json")
    parser.add_argument("--markdown", type=Path, default=MARKDOWN, help="RESULTS.md to write")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    clips = corpus_clips(args.corpus) if args.corpus else bundled_clips()
    data: dict[str, Any] = {
        "size": args.size,
        "command": " ".join(["python -m benchmarks.diarization", *(argv or sys.argv[1:])]),
        "machine": machine(torch.device("cpu")),
        **git_commit(),
        "source": clips.source,
        "seed": SEED,
        "sizes": dataclasses.asdict(SIZES[args.size]),
        "options": dataclasses.asdict(DiarizeOptions()),  # diarize's defaults, measured
    }
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    before = torch.get_num_threads()
    try:
        data.update(run(SIZES[args.size], clips, log))
    finally:
        torch.set_num_threads(before)  # importing silero_vad sets 1 thread
    data["machine"]["load_average_end"] = load_average()
    data["total_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(data, indent=1) + "\n")
    atomic_write_text(args.markdown, render(args.out.parent))
    return data


if __name__ == "__main__":
    print(json.dumps(main(), indent=1))
