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

This module holds the :class:`Trainer` (build + step loop); the parts it drives are in
``data_setup`` (data checks, loader), ``systems`` (what is trained), ``nonfinite`` (skipped
steps), ``checkpoints``, ``metrics_log`` and ``stages`` (the final model folders).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lapsv.data.manifest import Manifest
from lapsv.data.validate import validate_manifest
from lapsv.errors import LapsvError
from lapsv.files import atomic_write_text, check_writable_folder
from lapsv.frontends import Frontend, build_frontend
from lapsv.model import SpeakerModel
from lapsv.process_group import leave_process_group_at_exit
from lapsv.training.checkpoints import CheckpointStore
from lapsv.training.config import TrainConfig
from lapsv.training.data_setup import (
    accept_report,
    build_loader,
    check_data,
    feature_cache,
    micro_batch,
    warn_global_batch,
)
from lapsv.training.faults import failpoint
from lapsv.training.metrics_log import log_tensorboard, write_metrics
from lapsv.training.nonfinite import (
    drop_window,
    skip_message,
    stop_message,
    take_step,
    window_is_bad,
)
from lapsv.training.plots import plot_training_curves
from lapsv.training.progress import EpochProgress
from lapsv.training.schedule import schedules_at
from lapsv.training.stages import SPEAKERS_FILE, initial_model, save_final_model
from lapsv.training.systems import System, build_systems
from lapsv.training.validation import Validator


