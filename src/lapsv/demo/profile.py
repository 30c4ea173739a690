"""A training-free layer profile: how well each hidden layer alone separates speakers.

Every layer's frames are pooled into their mean and standard deviation over the valid
frames, standardised per dimension with statistics of training utterances, and scored by
cosine on the validation trials (held-out training speakers, never the test ones). The
layer with the lowest EER is the demo's "best single layer".
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lapsv.config import FrontendConfig
from lapsv.data.manifest import read_manifest
from lapsv.embeddings import EmbeddingSet
from lapsv.files import atomic_write_text
from lapsv.frontends import Frontend, build_frontend
from lapsv.inference import extract_embeddings
from lapsv.scoring.evaluate import score_trials
from lapsv.scoring.plots import pyplot, save_figure
from lapsv.scoring.trials import read_trials


class PooledLayers(nn.Module):
    """Mean and standard deviation of every hidden layer over its valid frames.

    An embedder (for :func:`~lapsv.inference.extract_embeddings`) whose (B, L * 2D)
    "embedding" holds, layer after layer, the (2D,) [mean, std] of that layer's frames.

    Example:
        >>> from lapsv.frontends import GE2EFrontend
        >>> pooled = PooledLayers(GE2EFrontend())
        >>> pooled.embed_batch(torch.randn(2, 16000), torch.tensor([16000, 9000])).shape
        torch.Size([2, 1536])
    """

    def __init__(self, frontend: Frontend) -> None:
        super().__init__()
        self.frontend = frontend
        self.sample_rate = frontend.sample_rate
        self.max_input_seconds = frontend.max_input_seconds
        self.width = 2 * frontend.hidden_size
        self.embed_dim = frontend.n_layers * self.width

    @torch.no_grad()
    def embed_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        hidden, frames = self.frontend.eval()(waveforms, lengths)  # (B, L, T, D)
        valid = torch.arange(hidden.shape[2], device=hidden.device) < frames[:, None]
        weights = valid[:, None, :, None].to(hidden.dtype)
        count = frames.clamp(min=1)[:, None, None].to(hidden.dtype)
        mean = (hidden * weights).sum(dim=2) / count
        var = ((hidden - mean[:, :, None]).square() * weights).sum(dim=2) / count
        return torch.cat([mean, var.clamp(min=1e-8).sqrt()], dim=-1).flatten(1)


@dataclasses.dataclass(frozen=True)
class LayerProfile:
    """eers: validation EER % of each hidden layer alone; best: the layer with the lowest."""

    eers: tuple[float, ...]

    @property
    def best(self) -> int:
        return int(np.argmin(self.eers))


def layer_profile(
    frontend_config: FrontendConfig,
    *,
    val_manifest: Path,
    val_trials: Path,
    train_manifest: Path,
    out: Path,
    reference_per_speaker: int = 5,
) -> LayerProfile:
    """The profile of a frontend's layers (module docstring); reused from ``out`` if there.

    ``reference_per_speaker`` random utterances of every training speaker give each pooled
    dimension's mean and standard deviation.
    """
    saved = out / "profile.json"
    if saved.is_file():
        return LayerProfile(tuple(json.loads(saved.read_text())["eer_per_layer"]))
    pooler = PooledLayers(build_frontend(frontend_config))
    manifests = {
        "val": read_manifest(val_manifest),
        "reference": read_manifest(train_manifest).sample_per_speaker(reference_per_speaker),
    }
    sets = {}
    for part, manifest in manifests.items():
        items = [(u.utt, manifest.audio_path(u)) for u in manifest]
        sets[part] = extract_embeddings(pooler, items, progress=True)
    trials = read_trials(val_trials)
    eers = []
    for layer in range(pooler.frontend.n_layers):
        span = slice(layer * pooler.width, (layer + 1) * pooler.width)
        reference = sets["reference"].embeddings[:, span]
        mean, std = reference.mean(axis=0), reference.std(axis=0) + 1e-5
        val = sets["val"].columns(span)
        standardised = EmbeddingSet(val.ids, (val.embeddings - mean) / std, val.seconds)
        result = score_trials(
            standardised, trials, out=out / f"layer{layer}", title=f"layer {layer}, mean+std"
        )
        eers.append(round(float(result.metrics["eer"]), 3))
    atomic_write_text(saved, json.dumps({"eer_per_layer": eers}, indent=1))
    return LayerProfile(tuple(eers))


def plot_profile(profiles: dict[str, tuple[LayerProfile, tuple[str, ...]]], path: Path) -> Path:
    """Bar charts of every side's profile (validation EER % per hidden layer), side by side."""
    plt = pyplot()
    figure, axes = plt.subplots(1, len(profiles), figsize=(4.5 * len(profiles), 3.2), squeeze=False)
    for axis, (title, (profile, names)) in zip(axes[0], profiles.items(), strict=True):
        colours = ["tab:orange" if i == profile.best else "tab:blue" for i in range(len(names))]
        axis.bar(range(len(names)), profile.eers, color=colours)
        axis.set_xticks(range(len(names)), names)
        axis.set_ylabel("validation EER % (mean+std pooling)")
        axis.set_title(title, fontsize=9)
    figure.tight_layout()
    try:
        return save_figure(figure, path)
    finally:
        plt.close(figure)
