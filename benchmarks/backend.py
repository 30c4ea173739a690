"""Item 1: backend training step on random hidden states shaped like WavLM's.

One step = backend forward, AAM-softmax (sub-centres, top-K penalty) on the embeddings,
backward, AdamW over backend + classifier. The same input and the same step for LAP+ASTP,
SUPERB+ASTP, SUPERB+ECAPA-TDNN (C=1024) and LAP+MHFA, plus LAP+ASTP with the obvious
("naive") LAP forward that lapsv had before this benchmark, on the same weights, to show
what the optimised layer gains and that its outputs match. FLOPs per step are counted
by torch's FlopCounterMode (matmuls and convolutions, forward and backward).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import (
    autocast,
    count_parameters,
    peak_memory,
    time_call,
    time_round_robin,
    top_ops,
)
from lapsv import build_backend
from lapsv.layers.aggregation import LayerAttentivePooling
from lapsv.losses import AAMSoftmax

# (n_layers, hidden size) of the frontends; tiny shrinks them so the smoke test is fast
SHAPES = {
    "tiny": {"base_plus": (5, 64), "large": (7, 96)},
    "small": {"base_plus": (13, 768), "large": (25, 1024)},
    "full": {"base_plus": (13, 768), "large": (25, 1024)},
}
SIZES = {
    # batch of crops, frames (2 s at 50 frames/s = 99), classes of the AAM head
    "tiny": {"batch": 2, "frames": 20, "n_classes": 50, "repeats": 1, "ecapa_channels": 64},
    "small": {"batch": 4, "frames": 99, "n_classes": 1_000, "repeats": 3, "ecapa_channels": 1024},
    "full": {
        "batch": 128,
        "frames": 99,
        "n_classes": 17_982,
        "repeats": 10,
        "ecapa_channels": 1024,
    },
}
# name -> (aggregation, speaker_net, naive LAP forward)
SYSTEMS = {
    "lap_astp": ("lap", "astp", False),
    "lap_astp_naive": ("lap", "astp", True),
    "superb_astp": ("superb", "astp", False),
    "superb_ecapa": ("superb", "ecapa", False),
    "lap_mhfa": ("lap", "mhfa", False),
}
LABELS = {
    "lap_astp": "LAP+ASTP",
    "lap_astp_naive": "LAP+ASTP, naive LAP forward",
    "superb_astp": "SUPERB+ASTP",
    "superb_ecapa": "SUPERB+ECAPA-TDNN (C={channels})",
    "lap_mhfa": "LAP+MHFA",
}


def naive_lap_forward(
    self: LayerAttentivePooling, hidden_states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """LAP as first written in lapsv: BatchNorm + Linear on every layer's rows, then the
    full (B, L, T, H, d) weighting and amax. Same parameters, same outputs."""
    batch, n_layers, frames, dim = hidden_states.shape
    heads = self.n_heads
    x = self.in_proj(self.in_norm(hidden_states.reshape(-1, dim)))
    x = x.view(batch, n_layers, frames, heads, dim // heads)
    mean = x.mean(dim=-1).permute(0, 2, 3, 1)  # (B, T, H, L)
    peak = x.amax(dim=-1).permute(0, 2, 3, 1)
    scores = self.score_dropout(torch.sigmoid(self._excite(mean) + self._excite(peak)))
    weighted = x * scores.permute(0, 3, 1, 2).unsqueeze(-1)  # (B, L, T, H, d)
    pooled = weighted.amax(dim=1).reshape(batch * frames, dim)
    features = self.out_norm(self.out_proj(pooled)).view(batch, frames, self.out_dim)
    return features.transpose(1, 2), scores.permute(0, 2, 1, 3)


class NaiveLayerAttentivePooling(LayerAttentivePooling):
    """:class:`LayerAttentivePooling` with :func:`naive_lap_forward` (a baseline)."""

    forward = naive_lap_forward


def make_naive(backend: torch.nn.Module) -> torch.nn.Module:
    """Switch every LAP of ``backend`` to the naive forward, in place (weights untouched)."""
    for module in backend.modules():
        if type(module) is LayerAttentivePooling:
            module.__class__ = NaiveLayerAttentivePooling
    return backend


def build_system(
    name: str, n_layers: int, dim: int, size: dict[str, Any], device: torch.device
) -> tuple[torch.nn.Module, AAMSoftmax]:
    aggregation, speaker_net, naive = SYSTEMS[name]
    torch.manual_seed(0)  # the naive and optimised LAP+ASTP get the same weights
    backend = build_backend(
        aggregation,
        speaker_net,
        in_dim=dim,
        n_layers=n_layers,
        ecapa_channels=size["ecapa_channels"],
    )
    if naive:
        make_naive(backend)
    head = AAMSoftmax(backend.embed_dim, size["n_classes"])
    return backend.to(device).train(), head.to(device).train()


def make_step(
    backend: torch.nn.Module,
    head: AAMSoftmax,
    hidden: torch.Tensor,
    lengths: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    precision: str,
):
    """A closure running one training step of ``backend`` + ``head`` on the given batch."""
    optimizer = torch.optim.AdamW([*backend.parameters(), *head.parameters()], lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = head(backend(hidden, lengths), labels).loss
        loss.backward()
        optimizer.step()

    return step


def equivalence(n_layers: int, dim: int, size: dict[str, Any], device: torch.device) -> float:
    """Max |optimised - naive| of LAP+ASTP embeddings (eval mode), relative to their scale."""
    optimised, _ = build_system("lap_astp", n_layers, dim, size, device)
    naive, _ = build_system("lap_astp_naive", n_layers, dim, size, device)
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, n_layers, size["frames"], dim, generator=generator).to(device)
    lengths = torch.tensor([size["frames"], size["frames"] // 2], device=device)
    with torch.inference_mode():
        a, b = optimised.eval()(hidden, lengths), naive.eval()(hidden, lengths)
    return float((a - b).abs().max() / b.abs().max())


def run(size_name: str, device: torch.device, precision: str, log) -> dict[str, Any]:
    size = SIZES[size_name]
    batch, frames = size["batch"], size["frames"]
    results: dict[str, Any] = {
        "sizes": {
            **size,
            "shapes": {k: {"n_layers": v[0], "dim": v[1]} for k, v in SHAPES[size_name].items()},
            "precision": precision,
            "step": "backend forward + AAM-softmax + backward + AdamW (backend and classifier)",
        },
        "shapes": {},
    }
    for shape, (n_layers, dim) in SHAPES[size_name].items():
        generator = torch.Generator().manual_seed(0)
        hidden = torch.randn(batch, n_layers, frames, dim, generator=generator).to(device)
        lengths = torch.full((batch,), frames, device=device)
        labels = torch.randint(0, size["n_classes"], (batch,), generator=generator).to(device)
        steps, rows = {}, {}
        for name in SYSTEMS:
            backend, head = build_system(name, n_layers, dim, size, device)
            step = make_step(backend, head, hidden, lengths, labels, device, precision)
            with FlopCounterMode(display=False) as flops:
                step()  # warm-up (allocates gradients and optimizer state), FLOPs counted
            steps[name] = step
            rows[name] = {
                "label": LABELS[name].format(channels=size["ecapa_channels"]),
                "params": count_parameters(backend),
                "gflop_per_step": flops.get_total_flops() / 1e9,
                **peak_memory(step, device),
            }
        log(f"  backend {shape}: built, warm, memory measured; timing in turns")
        for name, timing in time_round_robin(steps, device, repeats=size["repeats"]).items():
            rows[name].update(
                timing,
                utterances_per_second=batch / (timing["ms"] / 1e3),
                achieved_gflops=rows[name]["gflop_per_step"] / (timing["ms"] / 1e3),
            )
            log(f"  backend {shape} {name}: {timing['ms']:.1f} ms/step")
        if shape == "large":
            steps["lap_astp"]()  # the profiled step follows a warm one
            results["lap_astp_profile"] = {
                "shape": shape,
                "top_ops": top_ops(steps["lap_astp"], device),
            }
        del steps
        head_only = _head_step_ms(size, batch, device, precision)
        reference = rows["lap_astp"]
        for row in rows.values():
            row["ratio_to_lap_astp"] = row["ms"] / reference["ms"]
            row["params_ratio_to_lap_astp"] = row["params"] / reference["params"]
            row["flops_ratio_to_lap_astp"] = row["gflop_per_step"] / reference["gflop_per_step"]
            row["peak_ratio_to_lap_astp"] = row["peak_mb"] / max(reference["peak_mb"], 1e-9)
        results["shapes"][shape] = {
            "n_layers": n_layers,
            "dim": dim,
            "systems": rows,
            "classifier_step_ms": head_only,
            "naive_over_optimised": rows["lap_astp_naive"]["ms"] / reference["ms"],
            "optimised_vs_naive_max_rel_diff": equivalence(n_layers, dim, size, device),
        }
    return results


def _head_step_ms(size: dict[str, Any], batch: int, device: torch.device, precision: str) -> float:
    """The AAM-softmax classifier alone (same step on random embeddings): the part of every
    system's step that does not depend on the backend."""
    torch.manual_seed(0)
    head = AAMSoftmax(192, size["n_classes"]).to(device).train()
    embeddings = torch.randn(batch, 192, device=device, requires_grad=True)
    labels = torch.randint(0, size["n_classes"], (batch,), device=device)
    optimizer = torch.optim.AdamW(head.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            loss = head(embeddings, labels).loss
        loss.backward()
        optimizer.step()

    return time_call(step, device, repeats=size["repeats"])["ms"]
