"""Training stages on Hugging Face Accelerate (one process by default, DDP under
``accelerate launch``): AAM-softmax, cosine learning rate, margin ramp, per-epoch
validation on held-out training speakers, checkpoints, best-N averaging.

With a frozen frontend, several backends (``TrainConfig.compare``) train in the same run:
the frontend runs once per batch and every backend learns from the same hidden states.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from lapsv.backend import SpeakerBackend
from lapsv.config import dump_yaml, to_dict
from lapsv.data.dataset import (
    CropConfig,
    CropDataset,
    EpochShuffleSampler,
    SpeakerBalancedSampler,
    collate_crops,
)
from lapsv.data.manifest import Manifest, read_manifest
from lapsv.errors import ConfigError
from lapsv.files import atomic_directory, atomic_write_text
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
from lapsv.training.feature_cache import FrozenFeatureCache
from lapsv.training.plots import plot_training_curves
from lapsv.training.schedule import lr_at_step
from lapsv.training.validation import Validator

SPEED_FACTORS = (1.0, 0.9, 1.1)


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


def train(config: TrainConfig, out_dir: str | Path, *, progress: bool = True) -> dict[str, Path]:
    """Run one training stage; re-running the same command resumes from the last epoch.

    Returns:
        system name -> final model directory (``config.yaml`` + ``model.safetensors``).
    """
    return Trainer(config, Path(out_dir), progress=progress).run()


class Trainer:
    """See :func:`train`."""

    def __init__(self, config: TrainConfig, out_dir: Path, *, progress: bool = True) -> None:
        from accelerate import Accelerator
        from accelerate.utils import set_seed

        self.config = config
        self.out_dir = out_dir
        self.progress = progress
        self.accelerator = Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.optim.grad_accum,
        )
        set_seed(config.seed)
        self.manifest = read_manifest(config.data.train_manifest)
        self._check_data(self.manifest)
        self.loader, self.dataset, self.sampler = self._build_data()
        self.frontend = self._build_frontend()
        self.systems = self._build_systems()
        self.steps_per_epoch = max(len(self.loader) // config.optim.grad_accum, 1)
        self.total_steps = self.steps_per_epoch * config.optim.epochs
        self.validator = Validator.from_config(config.data, self.manifest)
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

    # ------------------------------------------------------------------ set-up
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
        )
        return self.accelerator.prepare(loader), dataset, sampler

    def _build_frontend(self) -> Frontend:
        settings = self.config.model.frontend
        if self.config.init_from:
            frontend = self._init_model().frontend
        else:
            frontend = build_frontend(settings, pretrained=True)
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
            parameters = [p for p in step.parameters() if p.requires_grad]
            optimizer = torch.optim.Adam(
                parameters, lr=config.optim.lr, weight_decay=config.optim.weight_decay
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

    def _train_epoch(self, epoch: int) -> dict[str, dict[str, float]]:
        accelerator = self.accelerator
        self.dataset.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        for system in self.systems:
            system.step.train()
        totals = {s.name: {"loss": 0.0, "correct": 0.0} for s in self.systems}
        seen, started = 0, time.perf_counter()
        lr, margin = self._set_schedules()
        bar = tqdm(
            self._batches(epoch),
            total=len(self.feature_cache or self.loader),
            desc=f"epoch {epoch + 1}/{self.config.optim.epochs}",
            unit="batch",
            disable=not (self.progress and accelerator.is_main_process),
            leave=False,
        )
        for inputs, input_lengths, labels in bar:
            with accelerator.accumulate(*[s.step for s in self.systems]):
                for system in self.systems:
                    with accelerator.autocast():
                        output = system.step(inputs, input_lengths, labels)
                    accelerator.backward(output.loss)
                    if accelerator.sync_gradients and self.config.optim.grad_clip > 0:
                        accelerator.clip_grad_norm_(
                            system.step.parameters(), self.config.optim.grad_clip
                        )
                    system.optimizer.step()
                    system.optimizer.zero_grad(set_to_none=True)
                    totals[system.name]["loss"] += output.loss.item() * len(labels)
                    correct = (output.logits.argmax(dim=-1) == labels).sum()
                    totals[system.name]["correct"] += float(correct)
            seen += len(labels)
            if accelerator.sync_gradients:
                self.step += 1
                lr, margin = self._set_schedules()
            main = totals[self.config.name]
            rate = seen / max(time.perf_counter() - started, 1e-9)
            bar.set_postfix(
                loss=f"{main['loss'] / seen:.3f}",
                acc=f"{main['correct'] / seen:.1%}",
                margin=f"{margin:.3f}",
                lr=f"{lr:.1e}",
                utt_s=f"{rate * accelerator.num_processes:.0f}",
            )
        elapsed = time.perf_counter() - started
        return {
            name: {
                "loss": t["loss"] / max(seen, 1),
                "accuracy": t["correct"] / max(seen, 1),
                "margin": margin,
                "lr": lr,
                "seconds": elapsed,
                "utterances_per_second": seen * accelerator.num_processes / max(elapsed, 1e-9),
            }
            for name, t in totals.items()
        }

    def _batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(inputs, lengths, labels): hidden states when the frontend is frozen (computed
        here once for every backend, or read from the feature cache), else waveforms."""
        if self.feature_cache is not None:
            yield from self.feature_cache.batches(epoch)
            return
        for waves, labels in self.loader:
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
        if path.exists() and path.read_text() != text and self._checkpoints():
            raise ConfigError(
                f"{self.out_dir} holds checkpoints of a different recipe; use another output "
                "folder or delete it"
            )
        atomic_write_text(path, text)
        atomic_write_text(self.out_dir / SPEAKERS_FILE, "\n".join(self.dataset.speakers) + "\n")

    def _checkpoints(self) -> list[Path]:
        return sorted((self.out_dir / "checkpoints").glob("epoch-*"))

    def _save_checkpoint(self, epoch: int, stats: dict[str, dict[str, float]]) -> None:
        self.accelerator.wait_for_everyone()
        for system in self.systems:
            system.history.append({"epoch": epoch + 1, **stats[system.name]})
        if self.accelerator.is_main_process:
            with atomic_directory(self.out_dir / "checkpoints" / f"epoch-{epoch + 1:03d}") as tmp:
                for system in self.systems:
                    step = self.accelerator.unwrap_model(system.step)
                    state = trained_state(step, self.frontend)
                    safetensors.torch.save_file(state, str(tmp / f"{system.name}.safetensors"))
                    torch.save(system.optimizer.state_dict(), tmp / f"{system.name}.optim.pt")
                trainer_state = {
                    "epoch": epoch + 1,
                    "step": self.step,
                    "history": {s.name: s.history for s in self.systems},
                }
                (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1))
            self._log(epoch, stats)
            self._prune_checkpoints()
        self.accelerator.wait_for_everyone()

    def _resume(self) -> None:
        checkpoints = self._checkpoints()
        if not checkpoints:
            return
        latest = checkpoints[-1]
        state = json.loads((latest / "trainer.json").read_text())
        for system in self.systems:
            weights = safetensors.torch.load_file(str(latest / f"{system.name}.safetensors"))
            load_trained_state(self.accelerator.unwrap_model(system.step), self.frontend, weights)
            optimizer_state = torch.load(
                latest / f"{system.name}.optim.pt", map_location="cpu", weights_only=True
            )
            system.optimizer.load_state_dict(optimizer_state)
            system.history = state["history"][system.name]
        self.start_epoch, self.step = state["epoch"], state["step"]

    def _log(self, epoch: int, stats: dict[str, dict[str, float]]) -> None:
        path = self.out_dir / "metrics.csv"
        fields = ["epoch", "system", "loss", "accuracy", "margin", "lr", "seconds"]
        fields += ["utterances_per_second", "val_eer", "val_min_dcf_0.01"]
        new = not path.exists()
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields, extrasaction="ignore")
            if new:
                writer.writeheader()
            for name, values in stats.items():
                writer.writerow({"epoch": epoch + 1, "system": name, **values})
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
        keep = {f"epoch-{e:03d}" for s in self.systems for e in self._best_epochs(s)}
        checkpoints = self._checkpoints()
        keep.add(checkpoints[-1].name)
        for path in checkpoints:
            if path.name not in keep:
                for child in path.iterdir():
                    child.unlink()
                path.rmdir()

    def _finish(self) -> dict[str, Path]:
        self.accelerator.wait_for_everyone()
        outputs = {}
        for system in self.systems:
            target = self.out_dir / system.name
            outputs[system.name] = target / "model"
            if not self.accelerator.is_main_process:
                continue
            epochs = self._best_epochs(system)
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
            safetensors.torch.save_file(classifier, str(target / CLASSIFIER_FILE))
            summary = {"averaged_epochs": epochs, "history": system.history}
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
