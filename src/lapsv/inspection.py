"""Which layers the model uses over time: LAP's layer scores, as numbers and pictures."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lapsv.layers.aggregation import LayerAttentivePooling
from lapsv.model import SpeakerModel
from lapsv.scoring.plots import pyplot, save_figure


@dataclasses.dataclass(frozen=True)
class LayerView:
    """What one utterance shows of the model's layers.

    Attributes:
        weights: (H, T, L) layer weights (LAP: sigmoid scores per head; SUPERB its static
            softmax weights, H=1; ``last`` a one-hot on the last layer).
        winners: (T, D) for LAP: the layer its max keeps per frame and channel (see
            :func:`winner_statistics`); ``None`` for other aggregations.
        frames_per_second: the frontend's frame rate (time axis of plots).
    """

    weights: np.ndarray
    winners: np.ndarray | None
    frames_per_second: float


def layer_view(model: SpeakerModel, waveform: np.ndarray) -> LayerView:
    """The layer weights (and LAP's winning layers) of one 16 kHz utterance, from one
    eval-mode pass of the frontend."""
    lap = next((m for m in model.modules() if isinstance(m, LayerAttentivePooling)), None)
    waves = torch.as_tensor(waveform, dtype=torch.float32)[None]
    with model.evaluating():
        hidden_states, frames = model.frontend(waves, torch.tensor([waves.shape[1]]))
        _, weights = model.backend.forward_with_layer_weights(hidden_states, frames)
        winners = None if lap is None else lap.winning_layers(hidden_states)
    valid = int(frames[0])
    return LayerView(
        weights[0, :, :valid].float().cpu().numpy(),
        None if winners is None else winners[0, :valid].cpu().numpy(),
        model.frontend.frames_per_second,
    )


def dominant_layers(weights: Sequence[np.ndarray], *, top: int = 3) -> list[tuple[int, float]]:
    """The ``top`` layers with the highest mean weight over heads and frames of all inputs."""
    mean = np.concatenate([w.mean(axis=0) for w in weights]).mean(axis=0)  # (L,)
    order = np.argsort(-mean)[:top]
    return [(int(layer), float(mean[layer])) for layer in order]


def winner_statistics(
    winners: Sequence[np.ndarray], n_layers: int, *, dominance: float = 0.9
) -> dict[str, Any]:
    """How LAP's max mixes layers, from :attr:`LayerView.winners` of several utterances.

    Returns ``share_per_layer`` (fraction of all (frame, channel) cells each layer wins),
    ``dominated_channels`` (channels one layer wins on more than ``dominance`` of the
    frames) of ``channels``, and ``switch_rate``: how often a channel's winning layer
    changes from one frame to the next (mean over utterances). On a residual stream a
    channel means the same in every layer and switching is harmless; on unaligned layers
    it makes the channel jump between unrelated features.

    Example:
        >>> first = np.array([[0, 1], [0, 1], [0, 2], [0, 2]])  # 4 frames, 2 channels
        >>> stats = winner_statistics([first], n_layers=3)
        >>> stats["share_per_layer"], stats["dominated_channels"], stats["switch_rate"]
        ([0.5, 0.25, 0.25], 1, 0.167)
    """
    cells = np.concatenate(winners)  # (frames of all utterances, D)
    per_channel = np.stack([(cells == layer).mean(axis=0) for layer in range(n_layers)])
    switches = [float((w[1:] != w[:-1]).mean()) for w in winners if len(w) > 1]
    return {
        "share_per_layer": [round(float(share), 3) for share in per_channel.mean(axis=1)],
        "dominated_channels": int((per_channel.max(axis=0) > dominance).sum()),
        "channels": int(cells.shape[1]),
        "switch_rate": round(float(np.mean(switches)), 3) if switches else 0.0,
    }


def plot_layer_weights(
    weights: np.ndarray,
    path: str | Path,
    *,
    title: str = "LAP layer scores",
    frames_per_second: float = 100.0,
    max_heads: int = 16,
) -> Path:
    """Heat maps of (H, T, L) layer weights: the head average on top, then each head.

    Layer 0 is the frontend's first hidden state (CNN/feature projection, or GE2E's first
    LSTM layer); time runs left to right.
    """
    plt = pyplot()
    heads, frames, layers = weights.shape
    shown = min(heads, max_heads)
    columns = min(shown, 4) if heads > 1 else 1
    rows = int(np.ceil(shown / columns)) if heads > 1 else 0
    figure = plt.figure(figsize=(10, 2.6 + 1.5 * rows))
    grid = figure.add_gridspec(1 + rows, columns, height_ratios=[2.0] + [1.0] * rows)
    extent = (0, frames / frames_per_second, -0.5, layers - 0.5)
    top = figure.add_subplot(grid[0, :])
    image = top.imshow(
        weights.mean(axis=0).T, aspect="auto", origin="lower", extent=extent, cmap="magma"
    )
    top.set_title(f"{title}: mean over {heads} head(s)")
    top.set_ylabel("layer")
    top.set_xlabel("time (s)")
    figure.colorbar(image, ax=top, fraction=0.025, pad=0.01)
    for head in range(shown if heads > 1 else 0):
        axis = figure.add_subplot(grid[1 + head // columns, head % columns])
        axis.imshow(
            weights[head].T,
            aspect="auto",
            origin="lower",
            extent=extent,
            cmap="magma",
            vmin=float(weights.min()),
            vmax=float(weights.max()),
        )
        axis.set_title(f"head {head}", fontsize=8)
        axis.tick_params(labelsize=6)
    figure.tight_layout()
    try:
        return save_figure(figure, path)
    finally:
        plt.close(figure)
