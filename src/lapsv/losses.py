"""AAM-softmax (ArcFace) with sub-centers and the inter-top-K penalty, METHOD.md §4.

The margin is a pure function of the training step (:func:`margin_at_step`), so a resumed
run recomputes exactly the margin it had; the loss only holds the current value.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


def margin_at_step(
    step: int,
    *,
    final_margin: float,
    ramp_steps: int,
    initial_margin: float = 0.0,
    shape: str = "log",
) -> float:
    """Margin at ``step`` of a ramp from ``initial_margin`` to ``final_margin``.

    ``shape="log"`` rises fast then flattens (1 - 10^(-3 p) of the way at progress p,
    reaching the final margin at ``ramp_steps``); ``"linear"`` rises evenly. After the
    ramp the margin stays at ``final_margin``.

    >>> margin_at_step(0, final_margin=0.3, ramp_steps=100)
    0.0
    >>> round(margin_at_step(50, final_margin=0.3, ramp_steps=100), 4)
    0.2908
    >>> margin_at_step(100, final_margin=0.3, ramp_steps=100)
    0.3
    """
    if ramp_steps <= 0 or step >= ramp_steps:
        return final_margin
    progress = max(step, 0) / ramp_steps
    if shape == "log":
        ratio = (1.0 - 10.0 ** (-3.0 * progress)) / (1.0 - 1e-3)
    elif shape == "linear":
        ratio = progress
    else:
        raise ValueError(f"unknown margin ramp shape '{shape}'; use 'log' or 'linear'")
    return initial_margin + (final_margin - initial_margin) * ratio


class ClassifierOutput(NamedTuple):
    """loss: scalar; logits: (B, n_classes) scaled logits with margins applied."""

    loss: torch.Tensor
    logits: torch.Tensor


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax with sub-centers and inter-top-K penalty.

    cos(theta_j) is the max over ``n_subcenters`` class centers. The target class gets
    cos(theta_y + m); the ``topk`` hardest non-target classes get cos(theta_j - m'), a
    penalty that raises their logits (Zhao et al., ICASSP 2022), with m' = topk_margin *
    m / final margin so it ramps with the margin; all logits are scaled by ``scale``.

    Args:
        embed_dim: E.
        n_classes: number of speakers (times 3 with speed-perturbation classes).
        n_subcenters: centers per class.
        scale: s.
        margin: the final margin m (the value ``set_margin`` ramps towards).
        topk: number of penalised non-target classes (0 turns the penalty off).
        topk_margin: m' at the final margin.

    Example:
        >>> loss_fn = AAMSoftmax(8, 10)
        >>> out = loss_fn(torch.randn(4, 8), torch.tensor([0, 1, 2, 3]))
        >>> out.logits.shape
        torch.Size([4, 10])
    """

    def __init__(
        self,
        embed_dim: int,
        n_classes: int,
        *,
        n_subcenters: int = 3,
        scale: float = 30.0,
        margin: float = 0.3,
        topk: int = 5,
        topk_margin: float = 0.06,
    ) -> None:
        super().__init__()
        self.n_classes, self.n_subcenters = n_classes, n_subcenters
        self.scale, self.final_margin = scale, margin
        self.topk, self.topk_margin = min(topk, n_classes - 1), topk_margin
        self.weight = nn.Parameter(torch.empty(n_classes * n_subcenters, embed_dim))
        nn.init.xavier_uniform_(self.weight)
        self.margin = margin

    def set_margin(self, margin: float) -> None:
        """Set the current margin (see :func:`margin_at_step`)."""
        self.margin = margin

    @property
    def current_topk_margin(self) -> float:
        """m' for the current margin: ``topk_margin`` scaled by margin / final margin."""
        if self.final_margin <= 0:
            return 0.0
        return self.topk_margin * self.margin / self.final_margin

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, E) -> (B, n_classes) cosine to the closest sub-center of each class."""
        cosine = F.linear(F.normalize(embeddings, dim=-1), F.normalize(self.weight, dim=-1))
        return cosine.view(-1, self.n_classes, self.n_subcenters).amax(dim=-1)

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits (B, n_classes) with the target margin and top-K penalty."""
        cosine = self.cosines(embeddings.float())
        sine = (1.0 - cosine.pow(2)).clamp(0.0, 1.0).sqrt()
        m = self.margin
        target = cosine * math.cos(m) - sine * math.sin(m)  # cos(theta + m)
        # beyond theta = pi - m, cos(theta + m) stops decreasing: keep it monotonic instead
        target = torch.where(
            cosine > math.cos(math.pi - m), target, cosine - math.sin(math.pi - m) * m
        )
        is_target = F.one_hot(labels, self.n_classes).bool()
        logits = torch.where(is_target, target, cosine)
        if self.topk > 0 and self.current_topk_margin > 0:
            mp = self.current_topk_margin
            hardest = cosine.masked_fill(is_target, -2.0).topk(self.topk, dim=-1).indices
            is_hard = torch.zeros_like(is_target).scatter_(1, hardest, True)
            penalised = cosine * math.cos(mp) + sine * math.sin(mp)  # cos(theta - m')
            logits = torch.where(is_hard, penalised, logits)
        return logits * self.scale

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> ClassifierOutput:
        """(B, E) embeddings, (B,) class ids -> loss and logits."""
        logits = self.logits(embeddings, labels)
        return ClassifierOutput(F.cross_entropy(logits, labels), logits)
