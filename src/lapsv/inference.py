"""Batched embedding extraction: sort by length, pad, embed, restore the input order."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch

from lapsv.audio import pad_batch


class Embedder(Protocol):
    """Anything lapsv can embed with: a SpeakerModel or the built-in GE2E encoder."""

    embed_dim: int
    sample_rate: int

    def embed(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor: ...


def embed_waveforms(
    model: Embedder,
    waveforms: Sequence[np.ndarray],
    *,
    batch_size: int = 16,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Embed 16 kHz mono waveforms in length-sorted batches.

    Sorting by length keeps padding small; masking makes the result independent of it.

    Args:
        model: SpeakerModel or GE2EEncoder, already on ``device``.
        waveforms: 1-D float32 arrays of any lengths.
        batch_size: utterances per forward pass.

    Returns:
        (len(waveforms), E) float32, in input order.
    """
    embeddings = np.zeros((len(waveforms), model.embed_dim), dtype=np.float32)
    order = sorted(range(len(waveforms)), key=lambda i: len(waveforms[i]), reverse=True)
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        batch, lengths = pad_batch([waveforms[i] for i in rows])
        output = model.embed(batch.to(device), lengths.to(device))
        embeddings[rows] = output.float().cpu().numpy()
    return embeddings
