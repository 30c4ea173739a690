"""Issue 7's targets judged on a benchmark run, and the markdown of benchmarks/RESULTS.md."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from benchmarks.common import format_value, markdown_table
from benchmarks.scale_report import render_scale

# Frontend rates measured in issue 7 on one H100 (bf16, batch 128 x 2 s): what a GPU
# consumes in stage 1, used for the worker count when no GPU was measured.
ISSUE_H100_FRONTEND_UTT_S = {"base_plus": 3220.0, "large": 1650.0}
NO_GPU = "not measured (no GPU)"


def _status(ok: bool) -> str:
    return "met" if ok else "not met"


def _target(target: str, measured: str, status: str, notes: str = "") -> dict[str, str]:
    return {"target": target, "measured": measured, "status": status, "notes": notes}


def targets(data: dict[str, Any]) -> list[dict[str, str]]:
    """Every target of issue 7 as met / not met / not measured, with what was measured."""
    items, gpu = data["items"], data["device"] == "cuda"
    full = data["size"] == "full"
    rows = [
        _backend_target(items.get("backend")),
        *_stage1_targets(items.get("frontend"), gpu, full),
        _data_target(items.get("data"), items.get("frontend"), gpu),
        *_inference_targets(items.get("inference"), gpu, data["machine"]),
        *_scoring_targets(items.get("scoring"), data["machine"]),
    ]
    return rows


def _backend_target(result: dict | None) -> dict[str, str]:
    text = "LAP+ASTP step <= 0.5x SUPERB+ECAPA-TDNN (C=1024), < half its parameters"
    if result is None:
        return _target(text, "-", "not measured (item not run)")
    parts, ok, gaps = [], True, []
    for shape, row in result["shapes"].items():
        lap, ecapa = row["systems"]["lap_astp"], row["systems"]["superb_ecapa"]
        time_ratio = lap["ms"] / ecapa["ms"]
        param_ratio = lap["params"] / ecapa["params"]
        flop_ratio = lap["gflop_per_step"] / ecapa["gflop_per_step"]
        ok &= time_ratio <= 0.5 and param_ratio < 0.5
        parts.append(
            f"{shape}: {time_ratio:.2f}x time, {param_ratio:.3f}x params, {flop_ratio:.2f}x FLOPs"
        )
        if time_ratio > 0.5:
            gaps.append(
                f"{shape}: LAP+ASTP needs {flop_ratio:.2f}x the FLOPs of SUPERB+ECAPA "
                f"({format_value(lap['gflop_per_step'])} vs "
                f"{format_value(ecapa['gflop_per_step'])} GFLOP/step)"
            )
    notes = ""
    if gaps:
        notes = (
            "; ".join(gaps) + ": the D x D input projection runs on every one of the L layers "
            "(forward + weight gradient), see the matmuls on top of the LAP+ASTP profile below"
        )
    batch = result["sizes"]["batch"]
    return _target(text, "; ".join(parts) + f" (batch {batch})", _status(ok), notes)


def _stage1_targets(result: dict | None, gpu: bool, full: bool) -> list[dict[str, str]]:
    overhead_text = "Frozen stage 1 on GPU: backend + loss add <= 15 % to the frontend forward"
    flops_text = "WavLM-Large forward in bf16 >= 35 % of the card's bf16 peak (batch 128 x 2 s)"
    if result is None:
        return [
            _target(overhead_text, "-", "not measured (item not run)"),
            _target(flops_text, "-", "not measured (item not run)"),
        ]
    stage1 = result["stage1"]
    added = {a: r["backend_added_over_frontend"] for a, r in stage1.items()}
    measured = ", ".join(f"{a}: +{v:.0%}" for a, v in added.items())
    if gpu and full:
        overhead = _target(overhead_text, measured, _status(max(added.values()) <= 0.15))
    else:
        where = "CPU" if not gpu else "GPU at reduced size"
        overhead = _target(
            overhead_text,
            f"{where} (not the target's setting): {measured}",
            NO_GPU if not gpu else "not measured (size)",
        )
    large = stage1.get("large")
    if gpu and full and large and large["flop_utilisation"] is not None:
        utilisation = large["flop_utilisation"]
        notes = ""
        if utilisation < 0.35:
            notes = (
                f"attention: {large['attention_implementation']} (transformers' WavLM has no "
                "SDPA/flash path: its gated relative position bias); see the frontend profile"
            )
        flops = _target(
            flops_text,
            f"{large['achieved_tflops']:.0f} TFLOP/s = {utilisation:.0%} of "
            f"{large['bf16_peak_tflops']:.0f}",
            _status(utilisation >= 0.35),
            notes,
        )
    else:
        achieved = (
            f"CPU fp32: {large['achieved_tflops'] * 1e3:.0f} GFLOP/s achieved" if large else "-"
        )
        flops = _target(flops_text, achieved, NO_GPU if not gpu else "not measured (size)")
    return [overhead, flops]


def workers_needed(result: dict, frontend: dict | None, gpu: bool) -> dict[str, Any]:
    """CPU workers per GPU = GPU consumption (utt/s) / one worker's full-pipeline rate."""
    per_worker = result["utterances_per_second"]["full_pipeline"]
    if gpu and frontend is not None:
        rates = {a: r["utterances_per_second"] for a, r in frontend["stage1"].items()}
        source = "stage-1 step rate measured here"
    else:
        rates = dict(ISSUE_H100_FRONTEND_UTT_S)
        source = "issue 7's H100 frontend rates, not measured here"
    return {
        "per_worker_utt_s": per_worker,
        "gpu_utt_s": rates,
        "source": source,
        "workers": {a: math.ceil(rate / per_worker) for a, rate in rates.items()},
    }


