"""What every frontend provides: all hidden layers of a speech encoder, with frame lengths."""

from __future__ import annotations

import abc
from typing import NamedTuple

import torch
from torch import nn

from lapsv.config import FrontendConfig


class FrontendOutput(NamedTuple):
    """hidden_states: (B, L, T, D) every layer; lengths: (B,) valid frames per item."""

    hidden_states: torch.Tensor
    lengths: torch.Tensor


class Frontend(nn.Module, abc.ABC):
    """A pre-trained speech encoder exposing its L hidden layers of width D.

    Subclasses set ``n_layers``, ``hidden_size``, ``sample_rate`` and, for an encoder with a
    longest input (Whisper: 30 s), ``max_input_seconds``; and they implement
    :meth:`frame_lengths`, :meth:`forward` and :meth:`config`. A frozen frontend has no
    trainable parameters and stays in eval mode whatever ``train()`` asks.
    """

    n_layers: int
    hidden_size: int
    sample_rate: int = 16_000
    max_input_seconds: float | None = None
    frozen: bool = True

    @abc.abstractmethod
    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) valid samples -> (B,) valid frames."""

    @abc.abstractmethod
    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> FrontendOutput:
        """(B, N) 16 kHz waveforms zero-padded, (B,) valid samples -> all hidden layers."""

    @abc.abstractmethod
    def config(self) -> FrontendConfig:
        """The resolved config that rebuilds this frontend's architecture."""

    @property
    def frames_per_second(self) -> float:
        """Hidden-state frames per second of audio (100 for GE2E, 50 for Transformers)."""
        minute = torch.tensor([60 * self.sample_rate])
        return float(self.frame_lengths(minute)[0]) / 60

    def set_frozen(self, frozen: bool) -> None:
        """Freeze (no gradients, eval mode) or unfreeze every parameter."""
        self.frozen = frozen
        for parameter in self.parameters():
            parameter.requires_grad_(not frozen)
        self.train(self.training)

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations in backward to save memory (Transformer frontends)."""

    def train(self, mode: bool = True) -> Frontend:
        super().train(mode and not self.frozen)
        return self
