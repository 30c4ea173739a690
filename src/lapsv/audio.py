"""Audio input: load, validate, down-mix, resample and batch waveforms.

Every model in lapsv consumes 16 kHz mono float32 waveforms. These functions turn files
(anything libsndfile reads: wav, flac, ogg, ...) or arrays at any sample rate into that,
and reject unusable audio with an :class:`~lapsv.errors.AudioError` naming the source.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile
import torch
from scipy.signal import resample_poly

from lapsv.errors import AudioError

SAMPLE_RATE = 16_000
MIN_SECONDS = 0.3
MAX_SECONDS = 3600.0  # longer files are refused before decoding: memory stays bounded
MIN_RATE, MAX_RATE = 1_000, 1_000_000  # plausible sample rates (Hz)
MAX_AMPLITUDE = 1e5  # float samples beyond this are not audio (int16-scaled floats pass)
SILENCE_PEAK = 1e-4  # -80 dBFS
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aiff", ".aif", ".au")
BLOCK_SAMPLES = 1 << 20  # samples (all channels) decoded at a time
MAX_RESAMPLE_DENOMINATOR = 1000  # bounds the polyphase filter for odd sample rates
RESAMPLE_MARGIN_TAPS = 10  # scipy.signal.resample_poly's filter half-length per max(up, down)

# What libsndfile and soundfile raise on files they cannot read (all become AudioError).
_DECODE_ERRORS = (
    soundfile.LibsndfileError,
    RuntimeError,
    ValueError,
    TypeError,
    OverflowError,
    EOFError,
    OSError,
)


def _check_rate(source: str, rate: object) -> None:
    if not isinstance(rate, int | np.integer) or not MIN_RATE <= rate <= MAX_RATE:
        raise AudioError(source, f"implausible sample rate {rate!r} Hz")


def _decode_error(source: str, error: BaseException) -> AudioError:
    if isinstance(error, PermissionError):
        return AudioError(source, f"cannot read the file ({error.strerror})")
    return AudioError(source, f"cannot decode audio ({error}); is it a wav/flac/ogg file?")


def audio_duration(path: str | Path) -> float:
    """Duration in seconds from the file header, without decoding the audio."""
    source = str(path)
    if not Path(path).is_file():
        raise AudioError(source, "no such file")
    try:
        info = soundfile.info(source)
    except _DECODE_ERRORS as error:
        raise _decode_error(source, error) from error
    _check_rate(source, info.samplerate)
    return float(info.frames) / float(info.samplerate)


def load_audio(
    path: str | Path,
    *,
    sample_rate: int = SAMPLE_RATE,
    min_seconds: float = MIN_SECONDS,
    max_seconds: float | None = MAX_SECONDS,
) -> np.ndarray:
    """Read an audio file as a mono float32 waveform at ``sample_rate``.

    The file is decoded block by block and down-mixed as it is read, so memory holds one
    mono copy of the audio, whatever its number of channels; a file longer than
    ``max_seconds`` (by its header, or by what it turns out to hold) is refused without
    decoding the rest.

    Args:
        path: any format libsndfile reads (wav, flac, ogg, ...).
        sample_rate: target rate; other rates are resampled.
        min_seconds: shorter audio raises AudioError.
        max_seconds: longer audio raises AudioError; ``None``: no limit.

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
        with soundfile.SoundFile(source) as handle:
            rate = handle.samplerate
            _check_rate(source, rate)
            limit = None if max_seconds is None else int(max_seconds * rate)
            if limit is not None and handle.frames > limit:
                raise AudioError(source, _too_long(handle.frames / rate, max_seconds))
            data = _read_mono(handle, source, limit, max_seconds)
    except AudioError:
        raise
    except _DECODE_ERRORS as error:
        raise _decode_error(source, error) from error
    return prepare_waveform(
        data, rate, source=source, sample_rate=sample_rate, min_seconds=min_seconds
    )


def _too_long(seconds: float, max_seconds: float | None) -> str:
    return (
        f"too long: {seconds:.0f} s, the limit is {max_seconds:.0f} s; split the recording "
        "(a speaker embedding needs seconds to minutes of speech)"
    )


