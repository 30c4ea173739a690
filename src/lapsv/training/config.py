"""Training recipes: one frozen dataclass tree, read from YAML with dotted overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lapsv.config import ModelConfig, apply_overrides, from_dict, load_yaml


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Training and validation data.

    Manifest and folder paths are relative to the recipe file unless absolute.
    ``val_manifest`` / ``val_trials`` describe held-out TRAINING-SET speakers used for
    model selection; test trials are never used while training.
    """

    train_manifest: str = ""
    val_manifest: str | None = None
    val_trials: str | None = None
    crop_seconds: float = 2.0
    speed_perturb: bool = True
    sampler: str = "shuffle"  # "shuffle" (every utterance once) or "balanced" (per speaker)
    musan: str | None = None
    rirs: str | None = None
    augment_probability: float = 0.6
    num_workers: int = 2
    mean_utterances: int = 300  # training utterances whose mean embedding is subtracted
    cached_views: int = 0  # frozen frontend: cache K augmented views of its hidden states
    # checked before training (lapsv.data.validate): speakers need this many usable
    # utterances, files this many seconds (shorter than the crop but longer than this: the
    # utterance is repeated to fill the crop) and this sample rate (null: any, resampled
    # on every read)
    min_utterances: int = 2
    min_seconds: float = 0.3
    sample_rate: int | None = 16000
    drop_invalid: bool = False  # drop problem items and train on the rest, instead of stopping


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Adam with a cosine learning-rate schedule after a linear warm-up."""

    epochs: int = 40
    batch_size: int = 512
    grad_accum: int = 1
    lr: float = 1e-3
    final_lr: float = 1e-5
    warmup_fraction: float = 0.1
    weight_decay: float = 5e-5
    weight_decay_scope: str = "weights"  # "weights": no decay on biases, norms, layer logits
    grad_clip: float = 5.0  # max gradient norm; 0 disables


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """AAM-softmax with sub-centers and inter-top-K (METHOD.md §4)."""

    scale: float = 30.0
    margin: float = 0.3
    initial_margin: float = 0.0
    margin_ramp_epochs: float = 20.0
    margin_ramp_shape: str = "log"
    subcenters: int = 3
    topk: int = 5
    topk_margin: float = 0.06


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training stage.

    Args:
        name: name of the main system (the model being trained).
        model: frontend + backend of the main system.
        compare: with a frozen frontend, more backends trained in the same run on the same
            batches (name -> BackendConfig fields overriding ``model.backend``); each gets
            its own classifier, optimizer, checkpoints and final model.
        init_from: output folder of a previous stage: its final model initialises this one
            (frontend and backend), and its classifier rows of the original-speed classes.
        seed, mixed_precision ("no", "bf16", "fp16").
        keep_best: keep the checkpoints of the N best epochs by validation EER (the last
            N epochs without validation); ``average_best`` averages them into the final
            model, otherwise it is the last epoch's weights.
        keep_last: also keep the N most recent checkpoints (epoch or mid-epoch).
        checkpoint_every_steps: also checkpoint every N optimizer steps inside an epoch
            (0: only at epoch ends); an interrupted run resumes from the exact batch.
        max_skipped_steps: steps with a non-finite loss or gradient are skipped; this
            many in a row stop training (the checkpoints written so far are kept).
    """

    name: str = "lap_astp"
    stage: int = 1
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    compare: dict[str, Any] = dataclasses.field(default_factory=dict)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    init_from: str | None = None
    seed: int = 0
    mixed_precision: str = "no"
    keep_best: int = 3
    validate_every: int = 1
    average_best: bool = True
    keep_last: int = 1
    checkpoint_every_steps: int = 0
    max_skipped_steps: int = 10


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """Read a YAML recipe, apply ``key.sub=value`` overrides, resolve relative paths."""
    path = Path(path)
    data = apply_overrides(load_yaml(path), overrides)
    config = from_dict(TrainConfig, data)
    return resolve_paths(config, path.parent)


def resolve_paths(config: TrainConfig, base: Path) -> TrainConfig:
    """Make the recipe's relative data paths absolute, relative to ``base``."""

    def resolve(value: str | None) -> str | None:
        if not value:
            return value
        return str((base / value).resolve()) if not Path(value).is_absolute() else value

    data = config.data
    data = dataclasses.replace(
        data,
        train_manifest=resolve(data.train_manifest) or "",
        val_manifest=resolve(data.val_manifest),
        val_trials=resolve(data.val_trials),
        musan=resolve(data.musan),
        rirs=resolve(data.rirs),
    )
    return dataclasses.replace(config, data=data, init_from=resolve(config.init_from))
