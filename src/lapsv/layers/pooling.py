"""Temporal pooling: (B, C, T) features + valid lengths -> one vector per utterance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lapsv.layers.masking import frame_mask, masked_mean_std, masked_softmax


class AttentiveStatisticsPooling(nn.Module):
    """Channel-wise attentive statistics with global context, masked over padding.

    The attention sees every frame next to the utterance's mean and std (over valid
    frames), scores each channel at each frame, and takes the attentive mean and std.

    Args:
        in_dim: C.
        bottleneck: width of the attention's hidden layer.
        frame_dropout: during training, drop this fraction of frames from the softmax.

    Example:
        >>> pool = AttentiveStatisticsPooling(8, bottleneck=4).eval()
        >>> pool(torch.randn(2, 8, 20), torch.tensor([20, 11])).shape
        torch.Size([2, 16])
    """

    def __init__(self, in_dim: int, *, bottleneck: int, frame_dropout: float = 0.0) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.frame_dropout = in_dim, 2 * in_dim, frame_dropout
        self.attention = nn.Sequential(
            nn.Conv1d(3 * in_dim, bottleneck, kernel_size=1),
            nn.ReLU(),
            nn.BatchNorm1d(bottleneck),
            nn.Conv1d(bottleneck, in_dim, kernel_size=1),
        )

    def _attention_logits(
        self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor
    ) -> torch.Tensor:
        """``attention(cat([x, mean, std]))`` with mean and std (B, C, 1) broadcast over T.

        The (B, 3C, T) context is never built: in the first 1x1 convolution the mean and
        std columns act on per-utterance constants, so they are applied once per utterance
        and added as a bias, not once per frame. Same result up to float rounding, with a
        third of that convolution's FLOPs (forward and backward).
        """
        first = self.attention[0]
        weight = first.weight.squeeze(-1)  # (bottleneck, 3C)
        statistics = torch.cat([mean, std], dim=1).squeeze(-1)  # (B, 2C)
        per_utterance = torch.addmm(first.bias, statistics, weight[:, self.in_dim :].t())
        hidden = F.conv1d(x, first.weight[:, : self.in_dim]) + per_utterance.unsqueeze(-1)
        return self.attention[1:](hidden)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, C, T), lengths (B,) -> (B, 2C) attentive [mean, std]."""
        frames = x.shape[-1]
        mask = frame_mask(lengths, frames).unsqueeze(1)  # (B, 1, T)
        x = x.masked_fill(~mask, 0.0)
        logits = self._attention_logits(x, *masked_mean_std(x, mask))
        attention_mask = mask
        if self.training and self.frame_dropout > 0:
            kept = mask & (torch.rand_like(mask, dtype=x.dtype) >= self.frame_dropout)
            attention_mask = torch.where(kept.any(dim=-1, keepdim=True), kept, mask)
        weights = masked_softmax(logits, attention_mask)  # (B, C, T)
        attentive_mean = (x * weights).sum(dim=-1)
        attentive_var = (x.pow(2) * weights).sum(dim=-1) - attentive_mean.pow(2)
        attentive_std = attentive_var.clamp(min=1e-4).sqrt()
        return torch.cat([attentive_mean, attentive_std], dim=1)


class EmbeddingHead(nn.Module):
    """BatchNorm on pooled statistics, Linear to the embedding size, BatchNorm: (B, P) -> (B, E)."""

    def __init__(self, in_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.out_dim = embed_dim
        self.pool_norm = nn.BatchNorm1d(in_dim)
        self.projection = nn.Linear(in_dim, embed_dim)
        self.embed_norm = nn.BatchNorm1d(embed_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.embed_norm(self.projection(self.pool_norm(pooled)))


class ASTP(nn.Module):
    """Attentive Statistics Temporal Pooling backend, METHOD.md §3: (B, C, T) -> (B, E).

    Args:
        in_dim: C, the aggregated feature size.
        embed_dim: E.
        bottleneck_ratio: attention hidden width as a fraction of C.
        frame_dropout: fraction of frames dropped from the attention softmax in training.

    Example:
        >>> astp = ASTP(16, embed_dim=8).eval()
        >>> astp(torch.randn(3, 16, 40), torch.tensor([40, 25, 10])).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        in_dim: int,
        *,
        embed_dim: int = 192,
        bottleneck_ratio: float = 0.5,
        frame_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.out_dim = embed_dim
        self.pooling = AttentiveStatisticsPooling(
            in_dim, bottleneck=int(in_dim * bottleneck_ratio), frame_dropout=frame_dropout
        )
        self.head = EmbeddingHead(self.pooling.out_dim, embed_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, C, T), lengths (B,) -> embeddings (B, E)."""
        return self.head(self.pooling(x, lengths))
