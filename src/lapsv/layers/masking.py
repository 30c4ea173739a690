"""Masks and masked statistics over the time axis: padding never changes a result."""

from __future__ import annotations

import torch


def frame_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """Boolean mask of valid frames.

    Args:
        lengths: (B,) valid frames per item.
        max_len: T, the padded length.

    Returns:
        (B, T) bool, True on valid frames.

    >>> frame_mask(torch.tensor([1, 3]), 3).int().tolist()
    [[1, 0, 0], [1, 1, 1]]
    """
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean_std(
    x: torch.Tensor, mask: torch.Tensor, *, eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over valid frames.

    Args:
        x: (B, C, T) features.
        mask: (B, 1, T) float or bool, 1 on valid frames.

    Returns:
        mean, std: each (B, C, 1); the variance is clamped at ``eps`` before the root.
    """
    weights = mask.to(x.dtype)
    count = weights.sum(dim=-1, keepdim=True).clamp(min=1.0)
    mean = (x * weights).sum(dim=-1, keepdim=True) / count
    var = ((x - mean).pow(2) * weights).sum(dim=-1, keepdim=True) / count
    return mean, var.clamp(min=eps).sqrt()


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis with invalid positions given zero weight.

    Args:
        logits: (..., T).
        mask: bool, broadcastable to ``logits``; every row needs one True.
    """
    logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
    return torch.softmax(logits, dim=-1)
