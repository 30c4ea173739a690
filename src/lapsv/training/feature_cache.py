"""Hidden states of a frozen frontend, computed once for K augmented views of every crop.

With a frozen frontend the hidden states of a crop never change, so training backends on
a CPU need not recompute them every epoch: epoch ``e`` reuses view ``e % K``. Each view is
a full pass over the data with its own random crops, speed factors and augmentation (the
dataset's randomness for epoch ``view``), so K views keep K-fold augmentation diversity.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from lapsv.data.dataset import CropDataset, collate_crops
from lapsv.errors import ConfigError
from lapsv.frontends import Frontend


class FrozenFeatureCache:
    """(features (B, L, T, D), frame lengths (B,), labels (B,)) batches from cached views.

    Args:
        frontend: a frozen frontend.
        dataset: fixed-length crops; its epoch is set to the view being computed.
        views: K, the number of distinct augmented passes kept in memory (float16).
        max_gigabytes: refuse to cache more than this.
    """

    def __init__(
        self,
        frontend: Frontend,
        dataset: CropDataset,
        *,
        views: int,
        batch_size: int,
        device: torch.device | str,
        seed: int = 0,
        num_workers: int = 0,
        max_gigabytes: float = 8.0,
        progress: bool = True,
    ) -> None:
        frames = int(frontend.frame_lengths(torch.tensor([dataset.crop_samples]))[0])
        size = len(dataset) * views * frontend.n_layers * frames * frontend.hidden_size * 2
        if size > max_gigabytes * 1e9:
            raise ConfigError(
                f"caching {views} views of {len(dataset)} crops needs {size / 1e9:.1f} GB "
                f"(limit {max_gigabytes} GB): lower data.cached_views or set it to 0"
            )
        self.frontend, self.dataset, self.views = frontend, dataset, views
        self.batch_size, self.device, self.seed = batch_size, device, seed
        self.num_workers, self.progress = num_workers, progress
        self.store: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _compute(self, view: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        self.dataset.set_epoch(view)
        loader = DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_crops,
            # its own generator: computing a view never draws from the global one, which a
            # resumed run has restored (its dropout must match the uninterrupted run's)
            generator=torch.Generator().manual_seed(self.seed),
        )
        features, frame_lengths, labels = [], [], []
        description = f"frontend features, view {view + 1}/{self.views}"
        for waves, batch_labels in tqdm(
            loader, desc=description, disable=not self.progress, leave=False
        ):
            waves = waves.to(self.device)
            lengths = torch.full((waves.shape[0],), waves.shape[1], device=waves.device)
            with torch.no_grad():
                hidden, frames = self.frontend(waves, lengths)
            features.append(hidden.to(torch.float16).cpu())
            frame_lengths.append(frames.cpu())
            labels.append(batch_labels)
        return torch.cat(features), torch.cat(frame_lengths), torch.cat(labels)

    def batches(
        self, epoch: int, *, skip: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Shuffled full batches of view ``epoch % K`` (computed on first use), from the
        ``skip``-th on (resuming mid-epoch)."""
        view = epoch % self.views
        if view not in self.store:
            self.store[view] = self._compute(view)
        features, frame_lengths, labels = self.store[view]
        order = np.random.default_rng((self.seed, epoch, 104729)).permutation(len(labels))
        first = skip * self.batch_size
        for start in range(first, len(order) - self.batch_size + 1, self.batch_size):
            rows = torch.from_numpy(order[start : start + self.batch_size])
            yield (
                features[rows].to(self.device, torch.float32),
                frame_lengths[rows].to(self.device),
                labels[rows].to(self.device),
            )

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size
