"""Mel spectrograms in PyTorch with a Slaney mel filterbank built in numpy (no librosa)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    linear = hz / (200.0 / 3.0)
    log_part = 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(hz >= 1000.0, log_part, linear)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    linear = mel * (200.0 / 3.0)
    log_part = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mel - 15.0))
    return np.where(mel >= 15.0, log_part, linear)


def mel_filterbank(
    sample_rate: int, n_fft: int, n_mels: int, fmin: float = 0.0, fmax: float | None = None
) -> np.ndarray:
    """Slaney-normalised triangular mel filters, (n_mels, n_fft // 2 + 1) float32.

    Each filter has unit area in Hz, as ``librosa.filters.mel`` with its defaults.

    >>> mel_filterbank(16000, 400, 40).shape
    (40, 201)
    """
    fmax = sample_rate / 2 if fmax is None else fmax
    fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    mel_points = np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2)
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    rising = -ramps[:-2] / widths[:-1, None]
    falling = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    return weights.astype(np.float32)


class MelSpectrogram(nn.Module):
    """Power mel spectrogram, centred frames, zero padding at the edges.

    With ``center=True`` a waveform of N samples gives ``1 + N // hop`` frames, and zero
    padding of a batch does not change the frames of a shorter item.

    Example:
        >>> mel = MelSpectrogram(16000, n_fft=400, hop=160, n_mels=40)
        >>> mel(torch.zeros(2, 16000)).shape
        torch.Size([2, 101, 40])
    """

    def __init__(self, sample_rate: int, *, n_fft: int, hop: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True), persistent=False)
        filters = torch.from_numpy(mel_filterbank(sample_rate, n_fft, n_mels))
        self.register_buffer("filters", filters, persistent=False)

    def frame_lengths(self, sample_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) samples -> (B,) frames."""
        return 1 + sample_lengths // self.hop

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, 1 + N // hop, n_mels) mel power."""
        spectrum = torch.stft(
            waveforms.float(),
            self.n_fft,
            hop_length=self.hop,
            window=self.window,
            center=True,
            pad_mode="constant",
            return_complex=True,
        )
        power = spectrum.real.pow(2) + spectrum.imag.pow(2)  # (B, F, T)
        return torch.matmul(self.filters, power).transpose(1, 2)
