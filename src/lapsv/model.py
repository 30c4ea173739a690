"""SpeakerModel = frontend + backend: an ``nn.Module`` with a self-describing save format.

A saved model is a directory holding ``config.yaml`` (resolved config, lapsv version,
format) and ``model.safetensors`` (every weight, frontend included), see
:mod:`lapsv.modeldir`. Loading needs nothing else: no hub, no original encoder directory,
no pickle. The user verbs (embed a file, verify, similarity) are on the
:class:`~lapsv.speaker.Speaker` facade that wraps a model with its scoring state.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from lapsv import __version__
from lapsv.backend import SpeakerBackend
from lapsv.config import ModelConfig, dump_yaml, from_dict, load_yaml, to_dict
from lapsv.errors import ConfigError, ModelLoadError
from lapsv.files import atomic_directory
from lapsv.frontends import Frontend, build_frontend
from lapsv.modeldir import (
    CONFIG_FILE,
    FORMAT_VERSION,
    PICKLE_SUFFIXES,
    WEIGHTS_FILE,
    pickle_refused,
    read_pickle_state,
    state_fingerprint,
    weight_files,
)


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[None]:
    """Eval mode without autograd inside the block; every submodule's mode comes back after."""
    modes = [(child, child.training) for child in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for child, mode in modes:
            child.train(mode)


class SpeakerModel(nn.Module):
    """A pre-trained speech encoder (frontend) + a speaker backend.

    Args:
        frontend: produces (B, L, T, D) hidden layers from 16 kHz waveforms.
        backend: (B, L, T, D) + frame lengths -> (B, E) embeddings.

    Example:
        >>> model = SpeakerModel.build(ModelConfig(), pretrained=False)  # random GE2E weights
        >>> model.embed_batch(torch.randn(2, 16000), torch.tensor([16000, 12000])).shape
        torch.Size([2, 192])
    """

    def __init__(self, frontend: Frontend, backend: SpeakerBackend) -> None:
        super().__init__()
        if (backend.config.in_dim, backend.config.n_layers) != (
            frontend.hidden_size,
            frontend.n_layers,
        ):
            raise ConfigError(
                f"backend expects {backend.config.n_layers} layers of width "
                f"{backend.config.in_dim}, the frontend gives {frontend.n_layers} x "
                f"{frontend.hidden_size}"
            )
        self.frontend = frontend
        self.backend = backend

    @classmethod
    def build(cls, config: ModelConfig, *, pretrained: bool = True) -> SpeakerModel:
        """Build from a config; the backend's in_dim and n_layers come from the frontend."""
        frontend = build_frontend(config.frontend, pretrained=pretrained)
        backend_config = dataclasses.replace(
            config.backend, in_dim=frontend.hidden_size, n_layers=frontend.n_layers
        )
        return cls(frontend, SpeakerBackend(backend_config))

    @property
    def config(self) -> ModelConfig:
        """The resolved config (derived sizes included) that rebuilds this model."""
        return ModelConfig(frontend=self.frontend.config(), backend=self.backend.config)

    @property
    def embed_dim(self) -> int:
        return self.backend.embed_dim

    @property
    def sample_rate(self) -> int:
        return self.frontend.sample_rate

    @property
    def max_input_seconds(self) -> float | None:
        """The longest input the frontend takes at once (longer ones are windowed)."""
        return self.frontend.max_input_seconds

    def _hidden_states(
        self, waveforms: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frontend.frozen:
            with torch.no_grad():
                return self.frontend(waveforms, lengths)
        return self.frontend(waveforms, lengths)

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, N) zero-padded 16 kHz waveforms, (B,) valid samples -> (B, E) embeddings."""
        hidden_states, frame_lengths = self._hidden_states(waveforms, lengths)
        return self.backend(hidden_states, frame_lengths)

    def evaluating(self) -> contextlib.AbstractContextManager[None]:
        """Eval mode without autograd inside the block; the previous modes come back after."""
        return evaluating(self)

    def embed_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Eval-mode embeddings (B, E) of zero-padded waveforms (B, N) with lengths (B,)."""
        with self.evaluating():
            hidden_states, frame_lengths = self._hidden_states(waveforms, lengths)
            return self.backend(hidden_states, frame_lengths)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def model_id(self) -> str:
        """``lapsv-`` + a fingerprint of the config and every weight (not of file times)."""
        return "lapsv-" + state_fingerprint(self, dump_yaml(to_dict(self.config)))

    def save(self, directory: str | Path) -> Path:
        """Write ``config.yaml`` + ``model.safetensors`` atomically into ``directory``."""
        directory = Path(directory)
        state = {name: tensor.detach().contiguous() for name, tensor in self.state_dict().items()}
        header = {
            "lapsv_version": __version__,
            "format": FORMAT_VERSION,
            "embed_dim": self.embed_dim,
            "sample_rate": self.sample_rate,
            "model": to_dict(self.config),
        }
        with atomic_directory(directory) as tmp:
            (tmp / CONFIG_FILE).write_text(dump_yaml(header))
            safetensors.torch.save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        return directory

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        map_location: str | torch.device = "cpu",
        trust_pickle: bool = False,
    ) -> SpeakerModel:
        """Load a model directory written by :meth:`save` (safetensors, no pickle).

        A directory whose weights are a pickle (``model.pt``, ``pytorch_model.bin``, ...;
        or ``directory`` naming such a file beside ``config.yaml``) is refused unless
        ``trust_pickle``: unpickling a file can run any code it carries. Scoring state
        saved beside the model is the :class:`~lapsv.speaker.Speaker`'s, not read here.
        """
        directory, config_path, weights_path = weight_files(directory)
        if weights_path.suffix.lower() in PICKLE_SUFFIXES and not trust_pickle:
            raise pickle_refused(weights_path)
        for path in (config_path, weights_path):
            if not path.is_file():
                raise ModelLoadError(
                    f"{directory}: not a lapsv model directory (missing {path.name}); "
                    f"expected {CONFIG_FILE} + {WEIGHTS_FILE}"
                )
        header = load_yaml(config_path)
        if header.get("format") != FORMAT_VERSION:
            raise ModelLoadError(
                f"{config_path}: model format {header.get('format')!r} is not supported by "
                f"lapsv {__version__} (format {FORMAT_VERSION}); upgrade lapsv"
            )
        try:
            config = from_dict(ModelConfig, header.get("model"), path="model")
        except ConfigError as error:
            raise ModelLoadError(f"{config_path}: {error}") from error
        model = cls.build(config, pretrained=False)
        if weights_path.suffix.lower() in PICKLE_SUFFIXES:
            state = read_pickle_state(weights_path, trust_pickle=trust_pickle)
        else:
            state = safetensors.torch.load_file(str(weights_path), device=str(map_location))
        load_state_checked(model, state, source=str(weights_path))
        return model.to(map_location).eval()


def load_state_checked(module: nn.Module, state: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict`` that names every missing, unexpected or mis-shaped tensor."""
    expected = module.state_dict()
    problems: list[str] = []
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing:
        problems.append(f"missing tensors: {_first(missing)}")
    if unexpected:
        problems.append(f"unexpected tensors: {_first(unexpected)}")
    for name in sorted(set(expected) & set(state)):
        if expected[name].shape != state[name].shape:
            problems.append(
                f"{name} has shape {tuple(state[name].shape)}, the config expects "
                f"{tuple(expected[name].shape)}"
            )
    if problems:
        raise ModelLoadError(f"{source}: weights do not match the config: " + "; ".join(problems))
    module.load_state_dict(state)


def _first(names: list[Any], limit: int = 8) -> str:
    shown = ", ".join(map(str, names[:limit]))
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")
