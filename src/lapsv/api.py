"""The Python API every lapsv model has: embed a recording, verify two, compare embeddings.

::

    import lapsv
    model = lapsv.load_model("ge2e")               # or a model directory, hub id, .onnx file
    e = model.embed("alice.wav")                   # (E,) float32 numpy
    e = model.embed(samples, sample_rate=44100)    # (N,) or (N, channels) array, any rate
    model.similarity(e, model.embed("bob.wav"))    # cosine (training mean subtracted if known)
    result = model.verify("alice.wav", "bob.wav")  # scores + decision (LLR 0 when calibrated)

The tensor path of training and batch inference stays: ``model.embed(waveforms, lengths)``
with a (B, N) zero-padded batch and (B,) lengths returns a (B, E) tensor; its explicit name
is :meth:`SpeakerAPI.embed_batch`. ``embed`` tells the two apart by ``lengths``: given, it is
a batch; absent, one recording.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from lapsv.inference import DEFAULT_MAX_SECONDS, embed_audio

if TYPE_CHECKING:
    from lapsv.verification import ScoringState, Verification

AudioInput = str | Path | np.ndarray | torch.Tensor


class SpeakerAPI:
    """Mixin: the user-facing methods, on top of a batch ``embed_batch(waveforms, lengths)``.

    A class using it provides ``embed_dim``, ``sample_rate``, :meth:`embed_batch` and
    :attr:`model_id`; :attr:`scoring` (training mean, AS-norm cohort, QMF calibration) is
    set by the loader when the model has one.
    """

    embed_dim: int
    sample_rate: int

    def embed_batch(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, N) zero-padded waveforms at :attr:`sample_rate`, (B,) lengths -> (B, E)."""
        raise NotImplementedError

    @property
    def model_id(self) -> str:
        """A fingerprint of the weights: equal ids give equal embeddings."""
        raise NotImplementedError

    @property
    def scoring(self) -> ScoringState:
        """The scoring state loaded with the model (empty when it has none)."""
        from lapsv.verification import ScoringState

        return self.__dict__.get("_scoring") or ScoringState()

    @scoring.setter
    def scoring(self, state: ScoringState) -> None:
        self.__dict__["_scoring"] = state

    @property
    def device(self) -> torch.device:
        if isinstance(self, torch.nn.Module):
            for parameter in self.parameters():
                return parameter.device
        return torch.device("cpu")

    def embed(
        self,
        audio: AudioInput,
        lengths: torch.Tensor | None = None,
        *,
        sample_rate: int | None = None,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
    ) -> np.ndarray | torch.Tensor:
        """Embedding of one recording, or of a batch when ``lengths`` is given.

        Args:
            audio: an audio file (wav, flac, ogg, ... any rate, stereo down-mixed), or
                samples (N,) / (N, channels); or, with ``lengths``, a (B, N) tensor batch.
            lengths: (B,) valid samples of a zero-padded batch: returns a (B, E) tensor
                (the training / batch path, :meth:`embed_batch`).
            sample_rate: the array's rate (``None``: the model's, 16 kHz); resampled.
            max_seconds: recordings longer than this are embedded in windows whose
                embeddings are averaged (bounded memory, :func:`lapsv.inference.window_bounds`).

        Returns:
            (E,) float32 numpy raw embedding (score it with :meth:`similarity`).
        """
        if lengths is not None:
            if sample_rate is not None:
                raise TypeError("a (waveforms, lengths) batch must already be at sample_rate")
            return self.embed_batch(audio, lengths)
        vector, _ = embed_audio(
            self, audio, sample_rate=sample_rate, max_seconds=max_seconds, device=self.device
        )
        return vector

    def similarity(
        self, e1: np.ndarray | torch.Tensor, e2: np.ndarray | torch.Tensor
    ) -> float | np.ndarray:
        """Cosine similarity of embeddings, after subtracting the model's training mean.

        (E,) and (E,) give a float; (N, E) and (M, E) give an (N, M) matrix.
        """
        from lapsv.scoring.norm import center_and_normalize

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
        from lapsv.verification import verify_embeddings

        (ea, sa), (eb, sb) = (
            embed_audio(
                self, x, sample_rate=sample_rate, max_seconds=max_seconds, device=self.device
            )
            for x in (a, b)
        )
        return verify_embeddings(self.scoring, ea, eb, (sa, sb), threshold=threshold)


def state_fingerprint(module: torch.nn.Module, header: str = "") -> str:
    """16 hex digits of SHA-256 over ``header`` and every tensor (name, dtype, shape, bytes).

    Cached on the module until a tensor is replaced or changed in place (an optimizer step
    bumps the tensors' version counters), so asking again is cheap.
    """
    state = module.state_dict()
    key = (header, tuple((id(t), t._version) for t in state.values()))
    cached = module.__dict__.get("_lapsv_fingerprint")
    if cached is not None and cached[0] == key:
        return cached[1]
    digest = hashlib.sha256(header.encode())
    for name, tensor in state.items():
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy())
    module.__dict__["_lapsv_fingerprint"] = (key, digest.hexdigest()[:16])
    return module.__dict__["_lapsv_fingerprint"][1]
