"""What checkpoints hold, checkpoint averaging, and carrying a classifier across stages."""

from __future__ import annotations

from pathlib import Path

import safetensors.torch
import torch

from lapsv.errors import ConfigError
from lapsv.frontends import Frontend
from lapsv.losses import AAMSoftmax

CLASSIFIER_FILE = "classifier.safetensors"
SPEAKERS_FILE = "speakers.txt"


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
    """Element-wise mean of floating-point tensors; other tensors from the last state."""
    averaged = {}
    for key, last in states[-1].items():
        if last.is_floating_point() and not key.startswith("rng."):
            averaged[key] = torch.stack([s[key].float() for s in states]).mean(0).to(last.dtype)
        else:
            averaged[key] = last
    return averaged


def init_classifier_rows(classifier: AAMSoftmax, previous: Path, speakers: list[str]) -> None:
    """Copy the previous stage's centers of the original-speed classes of the same speakers."""
    previous_speakers = (previous / SPEAKERS_FILE).read_text().split()
    if previous_speakers != speakers:
        raise ConfigError(
            f"{previous}: trained on other speakers than this stage's manifest; the classifier "
            "cannot be carried over"
        )
    state = safetensors.torch.load_file(str(previous / _main_name(previous) / CLASSIFIER_FILE))
    rows = classifier.weight.shape[0]
    with torch.no_grad():
        classifier.weight.copy_(state["weight"][:rows])


def _main_name(previous: Path) -> str:
    from lapsv.config import load_yaml

    return str(load_yaml(previous / "config.yaml").get("name", "lap_astp"))
