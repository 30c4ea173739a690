"""Training data: what a validation report lets through, batch sizes, the crop loader and
the cache of a frozen frontend's hidden states."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from lapsv.data.augment import Augmenter, NoiseBank, RirBank
from lapsv.data.dataset import (
    CropConfig,
    CropDataset,
    EpochShuffleSampler,
    SpeakerBalancedSampler,
    collate_crops,
)
from lapsv.data.manifest import Manifest
from lapsv.data.validate import SHOWN_IN_ERRORS, DataError, ValidationReport
from lapsv.errors import ConfigError
from lapsv.files import atomic_write_text
from lapsv.frontends import Frontend
from lapsv.training.config import DataConfig, TrainConfig
from lapsv.training.feature_cache import FrozenFeatureCache

SPEED_FACTORS = (1.0, 0.9, 1.1)


def micro_batch(config: TrainConfig, processes: int) -> int:
    """Utterances per process and micro-batch: the global batch split over both.

    >>> from lapsv.training.config import OptimConfig
    >>> micro_batch(TrainConfig(optim=OptimConfig(batch_size=12, grad_accum=2)), 2)
    3
    """
    return max(config.optim.batch_size // (processes * config.optim.grad_accum), 1)


def warn_global_batch(config: TrainConfig, processes: int, global_batch: int) -> None:
    """Warn when ``optim.batch_size`` does not split evenly (pointing at the caller of
    the :class:`Trainer`)."""
    if global_batch != config.optim.batch_size:
        warnings.warn(
            f"optim.batch_size {config.optim.batch_size} is not a multiple of "
            f"{processes} process(es) x {config.optim.grad_accum} "
            f"accumulation step(s): the global batch is {global_batch}",
            stacklevel=3,
        )


def accept_report(
    report: ValidationReport,
    path: str,
    *,
    data: DataConfig,
    training: bool,
    out_dir: Path,
    main_process: bool,
) -> Manifest:
    """The manifest training may use after the check of its files (``report``).

    Problems stop training with one report of all of them, unless ``data.drop_invalid``
    (then the bad items are dropped with a warning); the full list goes to a file in
    ``out_dir``. Warnings point at the caller of the :class:`Trainer`.
    """
    if report.ok:
        if training:
            _warn_short(path, report, crop=data.crop_seconds, main_process=main_process)
        return report.manifest
    listing = out_dir / f"data_problems_{'train' if training else 'val'}.txt"
    if main_process:
        atomic_write_text(listing, report.format() + "\n")
    if not data.drop_invalid:
        raise DataError(
            f"{report.format(limit=SHOWN_IN_ERRORS)}\nevery problem: {listing}\nfix the "
            "files or the manifest, or train without these items: data.drop_invalid=true "
            "(lapsv train --drop-invalid)"
        )
    if main_process:
        warnings.warn(
            f"{report.summary()}; dropped (data.drop_invalid), listed in {listing}",
            stacklevel=4,
        )
    if training:
        _warn_short(path, report, crop=data.crop_seconds, main_process=main_process)
    return report.valid_manifest()


def _warn_short(path: str, report: ValidationReport, *, crop: float, main_process: bool) -> None:
    """Usable utterances shorter than the crop (repeated to fill it): a warning."""
    short = sum(
        d is not None and d < crop for i, d in enumerate(report.durations) if i not in report.bad
    )
    if short and main_process:
        warnings.warn(
            f"{path}: {short} of {len(report.manifest) - len(report.bad)} utterances are "
            f"shorter than the {crop:g} s crop: each is repeated to fill it (set "
            "data.min_seconds to report them as problems instead)",
            stacklevel=5,
        )


def check_data(config: TrainConfig, manifest: Manifest, per_process: int) -> None:
    """At least 2 speakers and one micro-batch (``per_process`` utterances) of them."""
    if len(manifest.speakers) < 2:
        raise ConfigError(f"{config.data.train_manifest}: training needs at least 2 speakers")
    if len(manifest) < per_process:
        raise ConfigError(
            f"{config.data.train_manifest}: {len(manifest)} utterances, fewer than "
            f"one batch of {per_process}; lower optim.batch_size"
        )


def build_loader(
    config: TrainConfig, manifest: Manifest, batch_size: int
) -> tuple[DataLoader, CropDataset, EpochShuffleSampler]:
    """Random crops of ``manifest`` in micro-batches of ``batch_size``, not yet prepared
    by Accelerate; the dataset and the sampler are returned to set their epoch."""
    data = config.data
    factors = SPEED_FACTORS if data.speed_perturb else (1.0,)
    augment = build_augmenter(data)
    dataset = CropDataset(
        manifest,
        CropConfig(seconds=data.crop_seconds, speed_factors=factors),
        augment=augment,
        seed=config.seed,
    )
    speakers = [u.speaker for u in manifest]
    sampler: EpochShuffleSampler
    if data.sampler == "balanced":
        sampler = SpeakerBalancedSampler(speakers, seed=config.seed)
    elif data.sampler == "shuffle":
        sampler = EpochShuffleSampler(len(speakers), seed=config.seed)
    else:
        raise ConfigError(f"data.sampler must be 'shuffle' or 'balanced', not {data.sampler!r}")
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=data.num_workers,
        collate_fn=collate_crops,
        persistent_workers=data.num_workers > 0,
        # its own generator: starting an epoch never draws from the global one, so a
        # resumed run's random stream (dropout) is the uninterrupted run's
        generator=torch.Generator().manual_seed(config.seed),
    )
    return loader, dataset, sampler


def build_augmenter(data: DataConfig) -> Augmenter | None:
    """MUSAN noise and RIR reverberation, or None without either (or at probability 0)."""
    if not (data.musan or data.rirs) or data.augment_probability <= 0:
        return None
    noise = NoiseBank(data.musan) if data.musan else None
    rirs = RirBank(data.rirs) if data.rirs else None
    return Augmenter(noise, rirs, probability=data.augment_probability)


def feature_cache(
    config: TrainConfig,
    frontend: Frontend,
    dataset: CropDataset,
    batch_size: int,
    device: torch.device | str,
    progress: bool,
) -> FrozenFeatureCache | None:
    """The cache of ``data.cached_views`` views with a frozen frontend, else None."""
    if not (config.model.frontend.freeze and config.data.cached_views > 0):
        return None
    return FrozenFeatureCache(
        frontend,
        dataset,
        views=config.data.cached_views,
        batch_size=batch_size,
        device=device,
        seed=config.seed,
        num_workers=config.data.num_workers,
        progress=progress,
    )