def _data_target(result: dict | None, frontend: dict | None, gpu: bool) -> dict[str, str]:
    text = "Data loading never starves the GPU: CPU workers stage 1 needs per GPU"
    if result is None:
        return _target(text, "-", "not measured (item not run)")
    need = workers_needed(result, frontend, gpu)
    measured = f"{need['per_worker_utt_s']:.0f} utt/s per worker; " + ", ".join(
        f"{a}: {n} workers for {need['gpu_utt_s'][a]:.0f} utt/s" for a, n in need["workers"].items()
    )
    status = "met (stated)" if gpu else f"{NO_GPU}; estimate from {need['source']}"
    return _target(text, measured, status)


def _inference_targets(result: dict | None, gpu: bool, machine: dict) -> list[dict[str, str]]:
    batched_text = "Batched embedding >= 3x faster than one-by-one on GPU, identical embeddings"
    ge2e_text = "GE2E default >= 100x real time on 2 CPU cores"
    if result is None:
        return [
            _target(batched_text, "-", "not measured (item not run)"),
            _target(ge2e_text, "-", "not measured (item not run)"),
        ]
    models = {n: m for n, m in result["models"].items() if "error" not in m}
    if not models:
        return [
            _target(batched_text, "-", "not measured (every model failed)"),
            _target(ge2e_text, "-", "not measured (every model failed)"),
        ]
    identical = all(m["max_abs_diff"] < 1e-4 for m in models.values())
    speedups = ", ".join(f"{n}: {m['bucketed_speedup']:.1f}x" for n, m in models.items())
    diff = max(m["max_abs_diff"] for m in models.values())
    measured = f"{speedups}; identical: {identical} (max |diff| {diff:.1g})"
    if gpu:
        hf = [m for n, m in models.items() if n.startswith("wavlm")]
        ok = identical and bool(hf) and min(m["bucketed_speedup"] for m in hf) >= 3
        notes = "" if ok else _bucketing_note(models)
        batched = _target(batched_text, measured, _status(ok), notes)
    else:
        batched = _target(batched_text, "CPU: " + measured, NO_GPU, _bucketing_note(models))
    ge2e = models.get("ge2e")
    cores = machine.get("cpus_usable")
    if ge2e is None:
        ge2e_row = _target(ge2e_text, "-", "not measured")
    elif gpu:
        ge2e_row = _target(ge2e_text, "-", "not measured (GPU run; see the CPU section)")
    else:
        by_threads = ge2e.get("bucketed_x_real_time_by_threads", {})
        speed = max([ge2e["bucketed_x_real_time"], *by_threads.values()])
        parts = [] if speed >= 100 else [_top_op_note(ge2e.get("profile_top_ops"))]
        if "achieved_gflops" in ge2e:
            parts.append(
                f"{ge2e['lstm_gflop_per_audio_second']:.2f} GFLOP of LSTM per audio second "
                f"(overlapping 1.6 s windows), run at {ge2e['achieved_gflops']:.0f} GFLOP/s"
            )
        if by_threads:
            parts.append(
                "x real time by torch threads: "
                + ", ".join(f"{n}: {v:.0f}" for n, v in by_threads.items())
            )
        notes = "; ".join(part for part in parts if part)
        if cores != 2:
            notes = f"measured on {cores} cores. " + notes
        ge2e_row = _target(
            ge2e_text,
            f"{speed:.0f}x real time (bucketed, best thread count)",
            _status(speed >= 100),
            notes,
        )
    return [batched, ge2e_row]


