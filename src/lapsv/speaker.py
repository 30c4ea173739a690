"""The ``Speaker`` facade and ``load_model``, the one way lapsv loads a model.

A :class:`Speaker` wraps an encoder (anything with ``embed_batch``: a
:class:`~lapsv.model.SpeakerModel`, the built-in GE2E encoder, or an exported ONNX /
TorchScript file) together with the :class:`~lapsv.scoring.state.ScoringState` it carries,
and offers the user verbs (as SpeechBrain's inference classes wrap their modules)::

    import lapsv
    model = lapsv.load_model("ge2e")               # or a model directory, hub id, .onnx file
    e = model.embed("alice.wav")                   # (E,) float32 numpy
    e = model.embed(samples, sample_rate=44100)    # (N,) or (N, channels) array, any rate
    model.similarity(e, model.embed("bob.wav"))    # cosine (training mean subtracted if known)
    result = model.verify("alice.wav", "bob.wav")  # scores + decision (LLR 0 when calibrated)
    model.embed_batch(waveforms, lengths)          # (B, N) padded tensor, (B,) -> (B, E) tensor
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from lapsv.errors import ConfigError, ModelLoadError
from lapsv.exported import EXPORTED_SUFFIXES, ExportedEncoder
from lapsv.frontends.ge2e import GE2EEncoder
from lapsv.inference import DEFAULT_MAX_SECONDS, embed_audio
from lapsv.model import SpeakerModel
from lapsv.modeldir import CONFIG_FILE, HUB_FILES, WEIGHTS_FILE, is_pickle_checkpoint
from lapsv.scoring.norm import center_and_normalize
from lapsv.scoring.state import ScoringState, Verification, verify_embeddings

AudioInput = str | Path | np.ndarray | torch.Tensor


class Encoder(Protocol):
    """What a :class:`Speaker` wraps: a batch embedder with a content id."""

    embed_dim: int
    sample_rate: int
    max_input_seconds: float | None

    @property
    def model_id(self) -> str: ...

    @property
    def device(self) -> torch.device: ...

    def embed_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor: ...


class Speaker:
    """A speaker encoder with its scoring state: embed, compare, verify.

    Args:
        encoder: the model that embeds (B, N) waveform batches (:class:`Encoder`).
        scoring: training mean, AS-norm cohort and QMF calibration (empty by default).
    """

    def __init__(self, encoder: Encoder, scoring: ScoringState | None = None) -> None:
        self.encoder = encoder
        self.scoring = scoring or ScoringState()

    def __repr__(self) -> str:
        return f"Speaker({type(self.encoder).__name__}, id {self.model_id}, {self.embed_dim}-d)"

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    @property
    def sample_rate(self) -> int:
        return self.encoder.sample_rate

    @property
    def max_input_seconds(self) -> float | None:
        """The longest input the encoder takes at once (longer ones are windowed)."""
        return getattr(self.encoder, "max_input_seconds", None)

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def model_id(self) -> str:
        """The encoder's content hash: equal ids give equal embeddings."""
        return self.encoder.model_id

    def embed_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, N) zero-padded waveforms at :attr:`sample_rate`, (B,) lengths -> (B, E)."""
        return self.encoder.embed_batch(waveforms, lengths)

    def save(self, directory: str | Path) -> Path:
        """Write the model directory (:meth:`SpeakerModel.save`) and its scoring state."""
        if not isinstance(self.encoder, SpeakerModel):
            raise ConfigError(
                f"a {type(self.encoder).__name__} is not a trained lapsv model: only models "
                "built from a config (SpeakerModel) are saved as model directories"
            )
        directory = self.encoder.save(directory)
        if self.scoring.cohort is not None:
            self.scoring.save(directory)
        return directory

    def embed(
        self,
        audio: AudioInput,
        *,
        sample_rate: int | None = None,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
    ) -> np.ndarray:
        """(E,) float32 raw embedding of one recording (score it with :meth:`similarity`).

        Args:
            audio: an audio file (wav, flac, ogg, ... any rate, stereo down-mixed), or
                samples (N,) / (N, channels).
            sample_rate: the array's rate (``None``: the model's, 16 kHz); resampled.
            max_seconds: recordings longer than this are embedded in windows whose
                embeddings are averaged (bounded memory, :func:`lapsv.inference.window_bounds`).
        """
        return self.embed_with_duration(audio, sample_rate=sample_rate, max_seconds=max_seconds)[0]

    def embed_with_duration(
        self,
        audio: AudioInput,
        *,
        sample_rate: int | None = None,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
    ) -> tuple[np.ndarray, float]:
        """(E,) raw embedding and duration in seconds of one recording (see :meth:`embed`)."""
        return embed_audio(
            self, audio, sample_rate=sample_rate, max_seconds=max_seconds, device=self.device
        )

    def similarity(
        self, e1: np.ndarray | torch.Tensor, e2: np.ndarray | torch.Tensor
    ) -> float | np.ndarray:
        """Cosine similarity of embeddings, after subtracting the model's training mean.

        (E,) and (E,) give a float; (N, E) and (M, E) give an (N, M) matrix.
        """
        a, b = (np.asarray(e.detach().cpu() if torch.is_tensor(e) else e) for e in (e1, e2))
        mean = self.scoring.mean
        scores = center_and_normalize(np.atleast_2d(a), mean=mean) @ (
            center_and_normalize(np.atleast_2d(b), mean=mean).T
        )
        if a.ndim == 1 and b.ndim == 1:
            return float(scores[0, 0])
        return scores

    def verify(
        self,
        a: AudioInput,
        b: AudioInput,
        *,
        sample_rate: int | None = None,
        threshold: float | None = None,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
    ) -> Verification:
        """Are two recordings (files or arrays) the same speaker?

        Returns the cosine score, AS-norm and calibrated LLR when the model has them, and
        the decision against ``threshold`` (default: LLR 0 when the model is calibrated;
        without calibration and threshold, ``same`` is None).
        """
        (ea, sa), (eb, sb) = (
            self.embed_with_duration(x, sample_rate=sample_rate, max_seconds=max_seconds)
            for x in (a, b)
        )
        return verify_embeddings(self.scoring, ea, eb, (sa, sb), threshold=threshold)


# Models usable by name with no training and no network.
BUILTIN_MODELS: dict[str, Callable[[], Encoder]] = {"ge2e": GE2EEncoder.from_pretrained}


def load_model(
    name_or_path: str | Path, *, device: str | torch.device = "cpu", trust_pickle: bool = False
) -> Speaker:
    """Load a speaker model in eval mode, with its scoring state (mean, cohort, QMF).

    Args:
        name_or_path: a built-in name (``"ge2e"``), a model directory written by
            :meth:`SpeakerModel.save`, a Hugging Face hub id holding such a directory, or a
            file written by ``lapsv export`` (``.onnx``, run with onnxruntime; TorchScript).
        device: where to put it (exported ONNX models run on the CPU).
        trust_pickle: allow pickle weights (``.pt`` / ``.bin`` / ``.ckpt`` checkpoints, with
            ``config.yaml`` beside them); without it they are refused, as unpickling runs any
            code the file carries. Hub ids only ever fetch safetensors.
    """
    name = str(name_or_path)
    if name in BUILTIN_MODELS:
        return Speaker(BUILTIN_MODELS[name]().to(device).eval())
    path = Path(name)
    if path.is_dir() or (path.is_file() and is_pickle_checkpoint(path)):
        return _load_directory(path, device, trust_pickle)
    if path.is_file() and path.suffix.lower() in EXPORTED_SUFFIXES:
        encoder = ExportedEncoder.load(path, device=device)
        return Speaker(encoder, ScoringState.from_metadata(encoder.metadata))
    if path.exists():
        raise ModelLoadError(
            f"{path}: a lapsv model is a directory holding {CONFIG_FILE} + {WEIGHTS_FILE}, "
            f"or a file from `lapsv export` ({', '.join(EXPORTED_SUFFIXES)})"
        )
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return _load_directory(_download(name), device, trust_pickle=False)
    raise ModelLoadError(
        f"{name}: no such model directory; built-in models: {', '.join(BUILTIN_MODELS)}"
    )


def _load_directory(path: Path, device: str | torch.device, trust_pickle: bool) -> Speaker:
    model = SpeakerModel.load(path, map_location=device, trust_pickle=trust_pickle)
    folder = path if path.is_dir() else path.parent
    return Speaker(model, ScoringState.load(folder))


def _download(repo_id: str) -> Path:
    import huggingface_hub  # a dependency of transformers; imported only for hub ids

    try:
        local = huggingface_hub.snapshot_download(repo_id, allow_patterns=list(HUB_FILES))
    except Exception as error:
        raise ModelLoadError(
            f"cannot download model '{repo_id}' ({error}); without network, copy the model "
            "directory here and pass its path"
        ) from error
    return Path(local)
