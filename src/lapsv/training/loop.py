"""Training stages on Hugging Face Accelerate (one process by default, DDP under
``accelerate launch``): AAM-softmax, cosine learning rate, margin ramp, per-epoch
validation on held-out training speakers, checkpoints, best-N averaging.

Reliability: the data is validated before anything is built; checkpoints (at epoch ends
and every ``checkpoint_every_steps``) hold everything a step depends on (weights,
optimizer, AMP scaler, every random generator, the position in the epoch), are written
atomically, and a rerun of the same command resumes from the last one exactly; steps with
a non-finite loss or gradient are skipped (``max_skipped_steps`` in a row stop training).

With a frozen frontend, several backends (``TrainConfig.compare``) train in the same run:
the frontend runs once per batch and every backend learns from the same hidden states.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from lapsv.backend import SpeakerBackend
from lapsv.config import dump_yaml, from_dict, load_yaml, to_dict
from lapsv.data.dataset import (
    CropConfig,
    CropDataset,
    EpochShuffleSampler,
    SpeakerBalancedSampler,
    collate_crops,
)
from lapsv.data.manifest import Manifest
from lapsv.data.validate import (
    SHOWN_IN_ERRORS,
    DataError,
    ValidationReport,
    validate_manifest,
)
from lapsv.errors import ConfigError, LapsvError
from lapsv.files import (
    atomic_directory,
    atomic_path,
    atomic_write_text,
    check_writable_folder,
    remove_directory,
)
from lapsv.frontends import Frontend, build_frontend
from lapsv.losses import AAMSoftmax, ClassifierOutput, margin_at_step
from lapsv.model import SpeakerModel
from lapsv.training.checkpoint import (
    CLASSIFIER_FILE,
    SPEAKERS_FILE,
    average_states,
    init_classifier_rows,
    load_trained_state,
    trained_state,
)
from lapsv.training.config import TrainConfig
from lapsv.training.faults import failpoint
from lapsv.training.feature_cache import FrozenFeatureCache
from lapsv.training.optim import build_optimizer
from lapsv.training.plots import plot_training_curves
from lapsv.training.schedule import lr_at_step
from lapsv.training.state import load_tree, rng_state, save_tree, set_rng_state
from lapsv.training.validation import Validator

SPEED_FACTORS = (1.0, 0.9, 1.1)
CHECKPOINT_FORMAT = 2
METRIC_FIELDS = (
    "epoch",
    "system",
    "step",
    "loss",
    "accuracy",
    "margin",
    "lr",
    "seconds",
    "utterances_per_second",
    "global_batch",
    "skipped_steps",
    "val_eer",
    "val_min_dcf_0.01",
)


class TrainingError(LapsvError, RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps in a row); checkpoints are kept."""


class TrainStep(nn.Module):
    """What one system trains: (frontend) -> backend -> AAM classifier.

    With ``frontend=None`` the inputs are hidden states computed outside (frozen frontend);
    otherwise waveforms, and the frontend is trained too. One module per system, so that
    DDP sees (and synchronises) exactly the parameters that get gradients.
    """

    def __init__(
        self, backend: SpeakerBackend, classifier: AAMSoftmax, frontend: Frontend | None = None
    ) -> None:
        super().__init__()
        self.frontend = frontend
        self.backend = backend
        self.classifier = classifier

    def forward(
        self, inputs: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor
    ) -> ClassifierOutput:
        if self.frontend is not None:
            inputs, lengths = self.frontend(inputs, lengths)
        return self.classifier(self.backend(inputs, lengths), labels)


@dataclasses.dataclass
class System:
    """One backend being trained, with its optimizer and validation history."""

    name: str
    step: nn.Module  # TrainStep, possibly wrapped by Accelerate
    optimizer: torch.optim.Optimizer
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    skipped_total: int = 0  # optimizer steps skipped for non-finite values, whole run
    skipped_in_row: int = 0
    window_bad: bool = False  # a non-finite loss in the current accumulation window
    saved_buffers: list[torch.Tensor] | None = None  # buffers before the window

    def trainable(self) -> list[torch.Tensor]:
        return [p for p in self.step.parameters() if p.requires_grad]

    def buffers(self) -> list[torch.Tensor]:
        """Normalisation statistics and counters: a forward pass changes them."""
        return list(self.step.buffers())


