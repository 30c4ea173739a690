"""Audio input: load, validate, down-mix, resample and batch waveforms.

Every model in lapsv consumes 16 kHz mono float32 waveforms. These functions turn files
(anything libsndfile reads: wav, flac, ogg, ...) or arrays at any sample rate into that,
and reject unusable audio with an :class:`~lapsv.errors.AudioError` naming the source.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly

from lapsv.errors import AudioError

SAMPLE_RATE = 16_000
MIN_SECONDS = 0.3
SILENCE_PEAK = 1e-4  # -80 dBFS
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the file header, without decoding the audio."""
    source = str(path)
    if not Path(path).is_file():
        raise AudioError(source, "no such file")
    try:
        return float(soundfile.info(source).duration)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioError(
            source, f"cannot decode audio ({error}); is it a wav/flac/ogg file?"
        ) from error


def load_audio(
    path: str | Path,
    *,
    sample_rate: int = SAMPLE_RATE,
    min_seconds: float = MIN_SECONDS,
) -> np.ndarray:
    """Read an audio file as a mono float32 waveform at ``sample_rate``.

    Args:
        path: any format libsndfile reads (wav, flac, ogg, ...).
        sample_rate: target rate; other rates are resampled.
        min_seconds: shorter audio raises AudioError.

    Returns:
        waveform: (N,) float32.

    >>> import tempfile, soundfile
    >>> path = tempfile.mktemp(suffix=".wav")
    >>> soundfile.write(path, np.random.default_rng(0).normal(0, 0.1, (8000, 2)), 8000)
    >>> load_audio(path).shape  # 1 s of stereo 8 kHz -> 16 kHz mono
    (16000,)
    """
    source = str(path)
    if not Path(path).is_file():
        raise AudioError(source, "no such file")
    try:
        data, rate = soundfile.read(source, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
        raise AudioError(
            source, f"cannot decode audio ({error}); is it a wav/flac/ogg file?"
        ) from error
    return prepare_waveform(
        data, rate, source=source, sample_rate=sample_rate, min_seconds=min_seconds
    )


def prepare_waveform(
    waveform: np.ndarray | torch.Tensor,
    source_rate: int,
    *,
    source: str = "<array>",
    sample_rate: int = SAMPLE_RATE,
    min_seconds: float = MIN_SECONDS,
) -> np.ndarray:
    """Validate an in-memory waveform, down-mix it to mono and resample it.

    Args:
        waveform: (N,) or (N, channels) samples, float in [-1, 1] or integer PCM.
        source_rate: its sample rate in Hz.
        source: name used in error messages.

    Returns:
        waveform: (M,) float32 at ``sample_rate``.
    """
    data = waveform.detach().cpu().numpy() if isinstance(waveform, torch.Tensor) else waveform
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    data = data.astype(np.float32, copy=False)
    if data.ndim == 2:
        data = data.mean(axis=1, dtype=np.float32)
    elif data.ndim != 1:
        raise AudioError(source, f"expected (samples,) or (samples, channels), got {data.shape}")
    if not isinstance(source_rate, int | np.integer) or not 1_000 <= source_rate <= 1_000_000:
        raise AudioError(source, f"implausible sample rate {source_rate!r} Hz")
    if data.size == 0:
        raise AudioError(source, "empty audio (no samples)")
    if not np.isfinite(data).all():
        raise AudioError(source, "audio contains NaN or infinite samples")
    if source_rate != sample_rate:
        data = resample(data, source_rate, sample_rate)
    seconds = data.size / sample_rate
    if seconds < min_seconds:
        raise AudioError(
            source, f"too short: {seconds:.2f} s, the minimum is {min_seconds:.2f} s of speech"
        )
    if float(np.abs(data).max()) < SILENCE_PEAK:
        raise AudioError(source, "silent audio (peak below -80 dBFS)")
    return data


def resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling of a (N,) float32 waveform."""
    divisor = math.gcd(int(source_rate), int(target_rate))
    up, down = target_rate // divisor, source_rate // divisor
    return resample_poly(waveform, up, down).astype(np.float32)


def pad_batch(waveforms: Sequence[np.ndarray | torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D waveforms into a batch.

    Returns:
        waveforms: (B, N_max) float32; lengths: (B,) int64 valid samples per item.

    >>> batch, lengths = pad_batch([np.ones(3), np.ones(5)])
    >>> batch.shape, lengths.tolist()
    (torch.Size([2, 5]), [3, 5])
    """
    tensors = [torch.as_tensor(np.asarray(w, dtype=np.float32)) for w in waveforms]
    lengths = torch.tensor([t.numel() for t in tensors], dtype=torch.long)
    batch = torch.zeros(len(tensors), int(lengths.max()) if tensors else 0)
    for row, tensor in enumerate(tensors):
        batch[row, : tensor.numel()] = tensor
    return batch, lengths
