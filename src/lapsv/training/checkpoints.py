"""Checkpoints of a run: what they hold, writing, resuming, pruning, best-N averaging.

A checkpoint (at epoch ends and every ``checkpoint_every_steps``) holds everything a step
depends on: weights, optimizer, AMP scaler, every random generator and the position in
the epoch. It is written into a hidden folder renamed at the end, so it appears whole;
a rerun of the same command resumes from the most advanced one that loads.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from lapsv.config import dump_yaml, from_dict, load_yaml, to_dict
from lapsv.errors import ConfigError
from lapsv.files import atomic_directory, atomic_write_text, remove_directory
from lapsv.frontends import Frontend
from lapsv.training.config import TrainConfig
from lapsv.training.faults import failpoint
from lapsv.training.progress import EpochProgress
from lapsv.training.state import load_tree, rng_state, save_tree, set_rng_state
from lapsv.training.systems import System

CHECKPOINT_FORMAT = 2
# Settings a resumed run may change: how it is run, not what it computes.
OPERATIONAL = ("checkpoint_every_steps", "keep_last", "max_skipped_steps", "data.num_workers")

Found = tuple[tuple[int, int], Path, dict[str, Any]]


@dataclasses.dataclass
class ResumePoint:
    """Where a resumed run goes on: epochs done, optimizer steps done, and the position
    inside the next epoch (a mid-epoch checkpoint) or None."""

    epoch: int
    step: int
    progress: EpochProgress | None


class CheckpointStore:
    """The ``checkpoints`` folder of a run (and its config.yaml), written by the main
    process only.

    Args:
        out_dir: the run's output folder.
        config: the run's recipe (``keep_best``, ``keep_last``, ``average_best``).
        accelerator: the run's ``accelerate.Accelerator`` (models, scaler, step counter).
        systems: what is trained; a checkpoint holds all of them.
        frontend: shared by the systems; in the checkpoint when it is trained.
        global_batch: utterances per optimizer step (recorded).
    """

    def __init__(
        self,
        out_dir: Path,
        config: TrainConfig,
        accelerator: Any,
        systems: list[System],
        frontend: Frontend,
        global_batch: int,
    ) -> None:
        self.out_dir = out_dir
        self.folder = out_dir / "checkpoints"
        self.config = config
        self.accelerator = accelerator
        self.systems = systems
        self.frontend = frontend
        self.global_batch = global_batch

    def found(self) -> list[Found]:
        """Complete checkpoints as ((epochs done, batches into the next), folder, state),
        oldest first. Hidden folders (a save or a deletion cut short) are not checkpoints."""
        found = []
        for path in self.folder.glob("*"):
            if path.name.startswith(".") or not path.is_dir():
                continue
            try:
                state = json.loads((path / "trainer.json").read_text())
                position = (int(state["epoch"]), int(state.get("batches", 0)))
            except (OSError, ValueError, KeyError, TypeError):
                continue
            found.append((position, path, state))
        return sorted(found, key=lambda item: item[0])

    def write_recipe(self) -> None:
        """The run's config.yaml, refused (ConfigError) over checkpoints of a recipe that
        differs in more than OPERATIONAL settings."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / "config.yaml"
        text = dump_yaml(to_dict(self.config))
        changed = path.exists() and path.read_text() != text
        if changed and self.found() and training_settings(path) != training_settings(self.config):
            raise ConfigError(
                f"{self.out_dir} holds checkpoints of a different recipe; use another output "
                "folder or delete it"
            )
        atomic_write_text(path, text)

    def write(
        self,
        name: str,
        *,
        step: int,
        epochs_done: int,
        progress: EpochProgress | None = None,
    ) -> None:
        """Everything the next step depends on, in a folder that appears all at once.

        Args:
            step: optimizer steps done; epochs_done: complete epochs.
            progress: the position in the epoch under way (mid-epoch checkpoints).
        """
        systems, scaler = self.systems, self.accelerator.scaler
        with atomic_directory(self.folder / name) as tmp:
            for system in systems:
                module = self.accelerator.unwrap_model(system.step)
                state = trained_state(module, self.frontend)
                safetensors.torch.save_file(state, str(tmp / f"{system.name}.safetensors"))
                failpoint("in-checkpoint", step)
                save_tree(system.optimizer.state_dict(), tmp / f"{system.name}.optim.safetensors")
            generators = {"rng": rng_state(), "scaler": scaler.state_dict() if scaler else None}
            save_tree(generators, tmp / "state.safetensors")
            trainer_state = {
                "format": CHECKPOINT_FORMAT,
                "epoch": epochs_done,
                "batches": progress.batches if progress else 0,
                "step": step,
                "accelerator_step": self.accelerator.step,
                "global_batch": self.global_batch,
                "history": {s.name: s.history for s in systems},
                "skipped": {s.name: [s.skipped_total, s.skipped_in_row] for s in systems},
                "progress": dataclasses.asdict(progress) if progress else None,
            }
            (tmp / "trainer.json").write_text(json.dumps(trainer_state, indent=1))

    def resume(self) -> ResumePoint | None:
        """Continue from the most advanced checkpoint that loads (after a crash, a kill, a
        full disk): weights, optimizer, scaler, generators and the position in the epoch.
        None without one. Warnings point at the caller."""
        if self.accelerator.is_main_process:
            for leftover in self.folder.glob(".*"):
                shutil.rmtree(leftover, ignore_errors=True)  # saves or deletions cut short
        self.accelerator.wait_for_everyone()
        for _, path, state in reversed(self.found()):
            try:
                loaded = self._read(path, state)
            except Exception as error:  # unreadable: fall back to the one before
                warnings.warn(f"{path}: cannot resume from it ({error})", stacklevel=2)
                continue
            return self._apply(state, *loaded)
        return None

    def _read(self, path: Path, state: dict[str, Any]) -> tuple[Any, Any, Any]:
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

    def _apply(
        self,
        state: dict[str, Any],
        weights: dict[str, dict[str, torch.Tensor]],
        optimizers: dict[str, Any],
        generators: dict[str, Any] | None,
    ) -> ResumePoint:
        for system in self.systems:
            module = self.accelerator.unwrap_model(system.step)
            load_trained_state(module, self.frontend, weights[system.name])
            system.optimizer.load_state_dict(optimizers[system.name])
            system.history = state["history"][system.name]
            system.skipped_total, system.skipped_in_row = state.get("skipped", {}).get(
                system.name, (0, 0)
            )
        point = ResumePoint(state["epoch"], state["step"], None)
        self.accelerator.step = state.get("accelerator_step", 0)
        if state.get("progress"):
            point.progress = EpochProgress(**state["progress"])
        if generators is not None:
            set_rng_state(generators["rng"])
            if generators["scaler"] is not None and self.accelerator.scaler is not None:
                self.accelerator.scaler.load_state_dict(generators["scaler"])
        return point

    def best_epochs(self, history: list[dict[str, Any]]) -> list[int]:
        """The ``keep_best`` best epochs by validation EER (the most recent without)."""
        keep = max(self.config.keep_best, 1)
        if history and all("val_eer" in h for h in history):
            ranked = sorted(history, key=lambda h: (h["val_eer"], -h["epoch"]))
        else:
            ranked = sorted(history, key=lambda h: -h["epoch"])
        return sorted(h["epoch"] for h in ranked[:keep])

    def prune(self) -> None:
        """Keep the best ``keep_best`` epochs of every system and the ``keep_last`` most
        recent checkpoints; a deleted checkpoint vanishes at once (never half-deleted)."""
        keep = {f"epoch-{e:03d}" for s in self.systems for e in self.best_epochs(s.history)}
        checkpoints = self.found()
        keep.update(path.name for _, path, _ in checkpoints[-max(self.config.keep_last, 1) :])
        for _, path, _ in checkpoints:
            if path.name not in keep:
                remove_directory(path)

    def load_final(self, system: System) -> list[int]:
        """Put the final weights into ``system``: the mean over its best epochs
        (``average_best``), else its last epoch's. Returns those epochs."""
        if self.config.average_best:
            epochs = self.best_epochs(system.history)
        else:
            epochs = [system.history[-1]["epoch"]]
        paths = [self.folder / f"epoch-{e:03d}" / f"{system.name}.safetensors" for e in epochs]
        averaged = average_states([safetensors.torch.load_file(str(p)) for p in paths])
        module = self.accelerator.unwrap_model(system.step)
        load_trained_state(module, self.frontend, averaged)
        return epochs


