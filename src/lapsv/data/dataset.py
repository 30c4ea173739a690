"""Training data: random fixed-length crops with speaker labels, speed-perturbation classes.

Every epoch visits every utterance once (in a shuffled order, or speaker-balanced). A crop
shorter utterances cannot fill is made by repeating the utterance, so training batches
carry no padding. Speed perturbation (0.9x / 1.1x) turns each speaker into three classes:
label ``k * n_speakers + speaker`` for the k-th factor, as in METHOD.md §4.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import soundfile
import torch
from torch.utils.data import Dataset, Sampler

from lapsv.audio import SAMPLE_RATE, load_audio
from lapsv.data.augment import speed_perturb
from lapsv.data.manifest import Manifest

Augment = Callable[[np.ndarray, np.random.Generator], np.ndarray]


@dataclasses.dataclass(frozen=True)
class CropConfig:
    """How training examples are cut: crop length and speed-perturbation factors."""

    seconds: float = 2.0
    speed_factors: tuple[float, ...] = (1.0,)


class CropDataset(Dataset):
    """(crop (N,) float32, label) examples from a manifest.

    Args:
        manifest: training utterances.
        crop: crop length and speed factors.
        augment: optional ``f(wave, rng) -> wave`` applied after cropping.
        seed: base seed; each (epoch, index) gets its own generator, so results do not
            depend on the number of data-loader workers.

    Labels are indices into ``speakers`` (sorted), shifted by ``k * n_speakers`` for the
    k-th speed factor; ``n_classes = n_speakers * len(speed_factors)``.
    """

    def __init__(
        self,
        manifest: Manifest,
        crop: CropConfig,
        *,
        augment: Augment | None = None,
        seed: int = 0,
    ) -> None:
        self.manifest = manifest
        self.utterances = manifest.utterances
        self.crop = crop
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.speakers = manifest.speakers
        self.speaker_index = {speaker: i for i, speaker in enumerate(self.speakers)}
        self.n_classes = len(self.speakers) * len(crop.speed_factors)
        self.crop_samples = round(crop.seconds * SAMPLE_RATE)

    def __len__(self) -> int:
        return len(self.utterances)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        rng = np.random.default_rng((self.seed, self.epoch, index))
        utterance = self.utterances[index]
        factor_index = int(rng.integers(len(self.crop.speed_factors)))
        factor = self.crop.speed_factors[factor_index]
        # read a little more than the crop so that speed perturbation still fills it
        needed = int(np.ceil(self.crop_samples * factor)) + 16
        wave = read_random_segment(self.manifest.audio_path(utterance), needed, rng)
        wave = fit_length(speed_perturb(wave, factor), self.crop_samples, rng)
        if self.augment is not None:
            wave = self.augment(wave, rng)
        label = factor_index * len(self.speakers) + self.speaker_index[utterance.speaker]
        return torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), label


def read_random_segment(path, samples: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``samples``-long segment of a 16 kHz file (the whole file if shorter).

    Seeks inside the file instead of decoding all of it when the rate is already 16 kHz.
    """
    info = soundfile.info(str(path))
    if info.samplerate != SAMPLE_RATE or info.frames <= samples:
        wave = load_audio(path, min_seconds=0.0)
        start = int(rng.integers(max(len(wave) - samples, 0) + 1))
        return wave[start : start + samples]
    start = int(rng.integers(info.frames - samples + 1))
    data, _ = soundfile.read(
        str(path), start=start, frames=samples, dtype="float32", always_2d=True
    )
    return data.mean(axis=1, dtype=np.float32)


def fit_length(wave: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """Random crop to ``samples``; shorter waves are repeated until they fill it."""
    if len(wave) < samples:
        wave = np.tile(wave, int(np.ceil(samples / max(len(wave), 1))))
        return wave[:samples]
    start = int(rng.integers(len(wave) - samples + 1))
    return wave[start : start + samples]


class EpochShuffleSampler(Sampler[int]):
    """Every index exactly once per epoch, in an order fixed by (seed, epoch)."""

    def __init__(self, size: int, *, seed: int = 0) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch, 7919))
        return iter(rng.permutation(self.size).tolist())


class SpeakerBalancedSampler(EpochShuffleSampler):
    """Speakers drawn uniformly, then one of their utterances; as many draws as utterances.

    For corpora where a few speakers own most of the audio: every speaker is seen equally
    often, at the cost of not visiting every utterance in every epoch.
    """

    def __init__(self, speakers: Sequence[str], *, seed: int = 0) -> None:
        super().__init__(len(speakers), seed=seed)
        groups: dict[str, list[int]] = {}
        for index, speaker in enumerate(speakers):
            groups.setdefault(speaker, []).append(index)
        self.groups = list(groups.values())

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng((self.seed, self.epoch, 7919))
        chosen = rng.integers(len(self.groups), size=self.size)
        return iter(int(rng.choice(self.groups[g])) for g in chosen)


def collate_crops(batch: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack equal-length crops: (B, N) waveforms and (B,) labels."""
    waves = torch.stack([wave for wave, _ in batch])
    labels = torch.tensor([label for _, label in batch], dtype=torch.long)
    return waves, labels
