"""The benchmark entry point (issue 7) runs on tiny sizes and writes sane JSON + markdown."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

from lapsv.layers.aggregation import LayerAttentivePooling

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `benchmarks` is a top-level package beside src/
    sys.path.insert(0, str(ROOT))

from benchmarks import report, run  # noqa: E402
from benchmarks.backend import make_naive  # noqa: E402
from benchmarks.common import gpu_bf16_peak_tflops  # noqa: E402
from benchmarks.frontend import ARCHITECTURES, frontend_flops  # noqa: E402

STATUSES = ("met", "not met", "not measured")


def _numbers(tree, path=""):
    """Every int/float leaf of a JSON tree with its dotted path."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _numbers(value, f"{path}.{key}")
    elif isinstance(tree, list):
        for index, value in enumerate(tree):
            yield from _numbers(value, f"{path}[{index}]")
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield path, tree


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    data = run.main(
        [
            "--size",
            "tiny",
            "--threads",
            "1",  # fast and steady on a shared 2-core machine
            "--out",
            str(out / "bench-cpu-tiny.json"),
            "--markdown",
            str(out / "RESULTS.md"),
        ]
    )
    assert torch.get_num_threads() == threads  # restored for the other tests
    return out, data


def test_json_has_every_item_and_the_machine(tiny_run):
    out, data = tiny_run
    written = json.loads((out / "bench-cpu-tiny.json").read_text())
    assert written["items"].keys() == {"backend", "frontend", "data", "inference", "scoring"}
    assert written["size"] == "tiny"
    machine = written["machine"]
    for key in ("machine_name", "cpu_model", "torch", "date", "load_average_start"):
        assert machine[key], key
    assert set(written["items"]["backend"]["shapes"]) == {"base_plus", "large"}
    systems = written["items"]["backend"]["shapes"]["large"]["systems"]
    assert set(systems) == {"lap_astp", "lap_astp_naive", "superb_astp", "superb_ecapa", "lap_mhfa"}
    assert systems["lap_astp"]["ratio_to_lap_astp"] == 1.0
    assert written == json.loads(json.dumps(data))


def test_timings_and_sizes_are_finite_and_positive(tiny_run):
    _, data = tiny_run
    for path, value in _numbers(data["items"]):
        assert math.isfinite(value), path
        assert value >= 0, path
    backend = data["items"]["backend"]["shapes"]["base_plus"]
    for row in backend["systems"].values():
        assert row["ms"] > 0 and row["params"] > 0 and row["peak_mb"] > 0
    # the optimised LAP gives the naive one's embeddings
    assert backend["optimised_vs_naive_max_rel_diff"] < 1e-4
    stage1 = data["items"]["frontend"]["stage1"]["base_plus"]
    assert stage1["step_ms"] > 0 and stage1["gflop_per_utterance"] > 0
    for model in data["items"]["inference"]["models"].values():
        assert model["bucketed_x_real_time"] > 0
        assert model["max_abs_diff"] < 1e-4  # bucketing does not change embeddings
    assert data["items"]["data"]["utterances_per_second"]["full_pipeline"] > 0
    assert data["items"]["scoring"]["as_norm_small_cohort"]["seconds"] > 0


def test_every_target_has_a_status(tiny_run):
    _, data = tiny_run
    assert len(data["targets"]) == 8
    for target in data["targets"]:
        assert target["status"].startswith(STATUSES), target
    gpu_only = [t for t in data["targets"] if "GPU" in t["target"]]
    assert gpu_only and all(t["status"].startswith("not measured") for t in gpu_only)


def test_markdown_names_the_machine_and_holds_the_tables(tiny_run):
    out, data = tiny_run
    markdown = (out / "RESULTS.md").read_text()
    assert data["machine"]["cpu_model"] in markdown
    assert "GPU: not measured" in markdown
    for heading in (
        "### Targets",
        "### 1. Backend",
        "### 2-3.",
        "### 4.",
        "### 5.",
        "### 6.",
        "### 7.",
    ):
        assert heading in markdown
    assert "LAP+ASTP step profile" in markdown
    assert markdown == report.render(out)


def test_analytic_frontend_flops_match_the_issue():
    # issue 7: 28 GFLOP (WavLM-Base+) and 72 GFLOP (Large) per 2 s utterance
    import transformers

    base = frontend_flops(transformers.WavLMConfig(**ARCHITECTURES["base_plus"]), 32_000)
    large = frontend_flops(transformers.WavLMConfig(**ARCHITECTURES["large"]), 32_000)
    assert base / 1e9 == pytest.approx(28, rel=0.03)
    assert large / 1e9 == pytest.approx(72, rel=0.03)