def _bucketing_note(models: dict) -> str:
    base = models.get("wavlm_base_plus_lap_astp")
    if base is None:
        return ""
    return (
        "WavLM-Base+ normalises its CNN with group norm over the whole signal, so lapsv's "
        "HFFrontend runs each distinct length alone: bucketing cannot batch utterances of "
        f"different lengths (speed-up {base['bucketed_speedup']:.1f}x)"
    )


def _top_op_note(ops: list[dict] | None) -> str:
    if not ops:
        return ""
    top = ops[0]
    return f"bottleneck: {top['op']} ({top['share']:.0%} of the profiled self time)"


def _scoring_targets(result: dict | None, machine: dict) -> list[dict[str, str]]:
    as_norm_text = "AS-norm 550k trials x 600-speaker cohort < 30 s on 2 CPU cores"
    eer_text = "EER (+ minDCF) on 10^7 scores < 5 s"
    if result is None:
        return [
            _target(as_norm_text, "-", "not measured (item not run)"),
            _target(eer_text, "-", "not measured (item not run)"),
        ]
    cores = machine.get("cpus_usable")
    note = "" if cores == 2 else f"measured on {cores} cores"
    norm, metrics = result["as_norm_small_cohort"], result["metrics"]
    if norm["n_trials"] == 550_000 and norm["cohort"] == 600:
        as_norm = _target(
            as_norm_text, f"{norm['seconds']:.1f} s", _status(norm["seconds"] < 30), note
        )
    else:
        as_norm = _target(
            as_norm_text, f"{norm['seconds']:.2f} s at reduced size", "not measured (size)"
        )
    if metrics["n"] == 10_000_000:
        eer_ok, eer_note = metrics["seconds"] < 5, note
        if not eer_ok and "sort_seconds" in metrics:
            eer_note = (
                f"{note}; np.sort of the scores alone takes {metrics['sort_seconds']:.1f} s "
                "(compute_metrics sorts once, then linear passes): bound by this process's "
                "share of the CPU, see the load average"
            ).lstrip("; ")
        eer = _target(eer_text, f"{metrics['seconds']:.1f} s", _status(eer_ok), eer_note)
    else:
        eer = _target(
            eer_text, f"{metrics['seconds']:.2f} s at reduced size", "not measured (size)"
        )
    return [as_norm, eer]


# ---------------------------------------------------------------- markdown


def render_targets(data: dict[str, Any]) -> str:
    return markdown_table(
        ["target (issue 7)", "measured", "status", "notes / bottleneck"],
        [[t["target"], t["measured"], t["status"], t["notes"]] for t in data["targets"]],
    )


