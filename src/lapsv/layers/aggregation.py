"""Layer aggregation: all hidden layers (B, L, T, D) -> one feature sequence (B, C, T).

Every aggregator reports ``out_dim`` (C) and returns its layer weights (B, H, T, L) next to
its features, so the weights can be plotted whatever the aggregator.
"""

from __future__ import annotations

import math

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
        per_layer_norm: normalise each layer with its own statistics first
            (:class:`PerLayerNorm`); the shared input BatchNorm follows it.

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
        per_layer_norm: bool = False,
    ) -> None:
        super().__init__()
        if in_dim % n_heads:
            raise ValueError(f"LAP: in_dim {in_dim} is not divisible by n_heads {n_heads}")
        if n_layers < 2:
            raise ValueError(f"LAP needs at least 2 layers to weigh, got n_layers={n_layers}")
        self.n_layers, self.in_dim, self.n_heads, self.out_dim = n_layers, in_dim, n_heads, out_dim
        squeezed = n_layers // 2
        self.layer_norm = PerLayerNorm(n_layers, in_dim) if per_layer_norm else nn.Identity()
        # BatchNorm + 1x1 conv over channels, shared by every layer and frame; kept as
        # BatchNorm1d + Linear modules (their parameters and buffers), applied to (B*L*T, D)
        # rows as one folded matmul by _project.
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

    def _project(self, rows: torch.Tensor) -> torch.Tensor:
        """``in_proj(in_norm(rows))`` for (N, D) rows, with the norm folded into the projection.

        BatchNorm is per-channel affine, so its scale goes into the projection's weights and
        its shift into the bias: (rows - mean) @ (W * scale)^T + (b + W @ beta). The result
        is the same up to float rounding, but the normalised rows are never materialised
        and, when ``rows`` needs no gradient (frozen frontend), backward runs one (N, D, D)
        matmul (the weight gradient) instead of two. Batch statistics (biased variance),
        running averages (unbiased variance, momentum) and ``num_batches_tracked`` are
        those of ``nn.BatchNorm1d`` (see ``batch_norm_center``).
        """
        norm = self.in_norm
        if rows.dtype in (torch.float16, torch.bfloat16):
            rows = rows.float()  # statistics in float32, as BatchNorm computes them
        centered, var = batch_norm_center(norm, rows, dims=(0,))
        scale = norm.weight * torch.rsqrt(var.squeeze(0) + norm.eps)
        weight = self.in_proj.weight * scale  # scales the input channels (columns)
        bias = torch.addmv(self.in_proj.bias, self.in_proj.weight, norm.bias)
        return torch.addmm(bias, centered, weight.t())

    @staticmethod
    @torch.no_grad()
    def _winners(x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """The layer whose x * score is largest: (B, L, T, H, d), (B, T, H, L) -> (B, T, H, d)."""
        return (x * scores.permute(0, 3, 1, 2).unsqueeze(-1)).max(dim=1).indices

    @classmethod
    def _weighted_layer_max(cls, x: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """max over layers of x * score: (B, L, T, H, d), (B, T, H, L) -> (B, T, H, d).

        The winning layer is found without autograd, then only the winners are gathered:
        the value is exactly the max, and backward scatters into the winning layers instead
        of building full-size comparison masks (ties, which amax would split, only occur
        between layers whose score dropout zeroed, where every gradient is zero anyway).
        """
        winner = cls._winners(x, scores)
        picked = x.gather(1, winner.unsqueeze(1)).squeeze(1)
        return picked * scores.gather(-1, winner)

    def _scored_layers(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, T, D) -> projected heads (B, L, T, H, d), layer scores (B, T, H, L)."""
        batch, n_layers, frames, dim = hidden_states.shape
        x = self._project(self.layer_norm(hidden_states).reshape(-1, dim))
        x = x.view(batch, n_layers, frames, self.n_heads, dim // self.n_heads)
        # sum (not mean) and max (not amax): their backward passes are a broadcast and a
        # scatter, not full-size divisions and comparison masks
        mean = (x.sum(dim=-1) / x.shape[-1]).permute(0, 2, 3, 1)  # (B, T, H, L)
        peak = x.max(dim=-1).values.permute(0, 2, 3, 1)
        scores = self.score_dropout(torch.sigmoid(self._excite(mean) + self._excite(peak)))
        return x, scores

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, T, D) -> features (B, C, T), layer scores (B, H, T, L) in [0, 1]."""
        batch, _, frames, dim = hidden_states.shape
        x, scores = self._scored_layers(hidden_states)
        pooled = self._weighted_layer_max(x, scores).reshape(batch * frames, dim)
        features = self.out_norm(self.out_proj(pooled)).view(batch, frames, self.out_dim)
        return features.transpose(1, 2), scores.permute(0, 2, 1, 3)

    @torch.no_grad()
    def winning_layers(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """(B, L, T, D) -> (B, T, D): for every frame and channel, the layer the max keeps.

        Before the output projection, channel ``c`` of frame ``t`` is one layer's value;
        this says which (heads concatenated, as in the pooled features).
        """
        x, scores = self._scored_layers(hidden_states)
        return self._winners(x, scores).flatten(2)


class SuperbWeightedSum(nn.Module):
    """SUPERB baseline: one learnable weight per layer, softmax over layers, weighted sum
    (of the layers normalised by :class:`PerLayerNorm` when ``per_layer_norm``).

    Example:
        >>> superb = SuperbWeightedSum(n_layers=3, in_dim=8)
        >>> features, weights = superb(torch.randn(2, 3, 5, 8))
        >>> tuple(features.shape), round(weights[0, 0, 0].sum().item(), 6)
        ((2, 8, 5), 1.0)
    """

    def __init__(self, n_layers: int, in_dim: int, *, per_layer_norm: bool = False) -> None:
        super().__init__()
        self.n_layers, self.out_dim = n_layers, in_dim
        self.layer_logits = nn.Parameter(torch.zeros(n_layers))
        self.layer_norm = PerLayerNorm(n_layers, in_dim) if per_layer_norm else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, T, D) -> features (B, D, T), weights (B, 1, T, L) summing to 1 over L."""
        weights = torch.softmax(self.layer_logits, dim=0)
        features = torch.einsum("bltd,l->bdt", self.layer_norm(hidden_states), weights)
        batch, _, frames, _ = hidden_states.shape
        return features, weights.expand(batch, 1, frames, self.n_layers)


class SingleLayer(nn.Module):
    """Baseline that uses one hidden layer only: the last one by default. With
    ``per_layer_norm`` that layer gets its own BatchNorm (otherwise no parameters).

    Example:
        >>> single = SingleLayer(n_layers=3, in_dim=8, index=1)
        >>> features, weights = single(torch.randn(2, 3, 5, 8))
        >>> tuple(features.shape), weights[0, 0, 0].tolist()
        ((2, 8, 5), [0.0, 1.0, 0.0])
    """

    def __init__(
        self, n_layers: int, in_dim: int, *, index: int = -1, per_layer_norm: bool = False
    ) -> None:
        super().__init__()
        if not -n_layers <= index < n_layers:
            raise ValueError(f"layer index {index} is outside the {n_layers} hidden layers")
        self.n_layers, self.out_dim, self.index = n_layers, in_dim, index % n_layers
        self.layer_norm = nn.BatchNorm1d(in_dim) if per_layer_norm else nn.Identity()

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, T, D) -> features (B, D, T), one-hot weights (B, 1, T, L)."""
        batch, n_layers, frames, _ = hidden_states.shape
        weights = hidden_states.new_zeros(n_layers)
        weights[self.index] = 1.0
        features = self.layer_norm(hidden_states[:, self.index].transpose(1, 2))
        return features, weights.expand(batch, 1, frames, n_layers)


class PerLayerNorm(nn.Module):
    """Standardise each hidden layer with its own statistics per channel: (B, L, T, D) -> same.

    For frontends whose layers differ in scale (Whisper's residual stream grows with depth),
    so that no layer dominates an aggregation by its size alone. BatchNorm statistics per
    (layer, channel), without an affine part, as s3prl's layer normalisation before its
    weighted sum: the aggregator's own input norm and projection follow. So with a frozen
    frontend no gradient reaches the (B, L, T, D) input path, which keeps training LAP on
    7 x 512 Whisper states 1.8x faster than with a learnt per-layer affine. In eval mode it
    is a fixed map per (layer, channel), so padding never changes a valid frame.

    Example:
        >>> norm = PerLayerNorm(n_layers=3, in_dim=4)
        >>> x = torch.randn(2, 3, 50, 4) * torch.tensor([1.0, 10.0, 100.0])[:, None, None]
        >>> norm(x).std(dim=(0, 2, 3)).round(decimals=1).tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, n_layers: int, in_dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(n_layers * in_dim, affine=False)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        # statistics over (B, T) in place: no (B, L*D, T) copy for nn.BatchNorm1d
        centered, var = batch_norm_center(self.norm, hidden_states, dims=(0, 2))
        return centered * torch.rsqrt(var + self.norm.eps)


def batch_norm_center(
    norm: nn.BatchNorm1d, x: torch.Tensor, dims: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` minus its mean over ``dims``, and the variance to divide it by, as ``norm`` would.

    In training these are the batch statistics (biased variance), and ``norm``'s running
    averages (unbiased variance, momentum, ``num_batches_tracked``) are updated exactly as
    ``nn.BatchNorm1d`` does; in eval they are the running averages. The channels of ``norm``
    are the remaining dims of ``x``, flattened in order; the variance keeps ``dims`` as
    size 1. ``norm`` keeps owning the parameters and buffers, so the state dict is
    BatchNorm's. Means are taken one dim at a time (two passes): on a CPU that is 2x faster
    than ``torch.var_mean`` over the outer dims of a (B, L, T, D) or (N, D) tensor.

    Example:
        >>> norm = nn.BatchNorm1d(6)
        >>> centered, var = batch_norm_center(norm, torch.randn(4, 2, 5, 3), dims=(0, 2))
        >>> centered.shape, var.shape, norm.num_batches_tracked.item()
        (torch.Size([4, 2, 5, 3]), torch.Size([1, 2, 1, 3]), 1)
    """
    if not norm.training:  # python ints: an ONNX trace must not compute this shape
        shape = [1 if d in dims else int(size) for d, size in enumerate(x.shape)]
        return x - norm.running_mean.view(shape), norm.running_var.view(shape)
    mean = _mean_over(x, dims)
    centered = x - mean
    var = _mean_over(centered.square(), dims)
    with torch.no_grad():
        norm.num_batches_tracked.add_(1)
        momentum = norm.momentum
        if momentum is None:  # cumulative average, as BatchNorm does
            momentum = 1.0 / float(norm.num_batches_tracked)
        count = math.prod(x.shape[d] for d in dims)
        norm.running_mean.lerp_(mean.detach().flatten(), momentum)
        norm.running_var.lerp_(var.detach().flatten() * (count / max(count - 1, 1)), momentum)
    return centered, var


def _mean_over(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    for dim in sorted(dims, reverse=True):
        x = x.mean(dim=dim, keepdim=True)
    return x