def test_gpu_peak_lookup():
    assert gpu_bf16_peak_tflops("NVIDIA H100 80GB HBM3") == pytest.approx(989.4)
    assert gpu_bf16_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert gpu_bf16_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert gpu_bf16_peak_tflops("Some Future GPU") is None


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_optimised_lap_matches_the_naive_forward_and_gradients(mode):
    torch.manual_seed(0)
    optimised = LayerAttentivePooling(5, 32, n_heads=4, out_dim=16, score_dropout=0.2)
    with torch.no_grad():  # a non-trivial norm: scales, shifts and running statistics
        optimised.in_norm.weight.uniform_(0.5, 1.5)
        optimised.in_norm.bias.normal_()
        optimised.in_norm.running_mean.normal_()
        optimised.in_norm.running_var.uniform_(0.5, 2.0)
    naive = make_naive(LayerAttentivePooling(5, 32, n_heads=4, out_dim=16, score_dropout=0.2))
    naive.load_state_dict(optimised.state_dict())
    hidden = torch.randn(3, 5, 40, 32) * 2 + torch.linspace(-5, 5, 32)
    results = []
    for module in (optimised, naive):
        module.train(mode == "train")
        torch.manual_seed(1)  # same score-dropout mask
        inputs = hidden.clone().requires_grad_()
        features, scores = module(inputs)
        (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum().backward()
        grads = {n: p.grad for n, p in module.named_parameters() if n != "out_proj.bias"}
        results.append((features, scores, inputs.grad, grads, dict(module.named_buffers())))
    (f1, s1, h1, g1, b1), (f2, s2, h2, g2, b2) = results

    def same(actual, expected, name=""):  # equal up to float32 rounding of the largest value
        scale = float(expected.detach().abs().max()) or 1.0
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-5 * scale, msg=name)

    same(f1, f2)
    same(s1, s2)
    same(h1, h2)
    for name in g2:  # out_proj.bias feeds a training BatchNorm: its gradient is ~0 noise
        same(g1[name], g2[name], name)
    for name in b2:
        same(b1[name].float(), b2[name].float(), name)


def test_diarization_benchmark_writes_its_json_and_section(tmp_path):
    from benchmarks import diarization

    threads = torch.get_num_threads()
    out = tmp_path / "diarization-cpu.json"
    data = diarization.main(
        ["--size", "tiny", "--out", str(out), "--markdown", str(tmp_path / "RESULTS.md")]
    )
    assert torch.get_num_threads() == threads
    written = json.loads(out.read_text())
    assert written == json.loads(json.dumps(data))
    assert written["source"].startswith("tests/data") and written["commit"]
    for path, value in _numbers({k: written[k] for k in ("ge2e", "whisper", "long")}):
        assert math.isfinite(value) and value >= 0, path
    ge2e = written["ge2e"]["threads"]["1"]
    assert ge2e["duration_s"] == written["ge2e"]["conversation"]["seconds"] == 40.0
    assert ge2e["best_x_real_time"] > 0 and len(ge2e["runs"]) == 1
    assert set(ge2e["stage_share"]) == {"vad", "embeddings", "clustering", "other"}
    assert set(written["whisper"]["passes"]) == {"window", "shared"}
    long = written["long"]
    assert long["printed"] == f"speakers found: {long['num_speakers']}"
    assert long["peak_rss_mb"] >= long["rss_after_load_mb"] > 0
    clustered = written["clustering"]["windows"]["300"]
    assert clustered["default_p"]["1"]["eigh_calls"] >= 1
    markdown = (tmp_path / "RESULTS.md").read_text()
    assert "## Diarization (issue 24), CPU" in markdown and "speakers found: " in markdown
    assert markdown == report.render(tmp_path)


def test_transcription_benchmark_writes_its_cost_and_section(tmp_path):
    """The cost item at a toy size (greedy decoding); the words and attribution items need
    Debian packages and a demo output, so they are not run here."""
    from benchmarks import transcription

    out = tmp_path / "transcription-cpu.json"
    markdown = tmp_path / "RESULTS.md"
    toy = ["--only", "cost", "--minutes", "0.1", "--repeats", "1", "--beam_size", "1"]
    transcription.main([*toy, "--out", str(out), "--markdown", str(markdown)])
    cost = json.loads(out.read_text())["cost"]
    assert set(cost["best_s"]) == {"words only", "shared pass", "window pass", "two models (GE2E)"}
    assert cost["ratio_to_words_only"]["words only"] == 1.0 and cost["beam_size"] == 1
    for path, value in _numbers(cost):
        assert math.isfinite(value) and value >= 0, path
    text = markdown.read_text()
    assert (
        "## Transcripts with speakers (issue 26), CPU" in text and "**Cost** on a 0.1-min" in text
    )
    assert text == report.render(tmp_path)
