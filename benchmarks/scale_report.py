"""RESULTS.md sections of issue 16's benchmarks: identification over large speaker
databases (``identification-*.json``) and extraction with 1 and 2 processes
(``extraction-*.json``); issue 24's diarization speed and memory
(``diarization-*.json``); issue 26's transcripts (``transcription-*.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table
from benchmarks.transcription_report import render_transcription


def _load(results_dir: Path, pattern: str) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(results_dir.glob(pattern))]


def _identification(data: dict[str, Any]) -> str:
    sizes = data["identification"]
    lines = [
        "## Identification at scale (issue 16), CPU",
        f"`python -m benchmarks.identification --size {data['size']}`, "
        f"{data['machine'].get('cpu_count')} cores, {data['machine'].get('date', '')[:10]}, "
        f"load average {data['machine'].get('load_average_start')} at the start. Synthetic "
        "192-d speakers (rank-64 subspace plus noise); queries are enrolled speakers plus "
        "noise (cosine ~0.7). Full scoring path: index search, then AS-norm with stored "
        "statistics and QMF on a 100-candidate shortlist. Accuracy against exact search over "
        "the same model vectors, 1,000 queries.",
        "",
    ]
    headers = ["speakers", "index", "open (s)", "identify 1: p50 / p95 (ms)", "100 queries (s)",
               "1,000 queries: first / again (s)", "RSS / peak (MB)", "top-1 = exact", "recall@5",
               "exact search 1 query (ms)", "bulk import (speakers/s)", "enrol one by one (/s)",
               "index build (s)"]  # fmt: skip
    rows = [
        [
            f"{r['speakers']:,}",
            r["index_kind"],
            f"{r['open_s']:.2f}",
            f"{r['identify_one_p50_ms']:.1f} / {r['identify_one_p95_ms']:.1f}",
            f"{r['identify_100_s']:.2f}",
            _first_and_again(r),
            f"{r['rss_mb']:.0f} / {r['peak_rss_mb']:.0f}",
            f"{r['top1_equals_exact']:.3f}",
            f"{r['recall_at_5']:.3f}",
            f"{r['exact_search_one_ms']:.1f}",
            f"{r['bulk_import_speakers_per_s']:,.0f}",
            f"{r['enroll_one_at_a_time_per_s']:.0f}",
            f"{r['index_build_s']:.1f}",
        ]
        for r in sizes.values()
    ]
    lines.append(markdown_table(headers, rows))
    for r in sizes.values():
        if r.get("ef_search_sweep"):
            sweep = "; ".join(
                f"{ef}: recall@5 {v['recall_at_5']:.3f}, {v['search_one_ms']:.1f} ms"
                for ef, v in r["ef_search_sweep"].items()
            )
            lines.append(f"\nHNSW efSearch at {r['speakers']:,} speakers (search only): {sweep}.")
    return "\n".join(lines)


def _first_and_again(result: dict[str, Any]) -> str:
    """The 1,000-query figures (measured since issue 23)."""
    if "identify_1000_s" not in result:
        return "-"
    return (
        f"{result['identify_1000_s']:.2f} / {result.get('identify_1000_again_s', float('nan')):.2f}"
    )


def _extraction(data: dict[str, Any]) -> str:
    result = data["extraction"]
    lines = [
        "## Extraction with 1 and 2 processes (issue 16), CPU",
        f"`python -m benchmarks.extraction --size {data['size']}`: `lapsv embed "
        f"{result['model']}` over {result['utterances']:,} generated clips of "
        f"{result['min_seconds']:g}-{result['max_seconds']:g} s, one torch thread per process, "
        f"{data['machine'].get('date', '')[:10]}. Max abs difference 2 vs 1 process: "
        f"{result['max_abs_diff_2_vs_1']:.1e}.",
        "",
    ]
    rows = [
        [
            run["processes"],
            f"{run['utterances_per_second']:.1f}",
            f"{run['end_to_end_utterances_per_second']:.1f}",
            run.get("load_average_after", ""),
        ]
        for run in result["runs"].values()
    ]
    headers = ["processes", "extraction (utt/s)", "whole command (utt/s)", "load after"]
    lines.append(markdown_table(headers, rows))
    return "\n".join(lines)


STAGES = ("vad", "embeddings", "clustering", "other")
GE2E_GOAL, RSS_GOAL_MB = 30.0, 2048.0


def _runs_row(label: list[Any], result: dict[str, Any]) -> list[Any]:
    """Runs' wall seconds, best x real time, the best run's stage shares, speakers found."""
    walls = " / ".join(f"{r['wall_s']:.1f}" for r in result["runs"])
    shares = [f"{result['stage_share'].get(stage, 0.0):.0%}" for stage in STAGES]
    return [*label, walls, f"{result['best_x_real_time']:.1f}", *shares, result["num_speakers"]]


def _diarization_targets(data: dict[str, Any]) -> str:
    ge2e, long = data["ge2e"], data["long"]
    best = ge2e["threads"][ge2e["best_threads"]]
    minutes = ge2e["conversation"]["seconds"] / 60
    speed = "met" if best["best_x_real_time"] >= GE2E_GOAL else "not met"
    if minutes != 10:
        speed = f"not measured (size: {minutes:.3g} min)"
    hours = long["duration_s"] / 3600
    memory = "met" if long["peak_rss_mb"] <= RSS_GOAL_MB else "not met"
    if long["conversation"]["seconds"] != 3600:
        memory = f"not measured (size: {long['duration_s'] / 60:.3g} min)"
    rows = [
        [
            f"GE2E diarize >= {GE2E_GOAL:g}x real time on 2 CPU cores (10-min conversation)",
            f"{best['best_x_real_time']:.1f}x ({ge2e['best_threads']} thread(s))",
            speed,
        ],
        [
            "1-hour recording: peak RSS <= 2 GB",
            f"{long['peak_rss_mb']:,.0f} MB, {long['wall_s']:.0f} s ({hours:.2g} h)",
            memory,
        ],
    ]
    return markdown_table(["target (issue 24)", "measured", "status"], rows)


REPEATED_CLIPS = (
    "\nThe speakers found are a check, not a score: the conversation repeats four clips, "
    "so the 2 and 3 s windows of one clip are the same audio at every repeat, and each clip "
    "can come out as a speaker of its own (4 for 2). A 10-minute conversation of two demo "
    "test speakers' distinct clips found 2, with and without the longer windows."
)


def _diarization(data: dict[str, Any]) -> str:
    ge2e, whisper, long = data["ge2e"], data["whisper"], data["long"]
    m = data["machine"]
    commit = (data.get("commit") or "?")[:10] + (
        " + changes" if data.get("uncommitted_changes") else ""
    )
    stage_headers = [f"{s} share" for s in STAGES] + ["speakers found"]
    lines = [
        "## Diarization (issue 24), CPU",
        f"`{data['command']}`, {m.get('cpus_usable')} cores, {m.get('date', '')[:10]}, lapsv "
        f"{commit}; load average {m.get('load_average_start')} at the start, "
        f"{m.get('load_average_end')} at the end; {data.get('total_seconds', 0):.0f} s in all. "
        "`diarize` on a file (Silero VAD, 1.5 s windows every 0.75 s and the 2 and 3 s windows "
        "nearest them, spectral clustering), "
        f"default options. Conversations from {data['source']}, seed {data['seed']}; x real "
        "time = audio seconds / wall seconds; stage shares of the best run's wall time."
        + _threads_note(data),
        "",
        _diarization_targets(data),
        REPEATED_CLIPS if "clips repeated" in data["source"] else "",
        f"\n**GE2E** on a {ge2e['conversation']['seconds'] / 60:.3g}-min conversation "
        f"({ge2e['conversation']['speakers']} speakers, {ge2e['conversation']['turns']} turns, "
        f"{ge2e['threads'][ge2e['best_threads']]['speech_s']:.0f} s of speech found)\n",
        markdown_table(
            ["threads", "runs (s)", "best x real time", *stage_headers],
            [_runs_row([n], r) for n, r in ge2e["threads"].items()],
        ),
        f"\n**Whisper**: {whisper['model']} on the first "
        f"{whisper['conversation']['seconds'] / 60:.3g} min of the same conversation; window pass "
        "(each window alone) vs shared pass (one encoder pass per 30 s block)\n",
        markdown_table(
            ["embedding pass", "threads", "runs (s)", "best x real time", *stage_headers],
            [
                _runs_row([name, n], r)
                for name, by_threads in whisper["passes"].items()
                for n, r in by_threads.items()
            ],
        ),
        _long_md(long),
        _clustering_md(data["clustering"]),
    ]
    return "\n".join(lines)


def _threads_note(data: dict[str, Any]) -> str:
    threads = data.get("torch_threads_after_loading_the_vad")
    if threads is None:
        return ""
    return (
        f" Loading the Silero VAD left torch at {threads} thread(s) (the silero_vad package "
        "calls torch.set_num_threads(1) when imported). Threads: each run sets torch's count "
        "(torch.set_num_threads) and numpy / scipy's BLAS and OpenMP pools (threadpoolctl)."
    )


def _long_md(long: dict[str, Any]) -> str:
    stages = ", ".join(f"{s} {mb:,.0f}" for s, mb in long["peak_rss_by_stage_mb"].items())
    seconds = ", ".join(f"{s} {v:.1f} s" for s, v in long["seconds"].items())
    conversation = long["conversation"]
    return (
        f"\n**Long recording in a fresh process**: {long['duration_s'] / 60:.3g} min "
        f"({conversation['file_mb']:.0f} MB FLAC, {conversation['speakers']} speakers), GE2E, "
        f"{long['threads']} thread(s): {long['wall_s']:.0f} s in `diarize` "
        f"({long['x_real_time']:.0f}x real time; {seconds}), {long['process_wall_s']:.0f} s "
        f"for the whole process. Peak RSS (VmHWM) {long['peak_rss_mb']:,.0f} MB; "
        f"{long['rss_after_load_mb']:,.0f} MB after loading the model and VAD; sampled peak "
        f"by stage (MB): {stages}. It printed `{long['printed']}`."
    )


def _clustering_md(result: dict[str, Any]) -> str:
    rows, columns = [], []
    for n, r in result["windows"].items():
        runs = {
            f"p {r[mode][t]['p']}, {t} thread(s)": r[mode][t]
            for mode in ("default_p", "auto_p")
            for t in r.get(mode, {})
        }
        columns += [c for c in runs if c not in columns]
        peak = max(run["peak_numpy_mb"] for run in runs.values())
        size = [f"{int(n):,}", f"{r['speech_hours']:.2f}", f"{r['matrix_mb']:.0f}", f"{peak:,.0f}"]
        rows.append((size, runs))
    table = [
        size + [_clustering_cell(runs.get(column)) for column in columns] for size, runs in rows
    ]
    headers = ["windows", "hours of speech", "W x W float32 (MB)", "peak MB", *columns]
    return "\n".join(
        [
            f"\n**Spectral clustering alone** ({result['dim']}-d synthetic windows, "
            f"{result['speakers']} speakers), diarize's default p ({result['default_p']}) and p "
            "chosen per recording (auto, NME-SC: a grid of 20 p values); each cell: seconds "
            "(eigen-decompositions run: their seconds); peak MB: tracemalloc's peak of numpy "
            "allocations during the call.\n",
            markdown_table(headers, table),
        ]
    )


def _clustering_cell(run: dict[str, Any] | None) -> str:
    if run is None:
        return "-"
    return f"{run['seconds']:.1f} ({run['eigh_calls']} eigh: {run['eigh_seconds']:.1f} s)"


def render_scale(results_dir: Path) -> list[str]:
    """One markdown section per identification / extraction / diarization result file."""
    return (
        [_identification(d) for d in _load(results_dir, "identification-*.json")]
        + [_extraction(d) for d in _load(results_dir, "extraction-*.json")]
        + [_diarization(d) for d in _load(results_dir, "diarization-*.json")]
        + [render_transcription(d) for d in _load(results_dir, "transcription-*.json")]
    )