@dataclasses.dataclass
class EpochProgress:
    """How far an epoch got: what a mid-epoch checkpoint must carry to resume exactly."""

    epoch: int
    batches: int = 0  # micro-batches done (per process)
    seen: int = 0  # utterances seen (per process)
    seconds: float = 0.0
    totals: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def start(cls, epoch: int, names: list[str]) -> EpochProgress:
        totals = {n: {"loss": 0.0, "correct": 0.0, "count": 0.0} for n in names}
        return cls(epoch, totals=totals, skipped=dict.fromkeys(names, 0))


def train(
    config: TrainConfig,
    out_dir: str | Path,
    *,
    progress: bool = True,
    on_step: Callable[[Trainer], None] | None = None,
    trust_pickle: bool = False,
) -> dict[str, Path]:
    """Run one training stage; re-running the same command resumes from the last checkpoint.

    Args:
        on_step: called after every optimizer step with the trainer (``trainer.step`` is
            the number of steps done), in every process.
        trust_pickle: allow a Hugging Face frontend source whose only weights are a pickle.

    Returns:
        system name -> final model directory (``config.yaml`` + ``model.safetensors``).
    """
    trainer = Trainer(
        config, Path(out_dir), progress=progress, on_step=on_step, trust_pickle=trust_pickle
    )
    return trainer.run()


