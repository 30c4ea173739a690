"""SpeakerModel = frontend + backend, with embedding and a self-describing save format.

A saved model is a directory holding exactly ``config.yaml`` (resolved config, lapsv
version, format) and ``model.safetensors`` (every weight, frontend included). Loading
needs nothing else: no hub, no original encoder directory, no pickle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from lapsv import __version__
from lapsv.api import SpeakerAPI, state_fingerprint
from lapsv.backend import SpeakerBackend
from lapsv.config import ModelConfig, dump_yaml, from_dict, load_yaml, to_dict
from lapsv.errors import ConfigError, ModelLoadError
from lapsv.files import atomic_directory
from lapsv.frontends import Frontend, build_frontend

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
# Weight files that are pickles (torch.save): loading one can run any code it carries.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")
PICKLE_WEIGHT_FILES = ("model.pt", "model.pth", "model.bin", "pytorch_model.bin", "model.ckpt")


class SpeakerModel(SpeakerAPI, nn.Module):
    """A pre-trained speech encoder (frontend) + a speaker backend.

    Besides the batch path below it has the Python API of :class:`~lapsv.api.SpeakerAPI`:
    ``embed(path_or_array)``, ``verify(a, b)``, ``similarity(e1, e2)``.

    Args:
        frontend: produces (B, L, T, D) hidden layers from 16 kHz waveforms.
        backend: (B, L, T, D) + frame lengths -> (B, E) embeddings.

    Example:
        >>> model = SpeakerModel.build(ModelConfig(), pretrained=False)  # random GE2E weights
        >>> model.embed(torch.randn(2, 16000), torch.tensor([16000, 12000])).shape
        torch.Size([2, 192])
        >>> import numpy as np
        >>> model.embed(np.random.default_rng(0).normal(0, 0.1, 8000), sample_rate=8000).shape
        (192,)
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

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Eval mode without autograd inside the block; the previous mode comes back after."""
        was_training = self.training
        self.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.train(was_training)

    def embed_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Eval-mode embeddings (B, E) of zero-padded waveforms (B, N) with lengths (B,).

        ``model.embed(waveforms, lengths)`` is the same call.
        """
        with self.evaluating():
            hidden_states, frame_lengths = self._hidden_states(waveforms, lengths)
            return self.backend(hidden_states, frame_lengths)

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
        ``trust_pickle``: unpickling a file can run any code it carries.
        """
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
        if directory.is_file():  # a pickle weight file beside its config.yaml
            directory, weights_path = directory.parent, directory
            config_path = directory / CONFIG_FILE
        elif not weights_path.is_file():
            pickles = [directory / n for n in PICKLE_WEIGHT_FILES if (directory / n).is_file()]
            weights_path = pickles[0] if pickles else weights_path
        if weights_path.suffix.lower() in PICKLE_SUFFIXES and not trust_pickle:
            raise _pickle_refused(weights_path)
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
        from lapsv.verification import ScoringState  # imports lapsv.evaluate, which imports us

        model.scoring = ScoringState.load(directory)
        return model.to(map_location).eval()


def is_pickle_checkpoint(path: str | Path) -> bool:
    """A ``torch.save`` / pickle file by its suffix (a TorchScript archive is not one)."""
    path = Path(path)
    if path.suffix.lower() not in PICKLE_SUFFIXES:
        return False
    if zipfile.is_zipfile(path):  # torch.save's zip format; TorchScript also stores code/
        with zipfile.ZipFile(path) as archive:
            return not any("/code/" in f"/{name}" for name in archive.namelist())
    return True


def read_pickle_state(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of a pickle checkpoint; refused (ModelLoadError) unless ``trust_pickle``.

    Accepts a state dict, a dict holding one under ``state_dict`` / ``model_state`` /
    ``model``, or a pickled module.
    """
    if not trust_pickle:
        raise _pickle_refused(path)
    try:
        value = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:
        raise ModelLoadError(f"{path}: cannot read the checkpoint ({error})") from error
    if isinstance(value, nn.Module):
        value = value.state_dict()
    for key in ("state_dict", "model_state", "model"):
        if isinstance(value, dict) and isinstance(value.get(key), dict):
            value = value[key]
            break
    if not isinstance(value, dict) or not all(isinstance(v, torch.Tensor) for v in value.values()):
        raise ModelLoadError(f"{path}: holds no state dict of tensors")
    return value


def _pickle_refused(path: str | Path) -> ModelLoadError:
    return ModelLoadError(
        f"{path}: a pickle checkpoint, refused: unpickling a file runs any code stored in it. "
        "If you trust where it comes from, pass trust_pickle=True (CLI: --trust-pickle), then "
        "save the model once with SpeakerModel.save (safetensors) and use that"
    )


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
