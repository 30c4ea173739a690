"""RESULTS.md sections of issue 16's benchmarks: identification over large speaker
databases (``identification-*.json``) and extraction with 1 and 2 processes
(``extraction-*.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table


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


def render_scale(results_dir: Path) -> list[str]:
    """One markdown section per identification / extraction result file."""
    return [_identification(d) for d in _load(results_dir, "identification-*.json")] + [
        _extraction(d) for d in _load(results_dir, "extraction-*.json")
    ]