class TrainingError(LapsvError, RuntimeError):
    """Training cannot go on (e.g. too many non-finite steps in a row); checkpoints are kept."""


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
        self.accelerator = accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.optim.grad_accum,
        )
        if accelerator.num_processes > 1:
            leave_process_group_at_exit()
        if accelerator.is_main_process:  # before any work: fail now, not at the end
            check_writable_folder(out_dir, what="training output folder")
        set_seed(config.seed)
        self.manifest = self._validated(config.data.train_manifest, training=True)
        self.val_manifest = None
        if config.data.val_manifest and config.data.val_trials:
            self.val_manifest = self._validated(config.data.val_manifest, training=False)
        self.micro_batch = micro_batch(config, accelerator.num_processes)
        check_data(config, self.manifest, self.micro_batch)
        self.global_batch = self.micro_batch * accelerator.num_processes * config.optim.grad_accum
        if accelerator.is_main_process:
            warn_global_batch(config, accelerator.num_processes, self.global_batch)
        loader, self.dataset, self.sampler = build_loader(config, self.manifest, self.micro_batch)
        self.loader = accelerator.prepare(loader)
        initial = initial_model(config.name, config.init_from)
        self.frontend = self._build_frontend(initial)
        self.systems = build_systems(config, self.frontend, accelerator, self.dataset, initial)
        self.steps_per_epoch = max(len(self.loader) // config.optim.grad_accum, 1)
        self.total_steps = self.steps_per_epoch * config.optim.epochs
        self.validator = Validator.from_config(config.data, self.manifest, self.val_manifest)
        show = progress and accelerator.is_main_process
        self.feature_cache = feature_cache(
            config, self.frontend, self.dataset, self.micro_batch, accelerator.device, show
        )
        self.checkpoints = CheckpointStore(
            out_dir, config, accelerator, self.systems, self.frontend, self.global_batch
        )
        self.step = 0
        self.start_epoch = 0
        self.resumed: EpochProgress | None = None  # a mid-epoch checkpoint's position

    # ------------------------------------------------------------------ set-up
    def _validated(self, path: str, *, training: bool) -> Manifest:
        """The manifest at ``path`` after checking its files (headers only, in parallel)."""
        data = self.config.data
        report = validate_manifest(
            path,
            crop_seconds=data.min_seconds,
            min_utterances=data.min_utterances if training else 1,
            sample_rate=data.sample_rate,
        )
        main = self.accelerator.is_main_process
        return accept_report(
            report, path, data=data, training=training, out_dir=self.out_dir, main_process=main
        )

    def _build_frontend(self, initial: SpeakerModel | None) -> Frontend:
        """The previous stage's frontend (``init_from``), else a pretrained one."""
        settings = self.config.model.frontend
        if initial is not None:
            frontend = initial.frontend
        else:
            frontend = build_frontend(settings, pretrained=True, trust_pickle=self.trust_pickle)
        frontend.set_frozen(settings.freeze)
        frontend.set_gradient_checkpointing(settings.gradient_checkpointing)
        return frontend.to(self.accelerator.device)

    # ------------------------------------------------------------------ loop
    def run(self) -> dict[str, Path]:
        self._write_config()
        point = self.checkpoints.resume()  # the last checkpoint that loads, if any
        if point is not None:
            self.start_epoch, self.step, self.resumed = point.epoch, point.step, point.progress
        epochs = self.config.optim.epochs
        for epoch in range(self.start_epoch, epochs):
            stats = self._train_epoch(epoch)
            if (epoch + 1) % self.config.validate_every == 0 or epoch + 1 == epochs:
                self._validate(epoch, stats)
            self._save_checkpoint(epoch, stats)
        return self._finish()

    def _set_schedules(self) -> tuple[float, float]:
        """Learning rate and margin of the current step, set in every system."""
        lr, margin = schedules_at(
            self.step,
            self.config,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
        )
        for system in self.systems:
            for group in system.optimizer.param_groups:
                group["lr"] = lr
            self.accelerator.unwrap_model(system.step).classifier.set_margin(margin)
        return lr, margin

    def _batches_per_epoch(self) -> int:
        return len(self.feature_cache) if self.feature_cache is not None else len(self.loader)

    def _start_epoch(self, epoch: int) -> EpochProgress:
        """Samplers and models set for ``epoch``; where it starts (resumed or not)."""
        progress = EpochProgress.start(epoch, [s.name for s in self.systems])
        if self.resumed is not None and self.resumed.epoch == epoch:
            progress, self.resumed = self.resumed, None
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        if hasattr(self.loader, "set_epoch"):  # Accelerate's loader re-sets the sampler's
            self.loader.set_epoch(epoch)
        for system in self.systems:
            system.step.train()
        return progress

    def _train_epoch(self, epoch: int) -> dict[str, dict[str, float]]:
        accelerator = self.accelerator
        progress = self._start_epoch(epoch)
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
                    self._forward_backward(system, inputs, input_lengths, labels, progress)
            progress.seen += len(labels)
            progress.batches += 1
            if accelerator.sync_gradients:
                self.step += 1
                lr, margin = self._set_schedules()
                self._after_step(epoch, progress, started)
            processes = accelerator.num_processes
            figures = progress.postfix(
                self.config.name, started=started, lr=lr, margin=margin, processes=processes
            )
            bar.set_postfix(**figures)
        elapsed = time.perf_counter() - started
        return progress.stats(
            step=self.step,
            margin=margin,
            lr=lr,
            elapsed=elapsed,
            processes=accelerator.num_processes,
            global_batch=self.global_batch,
        )

    def _forward_backward(
        self,
        system: System,
        inputs: torch.Tensor,
        lengths: torch.Tensor,
        labels: torch.Tensor,
        progress: EpochProgress,
    ) -> None:
        """One micro-batch of ``system``; at the end of a window, its optimizer step."""
        if system.saved_buffers is None:  # start of an accumulation window
            system.saved_buffers = [b.clone() for b in system.buffers()]
        with self.accelerator.autocast():
            output = system.step(inputs, lengths, labels)
        # backward even on a non-finite loss: under DDP every process must join the
        # gradient all-reduce; the step is then skipped in all of them
        self.accelerator.backward(output.loss)
        loss = float(output.loss.detach())
        if np.isfinite(loss):
            progress.add(system.name, loss, output.logits, labels)
        else:
            system.window_bad = True
        if self.accelerator.sync_gradients:
            self._apply_gradients(system, progress)

    def _apply_gradients(self, system: System, progress: EpochProgress) -> None:
        """Optimizer step at the end of an accumulation window, unless something in it was
        not finite (loss, gradients, normalisation statistics): then the gradients are
        dropped, the buffers restored, and the skip counted and reported."""
        if window_is_bad(system, self.accelerator, clip=self.config.optim.grad_clip):
            drop_window(system)
            progress.skipped[system.name] += 1
            self._report_skip(system)
        else:
            take_step(system)
        system.window_bad = False
        system.saved_buffers = None

    def _report_skip(self, system: System) -> None:
        """Warn of a skipped step; stop after ``max_skipped_steps`` in a row."""
        step, limit = self.step + 1, self.config.max_skipped_steps
        if system.skipped_in_row >= limit:
            latest = self.checkpoints.found()
            raise TrainingError(stop_message(system, step, latest[-1][1] if latest else None))
        if self.accelerator.is_main_process:
            warnings.warn(skip_message(system, step, limit), RuntimeWarning, stacklevel=2)

    def _after_step(self, epoch: int, progress: EpochProgress, started: float) -> None:
        every = self.config.checkpoint_every_steps
        if every > 0 and self.step % every == 0 and progress.batches < self._batches_per_epoch():
            progress.seconds = time.perf_counter() - started
            self.accelerator.wait_for_everyone()
            if self.accelerator.is_main_process:
                name = f"step-{self.step:08d}"
                self.checkpoints.write(name, step=self.step, epochs_done=epoch, progress=progress)
                self.checkpoints.prune()
            self.accelerator.wait_for_everyone()
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
        """config.yaml (refused over checkpoints of another recipe) and speakers.txt."""
        if not self.accelerator.is_main_process:
            return
        self.checkpoints.write_recipe()
        atomic_write_text(self.out_dir / SPEAKERS_FILE, "\n".join(self.dataset.speakers) + "\n")

    def _save_checkpoint(self, epoch: int, stats: dict[str, dict[str, float]]) -> None:
        """End of an epoch: history, TensorBoard, checkpoint, metrics.csv, pruning."""
        self.accelerator.wait_for_everyone()
        for system in self.systems:
            system.history.append({"epoch": epoch + 1, **stats[system.name]})
        if self.accelerator.is_main_process:
            log_tensorboard(self.out_dir / "tensorboard", epoch, stats)
            name = f"epoch-{epoch + 1:03d}"
            self.checkpoints.write(name, step=self.step, epochs_done=epoch + 1)
            write_metrics(self.out_dir / "metrics.csv", {s.name: s.history for s in self.systems})
            self.checkpoints.prune()
        self.accelerator.wait_for_everyone()

    def _finish(self) -> dict[str, Path]:
        """The final models (:func:`_write_final_models`); every process returns once they
        are written."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            _write_final_models(self)
        self.accelerator.wait_for_everyone()
        return {s.name: self.out_dir / s.name / "model" for s in self.systems}


def _write_final_models(trainer: Trainer) -> None:
    """Per system: the final model (best epochs averaged, or the last), its classifier
    and a summary under ``out_dir/<name>``; then the training curves."""
    for system in trainer.systems:
        epochs = trainer.checkpoints.load_final(system)
        summary = {
            "averaged_epochs": epochs,
            "global_batch": trainer.global_batch,
            "per_process_batch": trainer.micro_batch,
            "processes": trainer.accelerator.num_processes,
            "grad_accum": trainer.config.optim.grad_accum,
            "skipped_steps": system.skipped_total,
            "history": system.history,
        }
        step = trainer.accelerator.unwrap_model(system.step)
        save_final_model(trainer.out_dir / system.name, step, trainer.frontend, summary)
    plot_training_curves(trainer.out_dir / "metrics.csv", trainer.out_dir / "curves.png")
