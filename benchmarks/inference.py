"""Item 6: embedding extraction speed, length-bucketed batches vs one utterance at a time.

``lapsv.inference.embed_waveforms`` (what ``lapsv embed`` runs) on utterances of random
lengths, with ``batch_size=16`` (sorted by length, padded, masked) and ``batch_size=1``.
Real-time factor = compute seconds / audio seconds; "x real time" is its inverse. Runs in
fp32 under inference mode, as ``lapsv embed`` does (bf16 would make the batched and the
one-by-one embeddings differ by rounding, hiding the identity check). Models,
random weights (the compute of the real ones):

* ``ge2e``: the offline default ``lapsv embed ge2e`` (GE2E's own windowed embedding);
* ``ge2e_lap_astp``: the default trained model (GE2E frontend + LAP+ASTP backend);
* ``wavlm_base_plus_lap_astp`` / ``wavlm_large_lap_astp``: WavLM architectures + LAP+ASTP.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import autocast, synchronize, top_ops
from benchmarks.frontend import fold_weight_norm, hf_config
from lapsv import build_backend
from lapsv.config import ModelConfig
from lapsv.frontends.ge2e import (
    HIDDEN_SIZE,
    N_MELS,
    PARTIAL_FRAMES,
    GE2EEncoder,
    partial_windows,
)
from lapsv.frontends.hf import HFFrontend
from lapsv.inference import embed_waveforms
from lapsv.model import SpeakerModel

SAMPLE_RATE = 16_000
BUCKET_BATCH = 16
# model -> (number of utterances, min seconds, max seconds)
SIZES: dict[str, dict[str, tuple[int, float, float]]] = {
    "tiny": {
        "ge2e": (4, 1.0, 2.0),
        "ge2e_lap_astp": (4, 1.0, 2.0),
        "wavlm_base_plus_lap_astp": (3, 1.0, 2.0),
    },
    "small": {
        "ge2e": (40, 2.0, 8.0),
        "ge2e_lap_astp": (40, 2.0, 8.0),
        "wavlm_base_plus_lap_astp": (6, 2.0, 4.0),
    },
    "full": {
        "ge2e": (200, 2.0, 10.0),
        "ge2e_lap_astp": (200, 2.0, 10.0),
        "wavlm_base_plus_lap_astp": (200, 2.0, 10.0),
        "wavlm_large_lap_astp": (200, 2.0, 10.0),
    },
}


def build_model(name: str, size_name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "ge2e":
        return GE2EEncoder().eval()
    if name == "ge2e_lap_astp":
        return SpeakerModel.build(ModelConfig(), pretrained=False).eval()
    architecture = "large" if name.startswith("wavlm_large") else "base_plus"
    frontend = HFFrontend.from_config(hf_config(architecture, size_name), freeze=True)
    fold_weight_norm(frontend)
    backend = build_backend("lap", "astp", in_dim=frontend.hidden_size, n_layers=frontend.n_layers)
    return SpeakerModel(frontend, backend).eval()


def _waves(count: int, low: float, high: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    seconds = rng.uniform(low, high, count)
    return [(0.1 * rng.normal(size=int(s * SAMPLE_RATE))).astype(np.float32) for s in seconds]


def _embed_timed(model, waves, batch_size: int, device: torch.device, precision: str):
    synchronize(device)
    started = time.perf_counter()
    with torch.inference_mode(), autocast(device, precision):
        embeddings = embed_waveforms(model, waves, batch_size=batch_size, device=device)
    synchronize(device)
    return time.perf_counter() - started, embeddings


def run(size_name: str, device: torch.device, precision: str, log) -> dict[str, Any]:
    results: dict[str, Any] = {
        "sizes": {
            name: {"utterances": n, "min_seconds": low, "max_seconds": high}
            for name, (n, low, high) in SIZES[size_name].items()
        },
        "bucket_batch_size": BUCKET_BATCH,
        "precision": precision,
        "models": {},
    }
    for name, (count, low, high) in SIZES[size_name].items():
        try:
            results["models"][name] = _run_model(
                name, size_name, count, low, high, device, precision
            )
        except RuntimeError as error:  # e.g. a model that does not run on this device
            results["models"][name] = {"error": f"{type(error).__name__}: {error}"[:300]}
            log(f"  inference {name}: failed: {error}")
            continue
        speed = results["models"][name]["bucketed_x_real_time"]
        log(f"  inference {name}: {speed:.1f}x real time bucketed")
    return results


def _run_model(
    name: str,
    size_name: str,
    count: int,
    low: float,
    high: float,
    device: torch.device,
    precision: str,
) -> dict[str, Any]:
    """Bucketed and one-by-one embedding of ``count`` random utterances with one model."""
    model = build_model(name, size_name).to(device)
    waves = _waves(count, low, high)
    audio_seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    _embed_timed(model, waves[:2], BUCKET_BATCH, device, precision)  # warm-up
    bucketed_s, bucketed = _embed_timed(model, waves, BUCKET_BATCH, device, precision)
    single_s, single = _embed_timed(model, waves, 1, device, precision)
    cosine = np.sum(bucketed * single, axis=1) / (
        np.linalg.norm(bucketed, axis=1) * np.linalg.norm(single, axis=1)
    )
    row = {
        "utterances": count,
        "audio_seconds": audio_seconds,
        "bucketed_seconds": bucketed_s,
        "one_by_one_seconds": single_s,
        "bucketed_rtf": bucketed_s / audio_seconds,
        "bucketed_x_real_time": audio_seconds / bucketed_s,
        "one_by_one_x_real_time": audio_seconds / single_s,
        "bucketed_speedup": single_s / bucketed_s,
        "max_abs_diff": float(np.abs(bucketed - single).max()),
        "min_cosine": float(cosine.min()),
    }
    if name == "ge2e":
        flops = _ge2e_lstm_flops(waves)
        row["lstm_gflop_per_audio_second"] = flops / audio_seconds / 1e9
        row["achieved_gflops"] = flops / bucketed_s / 1e9
    if name == "ge2e" and device.type == "cpu" and size_name != "tiny":
        # on a shared machine, 2 OpenMP threads can lose to 1 on the LSTM's many small
        # steps: bucketed speed at 1 and 2 threads tells contention from model cost
        threads = torch.get_num_threads()
        row["bucketed_x_real_time_by_threads"] = {}
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            try:
                seconds, _ = _embed_timed(model, waves, BUCKET_BATCH, device, precision)
            finally:
                torch.set_num_threads(threads)
            row["bucketed_x_real_time_by_threads"][str(n_threads)] = audio_seconds / seconds
    if name == "ge2e":
        batch, lengths = _padded(waves[:BUCKET_BATCH])
        row["profile_top_ops"] = top_ops(
            lambda model=model, batch=batch, lengths=lengths: model.embed_batch(
                batch.to(device), lengths.to(device)
            ),
            device,
            rows=8,
        )
    return row


def _ge2e_lstm_flops(waves: list[np.ndarray]) -> int:
    """LSTM multiply-adds x 2 of GE2E's windowed embedding: 1.6 s windows every 1/1.3 s,
    each 160 frames through 3 LSTM layers (4 gates, input + recurrent matmuls)."""
    windows = sum(len(partial_windows(len(wave))) for wave in waves)
    per_frame = sum(
        2 * 4 * HIDDEN_SIZE * (size + HIDDEN_SIZE) for size in (N_MELS, HIDDEN_SIZE, HIDDEN_SIZE)
    )
    return windows * PARTIAL_FRAMES * per_frame


def _padded(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    from lapsv.audio import pad_batch

    return pad_batch(waves)
