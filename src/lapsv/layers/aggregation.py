"""Layer aggregation: all hidden layers (B, L, T, D) -> one feature sequence (B, C, T).

Every aggregator reports ``out_dim`` (C) and returns its layer weights (B, H, T, L) next to
its features, so the weights can be plotted whatever the aggregator.
"""

from __future__ import annotations

import torch
from torch import nn


class LayerAttentivePooling(nn.Module):
    """Layer Attentive Pooling (LAP), METHOD.md §2.

    A shared D->D projection, then per frame and per head a squeeze-excitation over the
    layer axis fed with the channel mean and max of each layer gives a time-dynamic weight
    for every layer (sigmoid, score dropout); weighted layers are pooled by a MAX over the
    layer axis, heads concatenated and projected to ``out_dim``.

    Args:
        n_layers: L, number of hidden layers fed in.
        in_dim: D, their width; must be divisible by ``n_heads``.
        n_heads: H.
        out_dim: C.
        score_dropout: dropout on the layer scores during training.

    Example:
        >>> lap = LayerAttentivePooling(n_layers=13, in_dim=64, n_heads=4, out_dim=32).eval()
        >>> features, scores = lap(torch.randn(2, 13, 50, 64))
        >>> tuple(features.shape), tuple(scores.shape)
        ((2, 32, 50), (2, 4, 50, 13))
    """

    def __init__(
        self,
        n_layers: int,
        in_dim: int,
        *,
        n_heads: int = 16,
        out_dim: int = 512,
        score_dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if in_dim % n_heads:
            raise ValueError(f"LAP: in_dim {in_dim} is not divisible by n_heads {n_heads}")
        if n_layers < 2:
            raise ValueError(f"LAP needs at least 2 layers to weigh, got n_layers={n_layers}")
        self.n_layers, self.in_dim, self.n_heads, self.out_dim = n_layers, in_dim, n_heads, out_dim
        squeezed = n_layers // 2
        # BatchNorm + 1x1 conv over channels, shared by every layer and frame; written as
        # BatchNorm1d + Linear on (B*L*T, D) rows: the same parameters, no permutes.
        self.in_norm = nn.BatchNorm1d(in_dim)
        self.in_proj = nn.Linear(in_dim, in_dim)
        self.squeeze_weight = nn.Parameter(torch.empty(n_heads, squeezed, n_layers))
        self.squeeze_bias = nn.Parameter(torch.zeros(n_heads, squeezed))
        self.excite_weight = nn.Parameter(torch.empty(n_heads, n_layers, squeezed))
        self.excite_bias = nn.Parameter(torch.zeros(n_heads, n_layers))
        self.score_dropout = nn.Dropout(score_dropout)
        self.out_proj = nn.Linear(in_dim, out_dim)
        self.out_norm = nn.BatchNorm1d(out_dim)
        for weight in (self.squeeze_weight, self.excite_weight):
            for head_weight in weight:  # one (out, in) matrix per head
                nn.init.xavier_uniform_(head_weight)

    def init_input_projection(self, kind: str) -> None:
        """``"xavier"`` (METHOD.md §3) or ``"identity"``: start from the frontend's own
        features instead of a random mix of them (helps when training data is scarce)."""
        if kind == "identity":
            with torch.no_grad():
                self.in_proj.weight.copy_(torch.eye(self.in_dim))
                self.in_proj.bias.zero_()
        elif kind == "xavier":
            nn.init.xavier_uniform_(self.in_proj.weight)
            nn.init.zeros_(self.in_proj.bias)
        else:
            raise ValueError(f"lap_init must be 'xavier' or 'identity', not {kind!r}")

    def _excite(self, stats: torch.Tensor) -> torch.Tensor:
        """Per-head squeeze-excitation over layers: (B, T, H, L) -> (B, T, H, L)."""
        hidden = torch.einsum("bthl,hsl->bths", stats, self.squeeze_weight) + self.squeeze_bias
        return torch.einsum("bths,hls->bthl", hidden.relu(), self.excite_weight) + self.excite_bias

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, T, D) -> features (B, C, T), layer scores (B, H, T, L) in [0, 1]."""
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


class SuperbWeightedSum(nn.Module):
    """SUPERB baseline: one learnable weight per layer, softmax over layers, weighted sum.

    Example:
        >>> superb = SuperbWeightedSum(n_layers=3, in_dim=8)
        >>> features, weights = superb(torch.randn(2, 3, 5, 8))
        >>> tuple(features.shape), round(weights[0, 0, 0].sum().item(), 6)
        ((2, 8, 5), 1.0)
    """

    def __init__(self, n_layers: int, in_dim: int) -> None:
        super().__init__()
        self.n_layers, self.out_dim = n_layers, in_dim
        self.layer_logits = nn.Parameter(torch.zeros(n_layers))

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, T, D) -> features (B, D, T), weights (B, 1, T, L) summing to 1 over L."""
        weights = torch.softmax(self.layer_logits, dim=0)
        features = torch.einsum("bltd,l->bdt", hidden_states, weights)
        batch, _, frames, _ = hidden_states.shape
        return features, weights.expand(batch, 1, frames, self.n_layers)


class LastLayer(nn.Module):
    """Baseline that uses only the last hidden layer (no parameters)."""

    def __init__(self, n_layers: int, in_dim: int) -> None:
        super().__init__()
        self.n_layers, self.out_dim = n_layers, in_dim

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, T, D) -> features (B, D, T), one-hot weights (B, 1, T, L)."""
        batch, n_layers, frames, _ = hidden_states.shape
        weights = hidden_states.new_zeros(n_layers)
        weights[-1] = 1.0
        features = hidden_states[:, -1].transpose(1, 2)
        return features, weights.expand(batch, 1, frames, n_layers)