def _section_title(data: dict[str, Any]) -> str:
    m = data["machine"]
    if data["device"] == "cuda" and m.get("gpu"):
        where = f"GPU: {m['gpu']['name']}"
    else:
        where = f"CPU: {m['cpu_model']}, {m['cpus_usable']} cores"
    return f"## {where} (host {m['machine_name']}, {m['date']}, size {data['size']})"


def _setup(data: dict[str, Any]) -> str:
    m = data["machine"]
    return (
        f"`{data['command'].strip()}` — torch {m['torch']}, transformers {m['transformers']}, "
        f"{m['torch_threads']} torch thread(s) (`--threads`), precision {data['precision']}; "
        f"load average (1, 5, 15 min) {m['load_average_start']} at start, "
        f"{m.get('load_average_end')} at end (other processes share this machine); "
        f"{data.get('total_seconds', 0):.0f} s in all.{_item_dates(data)}"
    )


def _item_dates(data: dict[str, Any]) -> str:
    """When each item was measured, when a run with ``--only`` kept items of earlier runs."""
    by_date: dict[str, list[str]] = {}
    for name, item in data["items"].items():
        by_date.setdefault(str(item.get("date", "?"))[:10], []).append(name)
    if len(by_date) < 2:
        return ""
    dates = "; ".join(f"{', '.join(names)} on {date}" for date, names in sorted(by_date.items()))
    return f" Items measured by different runs: {dates} (the header is the latest run's)."


def _backend_md(result: dict[str, Any]) -> str:
    size = result["sizes"]
    out = [
        "### 1. Backend training step",
        f"Random hidden states, batch {size['batch']} x {size['frames']} frames "
        f"({size['frames'] * 0.02:.1f} s of audio), "
        f"AAM-softmax over {size['n_classes']:,} classes; step = {size['step']}; "
        f"{size['repeats']} timed steps (median). Peak = tensor memory allocated during a "
        "step above what was live before it (activations, gradients, temporaries).",
    ]
    for shape, row in result["shapes"].items():
        systems = row["systems"]
        method = next(iter(systems.values()))["memory_method"]
        out.append(f"\n**{shape}** (L={row['n_layers']}, D={row['dim']}; memory: {method})\n")
        out.append(
            markdown_table(
                [
                    "system",
                    "ms/step",
                    "x LAP+ASTP",
                    "params",
                    "x params",
                    "GFLOP/step",
                    "x FLOPs",
                    "GFLOP/s",
                    "peak MB",
                ],
                [
                    [
                        r["label"],
                        r["ms"],
                        f"{r['ratio_to_lap_astp']:.2f}",
                        r["params"],
                        f"{r['params_ratio_to_lap_astp']:.3f}",
                        r["gflop_per_step"],
                        f"{r['flops_ratio_to_lap_astp']:.2f}",
                        r["achieved_gflops"],
                        r["peak_mb"],
                    ]
                    for r in systems.values()
                ],
            )
        )
        out.append(
            f"\nClassifier alone: {row['classifier_step_ms']:.1f} ms/step. Optimised LAP forward: "
            f"{row['naive_over_optimised']:.2f}x faster step than the naive one, embeddings "
            f"equal to {row['optimised_vs_naive_max_rel_diff']:.1g} (max relative difference)."
        )
    profile = result.get("lap_astp_profile")
    if profile:
        out.append(
            f"\n**LAP+ASTP step profile** ({profile['shape']} shapes, torch.profiler, self time)\n"
        )
        out.append(_opsmarkdown_table(profile["top_ops"]))
    return "\n".join(out)


def _opsmarkdown_table(ops: list[dict[str, Any]]) -> str:
    return markdown_table(
        ["op", "input shapes", "self ms", "share", "calls"],
        [
            [
                o["op"],
                o["input_shapes"].replace("|", "/"),
                o["self_ms"],
                f"{o['share']:.1%}",
                o["calls"],
            ]
            for o in ops
        ],
    )