def _read_mono(
    handle: soundfile.SoundFile, source: str, limit: int | None, max_seconds: float | None
) -> np.ndarray:
    """Decode ``handle`` block by block into one mono float32 array (channel mean)."""
    frames = max(int(handle.frames), 0)
    out = np.empty(frames, dtype=np.float32)
    extra: list[np.ndarray] = []  # frames beyond what the header announced
    filled = 0
    block = max(BLOCK_SAMPLES // max(handle.channels, 1), 1)
    while True:
        chunk = handle.read(block, dtype="float32", always_2d=True)
        if len(chunk) == 0:
            break
        mono = chunk[:, 0] if chunk.shape[1] == 1 else chunk.mean(axis=1, dtype=np.float32)
        room = min(len(mono), frames - filled)
        out[filled : filled + room] = mono[:room]
        filled += room
        if room < len(mono):
            extra.append(mono[room:].copy())
        total = filled + sum(len(e) for e in extra)
        if limit is not None and total > limit:
            raise AudioError(source, _too_long(total / handle.samplerate, max_seconds))
    if extra:
        return np.concatenate([out[:filled], *extra])
    return out[:filled]


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
    try:
        data = np.asarray(data)
    except (ValueError, TypeError) as error:  # ragged nested sequences
        raise AudioError(source, f"not an array of samples ({error})") from error
    if data.dtype.kind not in "iuf":
        raise AudioError(source, f"samples of type {data.dtype} are not audio")
    if data.dtype.kind == "u":  # unsigned PCM is offset binary: the midpoint is silence
        half = float(np.iinfo(data.dtype).max // 2 + 1)
        data = ((data.astype(np.float64) - half) / half).astype(np.float32)
    elif data.dtype.kind == "i":
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    if data.ndim not in (1, 2):
        raise AudioError(source, f"expected (samples,) or (samples, channels), got {data.shape}")
    _check_rate(source, source_rate)
    if data.size == 0:
        raise AudioError(source, "empty audio (no samples)")
    if not np.isfinite(data).all():
        raise AudioError(source, "audio contains NaN or infinite samples")
    peak = float(np.abs(data).max())
    if peak > MAX_AMPLITUDE:
        raise AudioError(
            source, f"sample values reach {peak:.3g}: not audio (float samples lie in [-1, 1])"
        )
    data = data.astype(np.float32, copy=False)
    if data.ndim == 2:
        data = data.mean(axis=1, dtype=np.float32)
    if source_rate != sample_rate:
        data = resample(data, int(source_rate), sample_rate)
    seconds = data.size / sample_rate
    if seconds < min_seconds:
        raise AudioError(
            source, f"too short: {seconds:.2f} s, the minimum is {min_seconds:.2f} s of speech"
        )
    if float(np.abs(data).max()) < SILENCE_PEAK:
        raise AudioError(source, "silent audio (peak below -80 dBFS)")
    return data


def resample(waveform: np.ndarray, source_rate: int, target_rate: int) -> np.ndarray:
    """Polyphase resampling of a (N,) float32 waveform.

    The rate ratio is exact for every common rate; for odd rates (say 44,101 Hz) it is
    approximated by a fraction with a denominator of at most 1000 (a pitch error below
    0.1 %, a hundredth of a semitone), so the polyphase filter stays small.

    >>> len(resample(np.ones(44101, dtype=np.float32), 44101, 16000))  # 1 s at 44,101 Hz
    16001
    """
    ratio = Fraction(int(target_rate), int(source_rate))
    if ratio.denominator > MAX_RESAMPLE_DENOMINATOR:
        ratio = ratio.limit_denominator(MAX_RESAMPLE_DENOMINATOR)
    up, down = ratio.numerator, ratio.denominator
    return resample_poly(waveform, up, down).astype(np.float32)


def read_blocks(
    path: str | Path, *, sample_rate: int = SAMPLE_RATE, block_samples: int
) -> Iterator[np.ndarray]:
    """Yield a file as consecutive mono float32 blocks at ``sample_rate``, one read at a time.

    The file is cut into the fewest equal blocks of at most ``block_samples`` (as
    :func:`lapsv.inference.window_bounds` cuts it), so memory holds one block, whatever the
    file's length. Block edges fall on the resampling grid (multiples of the rate ratio's
    denominator in source samples), and each block is read with a margin wider than the
    resampling filter, so the blocks join into what resampling the whole file gives.
    """
    with soundfile.SoundFile(str(path)) as handle:
        rate, frames = handle.samplerate, handle.frames
        ratio = Fraction(sample_rate, rate)
        if ratio.denominator > MAX_RESAMPLE_DENOMINATOR:  # odd rates, as lapsv.audio.resample
            ratio = ratio.limit_denominator(MAX_RESAMPLE_DENOMINATOR)
        up, down = ratio.numerator, ratio.denominator
        units = -(-frames // down)  # resampling grid steps (the last one may be partial)
        per_window = max(1, block_samples // up)
        count = -(-units // per_window)
        edges = [i * units // count for i in range(count + 1)]
        margin = 0 if up == down else -(-RESAMPLE_MARGIN_TAPS * max(up, down) // (up * down)) + 2
        total = -(-frames * up // down)
        for u0, u1 in itertools.pairwise(edges):
            lo, hi = max(0, u0 - margin), min(units, u1 + margin)
            handle.seek(lo * down)
            data = handle.read(min(hi * down, frames) - lo * down, dtype="float32", always_2d=True)
            wave = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
            if up != down:
                wave = resample_poly(wave, up, down).astype(np.float32)
            start = (u0 - lo) * up
            yield wave[start : start + min(u1 * up, total) - u0 * up]


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
