"""Items 2-4: the WavLM frontend in the loop (random weights: the compute of the real ones).

2. Stage-1 step with the frozen frontend: its forward alone (inference mode, bf16 autocast
   on GPU) vs the full step (frontend forward + LAP+ASTP + AAM-softmax + backward + AdamW).
3. FLOP utilisation: analytic FLOPs of the frontend forward over its measured time, as a
   fraction of the card's bf16 peak (GPU only; on CPU only the achieved rate is given).
4. Stage 2 (2 s crops) and stage 3 (6 s crops) fine-tuning memory per utterance with and
   without gradient checkpointing. On GPU: peak allocated memory of a whole step at two
   batch sizes (the difference is the per-utterance cost) and the largest batch that fits
   by linear extrapolation. On CPU: the activations autograd keeps for backward (distinct
   storages, weights excluded) of one utterance.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import transformers
from torch.nn.utils import parametrize

from benchmarks.common import (
    autocast,
    count_parameters,
    gpu_bf16_peak_tflops,
    saved_tensor_bytes,
    synchronize,
    time_round_robin,
)
from lapsv import build_backend
from lapsv.frontends.hf import HFFrontend
from lapsv.losses import AAMSoftmax

SAMPLE_RATE = 16_000
# WavLM-Base+ and WavLM-Large architectures (microsoft/wavlm-base-plus, microsoft/wavlm-large)
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "base_plus": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "feat_extract_norm": "group",
        "do_stable_layer_norm": False,
        "conv_bias": False,
    },
    "large": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
        "feat_extract_norm": "layer",
        "do_stable_layer_norm": True,
        "conv_bias": True,
    },
}
TINY_ARCHITECTURE = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "conv_dim": (32, 32, 32, 32),
    "conv_stride": (5, 4, 4, 4),  # 320x down-sampling, 50 frames/s like the real ones
    "conv_kernel": (10, 4, 4, 4),
    "num_conv_pos_embeddings": 8,
    "num_conv_pos_embedding_groups": 2,
    "feat_extract_norm": "layer",
}
SIZES = {
    "tiny": {
        "architectures": ["base_plus"],
        "batch": 2,
        "crop_seconds": 1.0,
        "n_classes": 50,
        "repeats": 1,
        "finetune": {"architectures": ["base_plus"], "stages": {"stage2": 1.0, "stage3": 2.0}},
    },
    "small": {
        "architectures": ["base_plus", "large"],
        "batch": 2,
        "crop_seconds": 2.0,
        "n_classes": 1_000,
        "repeats": 2,
        "finetune": {"architectures": ["base_plus"], "stages": {"stage2": 2.0, "stage3": 6.0}},
    },
    "full": {
        "architectures": ["base_plus", "large"],
        "batch": 128,
        "crop_seconds": 2.0,
        "n_classes": 17_982,
        "repeats": 10,
        "finetune": {
            "architectures": ["base_plus", "large"],
            "stages": {"stage2": 2.0, "stage3": 6.0},
            "batches": {"stage2": (8, 16), "stage3": (4, 8)},
        },
    },
}


def hf_config(architecture: str, size_name: str) -> transformers.WavLMConfig:
    options = TINY_ARCHITECTURE if size_name == "tiny" else ARCHITECTURES[architecture]
    return transformers.WavLMConfig(**options)


def frontend_flops(config: transformers.PretrainedConfig, samples: int) -> int:
    """Multiply-adds x 2 of one forward over ``samples`` samples: CNN, feature projection,
    positional convolution, and per Transformer layer the Q/K/V/O and feed-forward
    matmuls plus the T x T attention products (norms, activations and WavLM's gated
    relative position bias are below 1 % and left out)."""
    flops, length, channels = 0, samples, 1
    for dim, kernel, stride in zip(
        config.conv_dim, config.conv_kernel, config.conv_stride, strict=True
    ):
        length = (length - kernel) // stride + 1
        flops += 2 * channels * dim * kernel * length
        channels = dim
    frames, width = length, config.hidden_size
    flops += 2 * frames * channels * width  # feature projection
    groups, kernel = config.num_conv_pos_embedding_groups, config.num_conv_pos_embeddings
    flops += 2 * frames * width * (width // groups) * kernel
    per_layer = 2 * frames * (4 * width * width + 2 * width * config.intermediate_size)
    per_layer += 4 * frames * frames * width
    return flops + config.num_hidden_layers * per_layer


def fold_weight_norm(frontend: HFFrontend) -> None:
    """Replace the positional convolution's weight-norm parametrization by its weight.

    Identical outputs; a frozen encoder need not recompute the weight every call, and the
    parametrization is what breaks under inference mode / FlopCounterMode in some versions.
    """
    for module in frontend.modules():
        if parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def _stage1(
    architecture: str, size_name: str, device: torch.device, precision: str, log
) -> dict[str, Any]:
    size = SIZES[size_name]
    batch, samples = size["batch"], int(size["crop_seconds"] * SAMPLE_RATE)
    config = hf_config(architecture, size_name)
    torch.manual_seed(0)
    frontend = HFFrontend.from_config(config, freeze=True)
    fold_weight_norm(frontend)
    frontend.to(device)
    backend = build_backend("lap", "astp", in_dim=frontend.hidden_size, n_layers=frontend.n_layers)
    backend.to(device).train()
    head = AAMSoftmax(backend.embed_dim, size["n_classes"]).to(device).train()
    optimizer = torch.optim.AdamW([*backend.parameters(), *head.parameters()], lr=1e-4)
    waves = torch.randn(batch, samples, device=device)
    lengths = torch.full((batch,), samples, device=device)
    labels = torch.randint(0, size["n_classes"], (batch,), device=device)

    def forward_inference_mode() -> None:
        with torch.inference_mode(), autocast(device, precision):
            frontend(waves, lengths)

    def forward_no_grad() -> None:
        with torch.no_grad(), autocast(device, precision):
            frontend(waves, lengths)

    def step() -> None:
        with torch.inference_mode(), autocast(device, precision):
            hidden, frames = frontend(waves, lengths)
        # inference tensors cannot be saved for backward: one copy out (float, as the
        # training loop feeds the backend)
        hidden, frames = hidden.to(torch.float32, copy=True), frames.clone()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = head(backend(hidden, frames), labels).loss
        loss.backward()
        optimizer.step()

    functions = {"forward": forward_inference_mode, "step": step}
    if device.type == "cuda":  # what the training loop does today, for comparison
        functions["forward_no_grad"] = forward_no_grad
    for function in functions.values():
        function()  # warm-up
    timings = time_round_robin(functions, device, repeats=size["repeats"])
    forward, full = timings["forward"], timings["step"]
    no_grad = timings.get("forward_no_grad")
    log(f"  stage-1 {architecture}: forward {forward['ms']:.0f} ms, step {full['ms']:.0f} ms")
    added = full["ms"] - forward["ms"]
    flops = frontend_flops(config, samples)
    achieved = flops * batch / (forward["ms"] / 1e3)
    peak = (
        gpu_bf16_peak_tflops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    )
    return {
        "hf_config": {k: getattr(config, k) for k in ("hidden_size", "num_hidden_layers")},
        "attention_implementation": getattr(frontend.model.config, "_attn_implementation", None),
        "frontend_params": count_parameters(frontend),
        "frontend_forward_ms": forward["ms"],
        "frontend_forward_no_grad_ms": no_grad["ms"] if no_grad else None,
        "step_ms": full["ms"],
        "utterances_per_second": batch / (full["ms"] / 1e3),
        "frontend_utterances_per_second": batch / (forward["ms"] / 1e3),
        "backend_share_of_step": added / full["ms"],
        "backend_added_over_frontend": added / forward["ms"],
        # item 3
        "gflop_per_utterance": flops / 1e9,
        "gflop_per_audio_second": flops / 1e9 / size["crop_seconds"],
        "achieved_tflops": achieved / 1e12,
        "bf16_peak_tflops": peak,
        "flop_utilisation": achieved / 1e12 / peak if peak else None,
    }


def _finetune_frontend(config, checkpointing: bool, device: torch.device) -> HFFrontend:
    torch.manual_seed(0)
    frontend = HFFrontend.from_config(
        config, freeze=False, freeze_feature_encoder=True, gradient_checkpointing=checkpointing
    )
    return frontend.to(device).train()


def _finetune_cpu(config, seconds: float, checkpointing: bool) -> dict[str, Any]:
    """Activation bytes autograd keeps for backward per utterance (batch 2: training-mode
    BatchNorm needs two), weights excluded."""
    device = torch.device("cpu")
    frontend = _finetune_frontend(config, checkpointing, device)
    backend = build_backend("lap", "astp", in_dim=frontend.hidden_size, n_layers=frontend.n_layers)
    backend.train()
    weights = {
        p.untyped_storage().data_ptr() for p in [*frontend.parameters(), *backend.parameters()]
    }
    samples = int(seconds * SAMPLE_RATE)
    waves, lengths = torch.randn(2, samples), torch.full((2,), samples)
    with saved_tensor_bytes(exclude=weights) as saved:
        hidden, frames = frontend(waves, lengths)
        backend(hidden, frames).sum()
    return {"activation_mb_per_utterance": saved["bytes"] / 2 / 2**20}


def _finetune_gpu(
    config, seconds: float, checkpointing: bool, batches: tuple[int, int], device, precision
) -> dict[str, Any]:
    """Peak memory of whole steps at two batch sizes; per utterance = slope."""
    frontend = _finetune_frontend(config, checkpointing, device)
    backend = build_backend("lap", "astp", in_dim=frontend.hidden_size, n_layers=frontend.n_layers)
    backend.to(device).train()
    head = AAMSoftmax(backend.embed_dim, 17_982).to(device).train()
    trainable = [p for m in (frontend, backend, head) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5)
    samples = int(seconds * SAMPLE_RATE)
    peaks: dict[int, float | None] = {}
    before = 0
    for batch in batches:
        waves = torch.randn(batch, samples, device=device)
        lengths = torch.full((batch,), samples, device=device)
        labels = torch.randint(0, 17_982, (batch,), device=device)

        def step(waves=waves, lengths=lengths, labels=labels) -> None:
            optimizer.zero_grad(set_to_none=False)
            with autocast(device, precision):
                hidden, frames = frontend(waves, lengths)
                loss = head(backend(hidden, frames), labels).loss
            loss.backward()
            optimizer.step()

        try:
            step()  # optimizer state and gradients exist from here on
            synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
            step()
            synchronize(device)
            peaks[batch] = (torch.cuda.max_memory_allocated(device) - before) / 2**20
        except torch.cuda.OutOfMemoryError:
            peaks[batch] = None
            torch.cuda.empty_cache()
    small, large = batches
    result: dict[str, Any] = {"batches": list(batches), "step_peak_mb": peaks}
    if peaks[small] is not None and peaks[large] is not None:
        per_utterance = (peaks[large] - peaks[small]) / (large - small)
        fixed = peaks[small] - small * per_utterance
        total = torch.cuda.get_device_properties(device).total_memory / 2**20
        free = 0.95 * total - before / 2**20
        result["mb_per_utterance"] = per_utterance
        result["largest_batch_estimate"] = max(0, math.floor((free - fixed) / per_utterance))
    return result


def _finetune(size_name: str, device: torch.device, precision: str, log) -> dict[str, Any]:
    plan = SIZES[size_name]["finetune"]
    results: dict[str, Any] = {}
    for architecture in plan["architectures"]:
        config = hf_config(architecture, size_name)
        for stage, seconds in plan["stages"].items():
            row: dict[str, Any] = {"crop_seconds": seconds}
            for checkpointing in (False, True):
                key = "checkpointing" if checkpointing else "no_checkpointing"
                if device.type == "cuda":
                    batches = plan.get("batches", {}).get(stage, (2, 4))
                    row[key] = _finetune_gpu(
                        config, seconds, checkpointing, batches, device, precision
                    )
                else:
                    row[key] = _finetune_cpu(config, seconds, checkpointing)
            log(f"  fine-tuning memory {architecture} {stage} done")
            results[f"{architecture}/{stage}"] = row
    return results


def run(size_name: str, device: torch.device, precision: str, log) -> dict[str, Any]:
    size = SIZES[size_name]
    stage1 = {
        arch: _stage1(arch, size_name, device, precision, log) for arch in size["architectures"]
    }
    return {
        "sizes": {
            "batch": size["batch"],
            "crop_seconds": size["crop_seconds"],
            "n_classes": size["n_classes"],
            "repeats": size["repeats"],
            "architectures": "tiny 2-layer WavLM" if size_name == "tiny" else "WavLM sizes",
            "finetune": {k: v for k, v in size["finetune"].items()},
            "precision": precision,
        },
        "stage1": stage1,
        "finetune_memory": {
            "method": (
                "torch.cuda.max_memory_allocated of whole steps at two batch sizes"
                if device.type == "cuda"
                else "bytes autograd saves for backward (saved-tensor hooks), batch 2, "
                "weights excluded; CPU only, the GPU peak is not measured here"
            ),
            "results": _finetune(size_name, device, precision, log),
        },
    }
