"""Multi-Head Factorized Attentive pooling (MHFA, Peng et al., SLT 2022), masked.

MHFA weighs the layers itself: keys and values come from two separate layer aggregations
(SUPERB weights in the original, LAP in the paper's LAP+MHFA), are compressed, and each
attention head pools the values over valid frames with its own softmax over time.
"""

from __future__ import annotations

import torch
from torch import nn

from lapsv.layers.masking import frame_mask, masked_softmax


class MHFA(nn.Module):
    """(B, L, T, D) hidden states + lengths -> embeddings (B, E).

    Args:
        key_aggregation, value_aggregation: layer aggregators (B, L, T, D) -> (B, C, T).
        n_heads: attention heads.
        compression_dim: width of compressed keys and values.
        embed_dim: E.

    Example:
        >>> from lapsv.layers.aggregation import SuperbWeightedSum
        >>> mhfa = MHFA(SuperbWeightedSum(3, 8), SuperbWeightedSum(3, 8), n_heads=4,
        ...             compression_dim=6, embed_dim=5)
        >>> embeddings, _ = mhfa(torch.randn(2, 3, 10, 8), torch.tensor([10, 6]))
        >>> embeddings.shape
        torch.Size([2, 5])
    """

    def __init__(
        self,
        key_aggregation: nn.Module,
        value_aggregation: nn.Module,
        *,
        n_heads: int = 64,
        compression_dim: int = 128,
        embed_dim: int = 192,
    ) -> None:
        super().__init__()
        self.out_dim = embed_dim
        self.key_aggregation = key_aggregation
        self.value_aggregation = value_aggregation
        self.key_compression = nn.Linear(key_aggregation.out_dim, compression_dim)
        self.value_compression = nn.Linear(value_aggregation.out_dim, compression_dim)
        self.attention = nn.Linear(compression_dim, n_heads)
        self.projection = nn.Linear(n_heads * compression_dim, embed_dim)

    def forward(
        self, hidden_states: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L, T, D), (B,) -> embeddings (B, E), key layer weights (B, H', T, L)."""
        keys, layer_weights = self.key_aggregation(hidden_states)
        values, _ = self.value_aggregation(hidden_states)
        keys = self.key_compression(keys.transpose(1, 2))  # (B, T, c)
        values = self.value_compression(values.transpose(1, 2))
        logits = self.attention(keys).transpose(1, 2)  # (B, H, T)
        mask = frame_mask(lengths, logits.shape[-1]).unsqueeze(1)
        weights = masked_softmax(logits, mask)
        values = values.masked_fill(~mask.transpose(1, 2), 0.0)
        pooled = torch.bmm(weights, values)  # (B, H, c)
        return self.projection(pooled.flatten(1)), layer_weights