def trained_state(step: torch.nn.Module, frontend: Frontend) -> dict[str, torch.Tensor]:
    """Weights a checkpoint must hold: backend, classifier, and the frontend if trained."""
    state = {f"backend.{k}": v for k, v in step.backend.state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in step.classifier.state_dict().items()})
    if not frontend.frozen:
        state.update({f"frontend.{k}": v for k, v in frontend.state_dict().items()})
    state["rng.torch"] = torch.get_rng_state()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def load_trained_state(
    step: torch.nn.Module, frontend: Frontend, state: dict[str, torch.Tensor]
) -> None:
    """Put the weights of :func:`trained_state` back (and the torch generator's state)."""
    parts: dict[str, dict[str, torch.Tensor]] = {"backend": {}, "classifier": {}, "frontend": {}}
    for key, value in state.items():
        prefix, _, name = key.partition(".")
        if prefix in parts:
            parts[prefix][name] = value
    step.backend.load_state_dict(parts["backend"])
    step.classifier.load_state_dict(parts["classifier"])
    if parts["frontend"]:
        frontend.load_state_dict(parts["frontend"])
    if "rng.torch" in state:
        torch.set_rng_state(state["rng.torch"])


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors; other tensors from the last state.

    >>> average_states([{"w": torch.tensor([1.0])}, {"w": torch.tensor([3.0])}])["w"]
    tensor([2.])
    """
    averaged = {}
    for key, last in states[-1].items():
        if last.is_floating_point() and not key.startswith("rng."):
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(0).to(last.dtype)
        else:
            averaged[key] = last
    return averaged


def training_settings(source: TrainConfig | Path) -> str | None:
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
