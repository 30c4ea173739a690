"""ECAPA-TDNN speaker network (Desplanques et al., 2020) on aggregated features, masked.

Every convolution wider than one frame sees zeros on padded frames and every statistic is
taken over valid frames only, so an utterance's embedding does not depend on the padding
of the batch it is in.
"""

from __future__ import annotations

import torch
from torch import nn

from lapsv.layers.masking import frame_mask, masked_mean_std
from lapsv.layers.pooling import AttentiveStatisticsPooling, EmbeddingHead


class _ConvBlock(nn.Module):
    """Conv1d -> ReLU -> BatchNorm; padded frames are zeroed before a wide kernel."""

    def __init__(self, in_dim: int, out_dim: int, kernel: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.wide = kernel > 1
        padding = dilation * (kernel // 2)
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, dilation=dilation, padding=padding)
        self.norm = nn.BatchNorm1d(out_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.wide:
            x = x * mask
        return self.norm(torch.relu(self.conv(x)))


class _Res2Conv(nn.Module):
    """Res2Net multi-scale convolution: channel groups refined hierarchically."""

    def __init__(self, channels: int, kernel: int, dilation: int, scale: int = 8) -> None:
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.blocks = nn.ModuleList(
            _ConvBlock(width, width, kernel, dilation) for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        chunks = x.chunk(self.scale, dim=1)
        outputs = [chunks[0]]
        previous = None
        for chunk, block in zip(chunks[1:], self.blocks, strict=True):
            previous = block(chunk if previous is None else chunk + previous, mask)
            outputs.append(previous)
        return torch.cat(outputs, dim=1)


class _SqueezeExcitation(nn.Module):
    """Channel gates from the masked time average."""

    def __init__(self, channels: int, bottleneck: int = 128) -> None:
        super().__init__()
        self.squeeze = nn.Conv1d(channels, bottleneck, kernel_size=1)
        self.excite = nn.Conv1d(bottleneck, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mean, _ = masked_mean_std(x, mask)
        return x * torch.sigmoid(self.excite(torch.relu(self.squeeze(mean))))


class _SERes2Block(nn.Module):
    def __init__(self, channels: int, kernel: int, dilation: int) -> None:
        super().__init__()
        self.reduce = _ConvBlock(channels, channels)
        self.res2 = _Res2Conv(channels, kernel, dilation)
        self.expand = _ConvBlock(channels, channels)
        self.gate = _SqueezeExcitation(channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.res2(self.reduce(x, mask), mask), mask)
        return x + self.gate(y, mask)


class ECAPATDNN(nn.Module):
    """ECAPA-TDNN: (B, C_in, T) + lengths -> embeddings (B, E).

    Args:
        in_dim: C_in, the aggregated feature size.
        channels: C, 512 or 1024 in the paper's comparisons.
        embed_dim: E.
        attention_dim: hidden width of the attentive statistics pooling.

    Example:
        >>> ecapa = ECAPATDNN(32, channels=64, embed_dim=16).eval()
        >>> ecapa(torch.randn(2, 32, 30), torch.tensor([30, 17])).shape
        torch.Size([2, 16])
    """

    def __init__(
        self, in_dim: int, *, channels: int = 512, embed_dim: int = 192, attention_dim: int = 128
    ) -> None:
        super().__init__()
        self.out_dim = embed_dim
        self.stem = _ConvBlock(in_dim, channels, kernel=5)
        self.blocks = nn.ModuleList(_SERes2Block(channels, 3, dilation) for dilation in (2, 3, 4))
        self.aggregate = _ConvBlock(3 * channels, 3 * channels)
        self.pooling = AttentiveStatisticsPooling(3 * channels, bottleneck=attention_dim)
        self.head = EmbeddingHead(self.pooling.out_dim, embed_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T), lengths (B,) -> (B, E)."""
        mask = frame_mask(lengths, x.shape[-1]).unsqueeze(1).to(x.dtype)
        x = self.stem(x, mask)
        outputs = []
        for block in self.blocks:
            x = block(x, mask)
            outputs.append(x)
        x = self.aggregate(torch.cat(outputs, dim=1), mask)
        return self.head(self.pooling(x, lengths))
