"""The systems a run trains: (frontend) -> backend -> AAM classifier, each with its optimizer.

With a frozen frontend, several backends (``TrainConfig.compare``) train in the same run
from the same hidden states; the first system is always ``config.name``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lapsv.backend import SpeakerBackend
from lapsv.data.dataset import CropDataset
from lapsv.errors import ConfigError
from lapsv.frontends import Frontend
from lapsv.losses import AAMSoftmax, ClassifierOutput
from lapsv.model import SpeakerModel
from lapsv.training.config import TrainConfig
from lapsv.training.optim import build_optimizer
from lapsv.training.stages import init_classifier_rows


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


def build_systems(
    config: TrainConfig,
    frontend: Frontend,
    accelerator: Any,
    dataset: CropDataset,
    initial: SpeakerModel | None = None,
) -> list[System]:
    """The main system, then one per ``config.compare`` entry, prepared by ``accelerator``.

    Args:
        dataset: the training crops (classes: speakers x speed factors).
        initial: the previous stage's model (``init_from``), whose backend is the main one.
    """
    n_classes, speakers = dataset.n_classes, dataset.speakers
    frozen = config.model.frontend.freeze
    if config.compare and not frozen:
        raise ConfigError("'compare' needs a frozen frontend (model.frontend.freeze: true)")
    backends = {config.name: _main_backend(config, frontend, initial)}
    for name, overrides in config.compare.items():
        backend_config = dataclasses.replace(
            config.model.backend,
            in_dim=frontend.hidden_size,
            n_layers=frontend.n_layers,
            **dict(overrides or {}),
        )
        backends[name] = SpeakerBackend(backend_config)
    systems = []
    for name, backend in backends.items():
        classifier = _classifier(config, backend.embed_dim, name, n_classes, speakers)
        trainable_frontend = None if frozen or name != config.name else frontend
        step = TrainStep(backend, classifier, trainable_frontend)
        optimizer = build_optimizer(
            step,
            lr=config.optim.lr,
            weight_decay=config.optim.weight_decay,
            scope=config.optim.weight_decay_scope,
        )
        step, optimizer = accelerator.prepare(step, optimizer)
        systems.append(System(name, step, optimizer))
    return systems


def _main_backend(
    config: TrainConfig, frontend: Frontend, initial: SpeakerModel | None
) -> SpeakerBackend:
    if initial is not None:
        return initial.backend
    backend_config = dataclasses.replace(
        config.model.backend,
        in_dim=frontend.hidden_size,
        n_layers=frontend.n_layers,
    )
    return SpeakerBackend(backend_config)


def _classifier(
    config: TrainConfig, embed_dim: int, name: str, n_classes: int, speakers: list[str]
) -> AAMSoftmax:
    loss = config.loss
    classifier = AAMSoftmax(
        embed_dim,
        n_classes,
        n_subcenters=loss.subcenters,
        scale=loss.scale,
        margin=loss.margin,
        topk=loss.topk,
        topk_margin=loss.topk_margin,
    )
    if config.init_from and name == config.name:
        init_classifier_rows(classifier, Path(config.init_from), speakers)
    return classifier