def _frontend_md(result: dict[str, Any]) -> str:
    size = result["sizes"]
    out = [
        "### 2-3. Stage-1 step with the frozen frontend, FLOP utilisation",
        f"Random-weight WavLM ({size['architectures']}), batch {size['batch']} x "
        f"{size['crop_seconds']:g} s, frontend under inference mode; step = frontend + "
        "LAP+ASTP + AAM-softmax + backward + AdamW. FLOPs are analytic (CNN, projections, "
        "attention, feed-forward).\n",
        markdown_table(
            [
                "frontend",
                "forward ms",
                "step ms",
                "step utt/s",
                "backend share",
                "added to forward",
                "GFLOP/utt",
                "GFLOP per audio s",
                "achieved GFLOP/s",
                "of bf16 peak",
            ],
            [
                [
                    arch,
                    r["frontend_forward_ms"],
                    r["step_ms"],
                    r["utterances_per_second"],
                    f"{r['backend_share_of_step']:.0%}",
                    f"{r['backend_added_over_frontend']:.0%}",
                    r["gflop_per_utterance"],
                    r["gflop_per_audio_second"],
                    r["achieved_tflops"] * 1e3,
                    f"{r['flop_utilisation']:.0%}" if r["flop_utilisation"] else "- (no GPU)",
                ]
                for arch, r in result["stage1"].items()
            ],
        ),
        "\n### 4. Fine-tuning memory (stages 2 and 3)",
        f"Method: {result['finetune_memory']['method']}.\n",
    ]
    rows = []
    for key, row in result["finetune_memory"]["results"].items():
        plain, ckpt = row["no_checkpointing"], row["checkpointing"]
        if "activation_mb_per_utterance" in plain:
            a, b = plain["activation_mb_per_utterance"], ckpt["activation_mb_per_utterance"]
            rows.append([key, row["crop_seconds"], a, b, f"{b / a:.0%}", "-", "-"])
        else:
            a, b = plain.get("mb_per_utterance"), ckpt.get("mb_per_utterance")
            share = f"{b / a:.0%}" if a and b else "-"
            rows.append(
                [
                    key,
                    row["crop_seconds"],
                    a,
                    b,
                    share,
                    plain.get("largest_batch_estimate"),
                    ckpt.get("largest_batch_estimate"),
                ]
            )
    out.append(
        markdown_table(
            [
                "frontend/stage",
                "crop s",
                "MB/utt",
                "MB/utt, checkpointing",
                "ratio",
                "largest batch",
                "largest batch, ckpt",
            ],
            rows,
        )
    )
    return "\n".join(out)


def _data_md(result: dict[str, Any], frontend: dict | None, gpu: bool) -> str:
    setup = result["setup"]
    rates = result["utterances_per_second"]
    need = workers_needed(result, frontend, gpu)
    workers = ", ".join(
        f"{a}: {n} for {need['gpu_utt_s'][a]:.0f} utt/s" for a, n in need["workers"].items()
    )
    return "\n".join(
        [
            "### 5. Data pipeline, one CPU worker",
            f"{setup['crop_seconds']:g} s crops, {setup['iterations']} iterations per step, "
            f"{setup['data']} MUSAN/RIR data.\n",
            markdown_table(["step", "utt/s per worker"], [[k, v] for k, v in rates.items()]),
            f"\nWorkers per GPU ({need['source']}): {workers}.",
        ]
    )


def _inference_md(result: dict[str, Any]) -> str:
    out = [
        "### 6. Embedding extraction (`embed_waveforms`), bucketed vs one-by-one",
        f"Length-sorted batches of {result['bucket_batch_size']} vs batch 1, "
        f"{result['precision']}, inference mode.\n",
        markdown_table(
            [
                "model",
                "utts",
                "audio s",
                "x real time, bucketed",
                "x real time, one-by-one",
                "speed-up",
                "max abs diff",
                "min cosine",
            ],
            [
                [
                    name,
                    m["utterances"],
                    m["audio_seconds"],
                    m["bucketed_x_real_time"],
                    m["one_by_one_x_real_time"],
                    f"{m['bucketed_speedup']:.2f}",
                    f"{m['max_abs_diff']:.1g}",
                    f"{m['min_cosine']:.7f}",
                ]
                for name, m in result["models"].items()
                if "error" not in m
            ],
        ),
    ]
    for name, m in result["models"].items():
        if "error" in m:
            out.append(f"\n{name}: failed on this device: `{m['error']}`")
    ops = result["models"].get("ge2e", {}).get("profile_top_ops")
    if ops:
        out += ["\n**GE2E embed profile** (one bucketed batch)\n", _opsmarkdown_table(ops)]
    return "\n".join(out)


