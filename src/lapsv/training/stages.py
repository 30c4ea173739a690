"""What one training stage hands to the next: per system a folder with the final model,
its classifier and a summary, and the run's speaker list (the classifier's class order).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from lapsv.config import load_yaml
from lapsv.errors import ConfigError
from lapsv.files import atomic_path, atomic_write_text
from lapsv.frontends import Frontend
from lapsv.losses import AAMSoftmax
from lapsv.model import SpeakerModel

CLASSIFIER_FILE = "classifier.safetensors"
SPEAKERS_FILE = "speakers.txt"


def save_final_model(
    target: Path, step: nn.Module, frontend: Frontend, summary: dict[str, Any]
) -> None:
    """``target``/model (the frontend frozen), ``target``/classifier.safetensors and
    ``target``/training.json (``summary``) of one system; ``step``: its TrainStep."""
    model = SpeakerModel(frontend, step.backend)
    model.frontend.set_frozen(True)
    model.save(target / "model")
    classifier = {k: v.contiguous() for k, v in step.classifier.state_dict().items()}
    with atomic_path(target / CLASSIFIER_FILE) as tmp:
        safetensors.torch.save_file(classifier, str(tmp))
    atomic_write_text(target / "training.json", json.dumps(summary, indent=1))


def initial_model(name: str, init_from: str | None) -> SpeakerModel | None:
    """The previous stage's model of system ``name`` (``init_from``: its folder), or None."""
    if not init_from:
        return None
    return SpeakerModel.load(Path(init_from) / name / "model")


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
    return str(load_yaml(previous / "config.yaml").get("name", "lap_astp"))