class Trainer:
    """See :func:`train`."""

    def __init__(
        self,
        config: TrainConfig,
        out_dir: Path,
        *,
        progress: bool = True,
        on_step: Callable[[Trainer], None] | None = None,
        trust_pickle: bool = False,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        self.trust_pickle = trust_pickle
        self.out_dir = out_dir
        self.progress = progress
        self.on_step = on_step
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.optim.grad_accum,
        )
        if self.accelerator.is_main_process:  # before any work: fail now, not at the end
            check_writable_folder(out_dir, what="training output folder")
        set_seed(config.seed)
        self.manifest = self._validated(config.data.train_manifest, training=True)
        self.val_manifest = None
        if config.data.val_manifest and config.data.val_trials:
            self.val_manifest = self._validated(config.data.val_manifest, training=False)
        self._check_data(self.manifest)
        self.global_batch = (
            self._micro_batch() * self.accelerator.num_processes * config.optim.grad_accum
        )
        if self.global_batch != config.optim.batch_size and self.accelerator.is_main_process:
            warnings.warn(
                f"optim.batch_size {config.optim.batch_size} is not a multiple of "
                f"{self.accelerator.num_processes} process(es) x {config.optim.grad_accum} "
                f"accumulation step(s): the global batch is {self.global_batch}",
                stacklevel=2,
            )
        self.loader, self.dataset, self.sampler = self._build_data()
        self.frontend = self._build_frontend()
        self.systems = self._build_systems()
        self.steps_per_epoch = max(len(self.loader) // config.optim.grad_accum, 1)
        self.total_steps = self.steps_per_epoch * config.optim.epochs
        self.validator = Validator.from_config(config.data, self.manifest, self.val_manifest)
        self.feature_cache = None
        if config.model.frontend.freeze and config.data.cached_views > 0:
            self.feature_cache = FrozenFeatureCache(
                self.frontend,
                self.dataset,
                views=config.data.cached_views,
                batch_size=self._micro_batch(),
                device=self.accelerator.device,
                seed=config.seed,
                num_workers=config.data.num_workers,
                progress=progress and self.accelerator.is_main_process,
            )
        self.step = 0
        self.start_epoch = 0
        self.resumed: EpochProgress | None = None  # a mid-epoch checkpoint's position

    # ------------------------------------------------------------------ set-up
    def _validated(self, path: str, *, training: bool) -> Manifest:
        """The manifest at ``path`` after checking its files (headers only, in parallel).

        Problems stop training with one report of all of them, unless ``data.drop_invalid``
        (then the bad items are dropped with a warning); the full list goes to a file.
        """
        data = self.config.data
        report = validate_manifest(
            path,
            crop_seconds=data.min_seconds,
            min_utterances=data.min_utterances if training else 1,
            sample_rate=data.sample_rate,
        )
        if report.ok:
            if training:
                self._warn_short(path, report)
            return report.manifest
        listing = self.out_dir / f"data_problems_{'train' if training else 'val'}.txt"
        if self.accelerator.is_main_process:
            atomic_write_text(listing, report.format() + "\n")
        if not data.drop_invalid:
            raise DataError(
                f"{report.format(limit=SHOWN_IN_ERRORS)}\nevery problem: {listing}\nfix the "
                "files or the manifest, or train without these items: data.drop_invalid=true "
                "(lapsv train --drop-invalid)"
            )
        if self.accelerator.is_main_process:
            warnings.warn(
                f"{report.summary()}; dropped (data.drop_invalid), listed in {listing}",
                stacklevel=3,
            )
        if training:
            self._warn_short(path, report)
        return report.valid_manifest()

    def _warn_short(self, path: str, report: ValidationReport) -> None:
        """Usable utterances shorter than the crop (repeated to fill it): a warning."""
        crop = self.config.data.crop_seconds
        short = sum(
            d is not None and d < crop
            for i, d in enumerate(report.durations)
            if i not in report.bad
        )
        if short and self.accelerator.is_main_process:
            warnings.warn(
                f"{path}: {short} of {len(report.manifest) - len(report.bad)} utterances are "
                f"shorter than the {crop:g} s crop: each is repeated to fill it (set "
                "data.min_seconds to report them as problems instead)",
                stacklevel=4,
            )

    def _check_data(self, manifest: Manifest) -> None:
        if len(manifest.speakers) < 2:
            raise ConfigError(
                f"{self.config.data.train_manifest}: training needs at least 2 speakers"
            )
        per_process = self._micro_batch()
        if len(manifest) < per_process:
            raise ConfigError(
                f"{self.config.data.train_manifest}: {len(manifest)} utterances, fewer than "
                f"one batch of {per_process}; lower optim.batch_size"
            )

    def _micro_batch(self) -> int:
        processes = self.accelerator.num_processes
        return max(self.config.optim.batch_size // (processes * self.config.optim.grad_accum), 1)

    def _build_data(self) -> tuple[DataLoader, CropDataset, EpochShuffleSampler]:
        data = self.config.data
        factors = SPEED_FACTORS if data.speed_perturb else (1.0,)
        augment = _build_augmenter(data)
        dataset = CropDataset(
            self.manifest,
            CropConfig(seconds=data.crop_seconds, speed_factors=factors),
            augment=augment,
            seed=self.config.seed,
        )
        speakers = [u.speaker for u in self.manifest]
        sampler: EpochShuffleSampler
        if data.sampler == "balanced":
            sampler = SpeakerBalancedSampler(speakers, seed=self.config.seed)
        elif data.sampler == "shuffle":
            sampler = EpochShuffleSampler(len(speakers), seed=self.config.seed)
        else:
            raise ConfigError(f"data.sampler must be 'shuffle' or 'balanced', not {data.sampler!r}")
        loader = DataLoader(
            dataset,
            batch_size=self._micro_batch(),
            sampler=sampler,
            drop_last=True,
            num_workers=data.num_workers,
            collate_fn=collate_crops,
            persistent_workers=data.num_workers > 0,
            # its own generator: starting an epoch never draws from the global one, so a
            # resumed run's random stream (dropout) is the uninterrupted run's
            generator=torch.Generator().manual_seed(self.config.seed),
        )
        return self.accelerator.prepare(loader), dataset, sampler

    def _build_frontend(self) -> Frontend:
        settings = self.config.model.frontend
        if self.config.init_from:
            frontend = self._init_model().frontend
        else:
            frontend = build_frontend(settings, pretrained=True, trust_pickle=self.trust_pickle)
        frontend.set_frozen(settings.freeze)
        frontend.set_gradient_checkpointing(settings.gradient_checkpointing)
        return frontend.to(self.accelerator.device)

    def _init_model(self) -> SpeakerModel:
        if not hasattr(self, "_initial_model"):
            source = Path(self.config.init_from) / self.config.name / "model"
            self._initial_model = SpeakerModel.load(source)
        return self._initial_model

    def _build_systems(self) -> list[System]:
        config = self.config
        frozen = config.model.frontend.freeze
        if config.compare and not frozen:
            raise ConfigError("'compare' needs a frozen frontend (model.frontend.freeze: true)")
        backends = {config.name: self._main_backend()}
        for name, overrides in config.compare.items():
            backend_config = dataclasses.replace(
                config.model.backend,
                in_dim=self.frontend.hidden_size,
                n_layers=self.frontend.n_layers,
                **dict(overrides or {}),
            )
            backends[name] = SpeakerBackend(backend_config)
        systems = []
        for name, backend in backends.items():
            classifier = self._classifier(backend.embed_dim, name)
            trainable_frontend = None if frozen or name != config.name else self.frontend
            step = TrainStep(backend, classifier, trainable_frontend)
            optimizer = build_optimizer(
                step,
                lr=config.optim.lr,
                weight_decay=config.optim.weight_decay,
                scope=config.optim.weight_decay_scope,
            )
            step, optimizer = self.accelerator.prepare(step, optimizer)
            systems.append(System(name, step, optimizer))
        return systems

    def _main_backend(self) -> SpeakerBackend:
        if self.config.init_from:
            return self._init_model().backend
        backend_config = dataclasses.replace(
            self.config.model.backend,
            in_dim=self.frontend.hidden_size,
            n_layers=self.frontend.n_layers,
        )
        return SpeakerBackend(backend_config)

    def _classifier(self, embed_dim: int, name: str) -> AAMSoftmax:
        loss = self.config.loss
        classifier = AAMSoftmax(
            embed_dim,
            self.dataset.n_classes,
            n_subcenters=loss.subcenters,
            scale=loss.scale,
            margin=loss.margin,
            topk=loss.topk,
            topk_margin=loss.topk_margin,
        )
        if self.config.init_from and name == self.config.name:
            init_classifier_rows(classifier, Path(self.config.init_from), self.dataset.speakers)
        return classifier

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Path]:
        self._write_config()
        self._resume()
        for epoch in range(self.start_epoch, self.config.optim.epochs):
            stats = self._train_epoch(epoch)
            if (
                epoch + 1
            ) % self.config.validate_every == 0 or epoch + 1 == self.config.optim.epochs:
                self._validate(epoch, stats)
            self._save_checkpoint(epoch, stats)
        return self._finish()

    def _set_schedules(self) -> tuple[float, float]:
        optim, loss = self.config.optim, self.config.loss
        lr = lr_at_step(
            self.step,
            total_steps=self.total_steps,
            lr=optim.lr,
            final_lr=optim.final_lr,
            warmup_fraction=optim.warmup_fraction,
        )
        margin = margin_at_step(
            self.step,
            final_margin=loss.margin,
            ramp_steps=int(loss.margin_ramp_epochs * self.steps_per_epoch),
            initial_margin=loss.initial_margin,
            shape=loss.margin_ramp_shape,
        )
        for system in self.systems:
            for group in system.optimizer.param_groups:
                group["lr"] = lr
            self.accelerator.unwrap_model(system.step).classifier.set_margin(margin)
        return lr, margin

    def _batches_per_epoch(self) -> int:
        return len(self.feature_cache) if self.feature_cache is not None else len(self.loader)

    def _train_epoch(self, epoch: int) -> dict[str, dict[str, float]]:
        accelerator = self.accelerator
        names = [s.name for s in self.systems]
        progress = EpochProgress.start(epoch, names)
        if self.resumed is not None and self.resumed.epoch == epoch:
            progress, self.resumed = self.resumed, None
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        if hasattr(self.loader, "set_epoch"):  # Accelerate's loader re-sets the sampler's
            self.loader.set_epoch(epoch)
        for system in self.systems:
            system.step.train()
        totals = progress.totals
        started = time.perf_counter() - progress.seconds
        lr, margin = self._set_schedules()
        bar = tqdm(
            self._batches(epoch, skip=progress.batches),
            total=self._batches_per_epoch(),
            initial=progress.batches,
            desc=f"epoch {epoch + 1}/{self.config.optim.epochs}",
            unit="batch",
            disable=not (self.progress and accelerator.is_main_process),
            leave=False,
        )
        for inputs, input_lengths, labels in bar:
            with accelerator.accumulate(*[s.step for s in self.systems]):
                for system in self.systems:
                    if system.saved_buffers is None:  # start of an accumulation window
                        system.saved_buffers = [b.clone() for b in system.buffers()]
                    with accelerator.autocast():
                        output = system.step(inputs, input_lengths, labels)
                    # backward even on a non-finite loss: under DDP every process must join
                    # the gradient all-reduce; the step is then skipped in all of them
                    accelerator.backward(output.loss)
                    loss = float(output.loss.detach())
                    if np.isfinite(loss):
                        total = totals[system.name]
                        total["loss"] += loss * len(labels)
                        total["correct"] += float((output.logits.argmax(dim=-1) == labels).sum())
                        total["count"] += len(labels)
                    else:
                        system.window_bad = True
                    if accelerator.sync_gradients:
                        self._apply_gradients(system, progress)
            progress.seen += len(labels)
            progress.batches += 1
            if accelerator.sync_gradients:
                self.step += 1
                lr, margin = self._set_schedules()
                self._after_step(epoch, progress, started)
            main = totals[self.config.name]
            rate = progress.seen / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(
                loss=f"{main['loss'] / max(main['count'], 1):.3f}",
                acc=f"{main['correct'] / max(main['count'], 1):.1%}",
                margin=f"{margin:.3f}",
                lr=f"{lr:.1e}",
                utt_s=f"{rate * accelerator.num_processes:.0f}",
            )
        elapsed = time.perf_counter() - started
        return {
            name: {
                "step": self.step,
                "loss": t["loss"] / max(t["count"], 1),
                "accuracy": t["correct"] / max(t["count"], 1),
                "margin": margin,
                "lr": lr,
                "seconds": elapsed,
                "utterances_per_second": progress.seen
                * accelerator.num_processes
                / max(elapsed, 1e-9),
                "global_batch": self.global_batch,
                "skipped_steps": progress.skipped[name],
            }
            for name, t in totals.items()
        }

    def _apply_gradients(self, system: System, progress: EpochProgress) -> None:
        """Optimizer step at the end of an accumulation window, unless something in it was
        not finite (loss, gradients, normalisation statistics): then the gradients are
        dropped, the buffers restored, and the skip counted and reported."""
        accelerator = self.accelerator
        parameters = system.trainable()
        clip = self.config.optim.grad_clip
        bad = system.window_bad
        if clip > 0:
            norm = accelerator.clip_grad_norm_(parameters, clip)
        else:
            norm = _gradient_norm(parameters)
        # one device sync for all checks; with an fp16 loss scaler, infinite gradients are
        # routine (the scaler skips them), so only the statistics are checked then
        checks = [torch.isfinite(b).all() for b in system.buffers() if b.is_floating_point()]
        if accelerator.scaler is None and norm is not None:
            checks.append(torch.isfinite(norm).all())
        if checks and not bad:
            bad = not bool(torch.stack([c.to(checks[0].device) for c in checks]).all())
        bad = self._in_any_process(bad)
        if bad:
            system.optimizer.zero_grad(set_to_none=True)
            with torch.no_grad():
                for buffer, saved in zip(
                    system.buffers(), system.saved_buffers or [], strict=False
                ):
                    buffer.copy_(saved)
            system.skipped_total += 1
            system.skipped_in_row += 1
            progress.skipped[system.name] += 1
            self._report_skip(system)
        else:
            system.optimizer.step()
            system.optimizer.zero_grad(set_to_none=True)
            system.skipped_in_row = 0
        system.window_bad = False
        system.saved_buffers = None

    def _in_any_process(self, flag: bool) -> bool:
        """``flag`` of any process: every process takes the same decision."""
        if self.accelerator.num_processes == 1:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=self.accelerator.device)
        return bool(self.accelerator.reduce(value, reduction="sum").item() > 0)

    def _report_skip(self, system: System) -> None:
        step, limit = self.step + 1, self.config.max_skipped_steps
        if system.skipped_in_row >= limit:
            latest = self._checkpoints()
            kept = f"the last checkpoint, {latest[-1][1]}, is kept" if latest else "no checkpoint"
            raise TrainingError(
                f"{system.name}: {system.skipped_in_row} optimizer steps in a row had a "
                f"non-finite loss or gradient (up to step {step}); training stopped and {kept}. "
                "Lower optim.lr, check the data (lapsv data validate), or raise "
                "max_skipped_steps; rerunning resumes from the last checkpoint"
            )
        if self.accelerator.is_main_process:
            warnings.warn(
                f"{system.name}: step {step} skipped, non-finite loss or gradient "
                f"({system.skipped_in_row} in a row, {system.skipped_total} in this run; "
                f"training stops after {limit} in a row)",
                RuntimeWarning,
                stacklevel=2,
            )

    def _after_step(self, epoch: int, progress: EpochProgress, started: float) -> None:
        every = self.config.checkpoint_every_steps
        if every > 0 and self.step % every == 0 and progress.batches < self._batches_per_epoch():
            progress.seconds = time.perf_counter() - started
            self._save_step_checkpoint(epoch, progress)
        if self.on_step is not None:
            self.on_step(self)
        failpoint("after-step", self.step)

    def _batches(
        self, epoch: int, *, skip: int = 0
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(inputs, lengths, labels): hidden states when the frontend is frozen (computed
        here once for every backend, or read from the feature cache), else waveforms.

        The first ``skip`` batches (done before a mid-epoch checkpoint) are not loaded.
        """
        if self.feature_cache is not None:
            yield from self.feature_cache.batches(epoch, skip=skip)
            return
        loader = self.loader
        if skip > 0:
            loader = self.accelerator.skip_first_batches(self.loader, skip)
        for waves, labels in loader:
            lengths = torch.full((waves.shape[0],), waves.shape[1], device=waves.device)
            if not self.config.model.frontend.freeze:
                yield waves, lengths, labels
                continue
            with torch.no_grad(), self.accelerator.autocast():
                hidden, frames = self.frontend(waves, lengths)
            yield hidden.float(), frames, labels

    def _validate(self, epoch: int, stats: dict[str, dict[str, float]]) -> None:
        if self.validator is None or not self.accelerator.is_main_process:
            return
        backends = {s.name: self.accelerator.unwrap_model(s.step).backend for s in self.systems}
        results = self.validator.evaluate(self.frontend, backends, self.accelerator.device)
        for name, metrics in results.items():
            stats[name].update(metrics)

    # ------------------------------------------------------------------ files
    def _write_config(self) -> None:
        if not self.accelerator.is_main_process:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "config.yaml"
        text = dump_yaml(to_dict(self.config))
        changed = path.exists() and path.read_text() != text
        if (
            changed
            and self._checkpoints()
            and (_training_settings(path) != _training_settings(self.config))
        ):
            raise ConfigError(
                f"{self.out_dir} holds checkpoints of a different recipe; use another output "
                "folder or delete it"
            )
        atomic_write_text(path, text)
        atomic_write_text(self.out_dir / SPEAKERS_FILE, "\n".join(self.dataset.speakers) + "\n")

    def _checkpoints(self) -> list[tuple[tuple[int, int], Path, dict[str, Any]]]:
        """Complete checkpoints as ((epochs done, batches into the next), folder, state),
        oldest first. Hidden folders (a save or a deletion cut short) are not checkpoints."""
        found = []
        for path in (self.out_dir / "checkpoints").glob("*"):
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                state = json.loads((path / "trainer.json").read_text())
                position = (int(state["epoch"]), int(state.get("batches", 0)))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found.append((position, path, state))
        return sorted(found, key=lambda item: item[0])

    def _save_checkpoint(self, epoch: int, stats: dict[str, dict[str, float]]) -> None:
        """End of an epoch: history, TensorBoard, checkpoint, metrics.csv, pruning."""
        self.accelerator.wait_for_everyone()
        for system in self.systems:
            system.history.append({"epoch": epoch + 1, **stats[system.name]})
        if self.accelerator.is_main_process:
            self._log_tensorboard(epoch, stats)
            self._write_checkpoint(f"epoch-{epoch + 1:03d}", epochs_done=epoch + 1)
            self._write_metrics()
            self._prune_checkpoints()
        self.accelerator.wait_for_everyone()

    def _save_step_checkpoint(self, epoch: int, progress: EpochProgress) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self._write_checkpoint(f"step-{self.step:08d}", epochs_done=epoch, progress=progress)
            self._prune_checkpoints()
        self.accelerator.wait_for_everyone()

    def _write_checkpoint(
        self, name: str, *, epochs_done: int, progress: EpochProgress | None = None
    ) -> None:
        """Everything the next step depends on, in a folder that appears all at once."""
        scaler = self.accelerator.scaler
        with atomic_directory(self.out_dir / "checkpoints" / name) as tmp:
            for system in self.systems:
                step = self.accelerator.unwrap_model(system.step)
                state = trained_state(step, self.frontend)
                safetensors.torch.save_file(state, str(tmp / f"{system.name}.safetensors"))
                failpoint("in-checkpoint", self.step)
                save_tree(system.optimizer.state_dict(), tmp / f"{system.name}.optim.safetensors")
            generators = {"rng": rng_state(), "scaler": scaler.state_dict() if scaler else None}
            save_tree(generators, tmp / "state.safetensors")
            trainer_state = {
                "format": CHECKPOINT_FORMAT,
                "epoch": epochs_done,
                "batches": progress.batches if progress else 0,
                "step": self.step,
                "accelerator_step": self.accelerator.step,
                "global_batch": self.global_batch,
                "history": {s.name: s.history for s in self.systems},
                "skipped": {s.name: [s.skipped_total, s.skipped_in_row] for s in self.systems},
                "progress": dataclasses.asdict(progress) if progress else None,
            }
            (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1))

    def _resume(self) -> None:
        """Continue from the most advanced checkpoint that loads (after a crash, a kill, a
        full disk): weights, optimizer, scaler, generators and the position in the epoch."""
        if self.accelerator.is_main_process:
            for leftover in (self.out_dir / "checkpoints").glob(".*"):
                shutil.rmtree(leftover, ignore_errors=True)  # saves or deletions cut short
        self.accelerator.wait_for_everyone()
        for _, path, state in reversed(self._checkpoints()):
            try:
                loaded = self._read_checkpoint(path, state)
            except Exception as error:  # unreadable: fall back to the one before
                warnings.warn(f"{path}: cannot resume from it ({error})", stacklevel=2)
                continue
            self._apply_checkpoint(state, *loaded)
            return

    def _read_checkpoint(self, path: Path, state: dict[str, Any]) -> tuple[Any, Any, Any]:
        weights, optimizers = {}, {}
        for system in self.systems:
            weights[system.name] = safetensors.torch.load_file(
                str(path / f"{system.name}.safetensors")
            )
            if state.get("format", 1) >= CHECKPOINT_FORMAT:
                optimizers[system.name] = load_tree(path / f"{system.name}.optim.safetensors")
            else:  # format 1 (lapsv <= 0.1): tensors-only pickle, read without running code
                optimizers[system.name] = torch.load(
                    path / f"{system.name}.optim.pt", map_location="cpu", weights_only=True
                )
        generators = None
        if (path / "state.safetensors").is_file():
            generators = load_tree(path / "state.safetensors")
        return weights, optimizers, generators

    def _apply_checkpoint(
        self,
        state: dict[str, Any],
        weights: dict[str, dict[str, torch.Tensor]],
        optimizers: dict[str, Any],
        generators: dict[str, Any] | None,
    ) -> None:
        for system in self.systems:
            step = self.accelerator.unwrap_model(system.step)
            load_trained_state(step, self.frontend, weights[system.name])
            system.optimizer.load_state_dict(optimizers[system.name])
            system.history = state["history"][system.name]
            system.skipped_total, system.skipped_in_row = state.get("skipped", {}).get(
                system.name, (0, 0)
            )
        self.start_epoch, self.step = state["epoch"], state["step"]
        self.accelerator.step = state.get("accelerator_step", 0)
        if state.get("progress"):
            self.resumed = EpochProgress(**state["progress"])
        if generators is not None:
            set_rng_state(generators["rng"])
            if generators["scaler"] is not None and self.accelerator.scaler is not None:
                self.accelerator.scaler.load_state_dict(generators["scaler"])

    def _write_metrics(self) -> None:
        """metrics.csv rewritten whole from the histories the checkpoint holds, atomically:
        after any interruption it lists exactly the epochs the run will not redo."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, extrasaction="ignore")
        writer.writeheader()
        rows = [(h["epoch"], n, s.name, h) for n, s in enumerate(self.systems) for h in s.history]
        for epoch, _, name, values in sorted(rows, key=lambda row: row[:2]):
            writer.writerow({**values, "epoch": epoch, "system": name})
        atomic_write_text(self.out_dir / "metrics.csv", buffer.getvalue())

    def _log_tensorboard(self, epoch: int, stats: dict[str, dict[str, float]]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional at run time
            return
        with SummaryWriter(str(self.out_dir / "tensorboard")) as writer:
            for name, values in stats.items():
                for key, value in values.items():
                    writer.add_scalar(f"{name}/{key}", value, epoch + 1)

    def _best_epochs(self, system: System) -> list[int]:
        history = system.history
        keep = max(self.config.keep_best, 1)
        if history and all("val_eer" in h for h in history):
            ranked = sorted(history, key=lambda h: (h["val_eer"], -h["epoch"]))
        else:
            ranked = sorted(history, key=lambda h: -h["epoch"])
        return sorted(h["epoch"] for h in ranked[:keep])

    def _prune_checkpoints(self) -> None:
        """Keep the best ``keep_best`` epochs of every system and the ``keep_last`` most
        recent checkpoints; a deleted checkpoint vanishes at once (never half-deleted)."""
        keep = {f"epoch-{e:03d}" for s in self.systems for e in self._best_epochs(s)}
        checkpoints = self._checkpoints()
        keep.update(path.name for _, path, _ in checkpoints[-max(self.config.keep_last, 1) :])
        for _, path, _ in checkpoints:
            if path.name not in keep:
                remove_directory(path)

    def _finish(self) -> dict[str, Path]:
        self.accelerator.wait_for_everyone()
        outputs = {}
        for system in self.systems:
            target = self.out_dir / system.name
            outputs[system.name] = target / "model"
            if not self.accelerator.is_main_process:
                continue
            if self.config.average_best:
                epochs = self._best_epochs(system)
            else:
                epochs = [system.history[-1]["epoch"]]
            paths = [
                self.out_dir / "checkpoints" / f"epoch-{e:03d}" / f"{system.name}.safetensors"
                for e in epochs
            ]
            averaged = average_states([safetensors.torch.load_file(str(p)) for p in paths])
            step = self.accelerator.unwrap_model(system.step)
            load_trained_state(step, self.frontend, averaged)
            model = SpeakerModel(self.frontend, step.backend)
            model.frontend.set_frozen(True)
            model.save(target / "model")
            classifier = {k: v.contiguous() for k, v in step.classifier.state_dict().items()}
            with atomic_path(target / CLASSIFIER_FILE) as tmp:
                safetensors.torch.save_file(classifier, str(tmp))
            summary = {
                "averaged_epochs": epochs,
                "global_batch": self.global_batch,
                "per_process_batch": self._micro_batch(),
                "processes": self.accelerator.num_processes,
                "grad_accum": self.config.optim.grad_accum,
                "skipped_steps": system.skipped_total,
                "history": system.history,
            }
            atomic_write_text(target / "training.json", json.dumps(summary, indent=1))
        if self.accelerator.is_main_process:
            plot_training_curves(self.out_dir / "metrics.csv", self.out_dir / "curves.png")
        return outputs


def _build_augmenter(data):
    if not (data.musan or data.rirs) or data.augment_probability <= 0:
        return None
    from lapsv.data.augment import Augmenter, NoiseBank, RirBank

    noise = NoiseBank(data.musan) if data.musan else None
    rirs = RirBank(data.rirs) if data.rirs else None
    return Augmenter(noise, rirs, probability=data.augment_probability)


# Settings a resumed run may change: how it is run, not what it computes.
OPERATIONAL = ("checkpoint_every_steps", "keep_last", "max_skipped_steps", "data.num_workers")


def _training_settings(source: TrainConfig | Path) -> str | None:
    """The recipe as YAML without OPERATIONAL keys, settings added since it was saved at
    their defaults (None if the saved recipe no longer reads)."""
    try:  # both through from_dict, which also makes an int given for a float a float
        data = load_yaml(source) if isinstance(source, Path) else to_dict(source)
        settings = to_dict(from_dict(TrainConfig, data))
    except ConfigError:
        return None
    for key in OPERATIONAL:
        *parents, last = key.split(".")
        node = settings
        for parent in parents:
            node = node[parent]
        node.pop(last, None)
    return dump_yaml(settings)


def _gradient_norm(parameters: list[torch.Tensor]) -> torch.Tensor | None:
    """L2 norm of all gradients (None without gradients); non-finite if any entry is."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