def _scoring_md(result: dict[str, Any]) -> str:
    rows = [
        ["EER + minDCF", f"{result['metrics']['n']:,} scores", result["metrics"]["seconds"]],
        [
            "speaker cohort",
            f"{result['speaker_cohort']['n_utterances']:,} utts",
            result["speaker_cohort"]["seconds"],
        ],
        ["cosine", f"{result['cosine']['n_trials']:,} trials", result["cosine"]["seconds"]],
    ]
    for key in ("as_norm_small_cohort", "as_norm_large_cohort"):
        r = result[key]
        rows.append(
            [
                "AS-norm",
                f"{r['n_trials']:,} trials x {r['cohort']:,} cohort, top {r['top_n']}",
                r["seconds"],
            ]
        )
    qmf = result["qmf"]
    rows.append(["QMF fit", f"{qmf['n_pairs']:,} pairs", qmf["fit_seconds"]])
    if "eval" in result:  # measured since issue 23
        run = result["eval"]
        size = f"{run['n_trials']:,} trials over {run['n_utterances']:,} utts"
        rows.append(["eval: read trial file", size, run["read_seconds"]])
        rows.append(["eval: rows, cosine, metrics, score file, plots", size, run["score_seconds"]])
    return "\n".join(
        [
            "### 7. Scoring (numpy, CPU)",
            markdown_table(["stage", "size", "seconds"], [[a, b, f"{c:.2f}"] for a, b, c in rows]),
        ]
    )


def render_section(data: dict[str, Any]) -> str:
    items, gpu = data["items"], data["device"] == "cuda"
    parts = [_section_title(data), _setup(data), "### Targets", render_targets(data)]
    if "backend" in items:
        parts.append(_backend_md(items["backend"]))
    if "frontend" in items:
        parts.append(_frontend_md(items["frontend"]))
    if "data" in items:
        parts.append(_data_md(items["data"], items.get("frontend"), gpu))
    if "inference" in items:
        parts.append(_inference_md(items["inference"]))
    if "scoring" in items:
        parts.append(_scoring_md(items["scoring"]))
    return "\n\n".join(parts)


def render(results_dir: Path) -> str:
    """RESULTS.md from every bench-*.json in ``results_dir``: CPU sections, then GPU ones."""
    runs = [json.loads(path.read_text()) for path in sorted(results_dir.glob("bench-*.json"))]
    if any(d["size"] != "tiny" for d in runs):  # smoke-test runs only when nothing else
        runs = [d for d in runs if d["size"] != "tiny"]
    runs.sort(key=lambda d: (d["device"] != "cpu", d["size"] != "small", d["size"]))
    header = [
        "# lapsv benchmarks (issue 7)",
        "Generated by `python -m benchmarks.run` (add `--device cuda` on a GPU) from "
        "`benchmarks/results/bench-*.json`; do not edit by hand. Random weights and random "
        "inputs: the compute of the real models, not their accuracy. GPU sections appear "
        "once a GPU run has written `bench-cuda.json`.",
    ]
    if not any(d["device"] == "cuda" for d in runs):
        header.append("\n**GPU: not measured** (no GPU was available for these runs).")
    scale = render_scale(results_dir)  # issue 16: identification, extraction; 24: diarization
    return "\n\n".join(header + [render_section(d) for d in runs] + scale) + "\n"
