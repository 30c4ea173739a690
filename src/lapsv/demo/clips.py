"""Decode one selected file of a voice source and keep its speech, or say why not.

:func:`analyse_file` down-mixes, resamples and trims each file, and skips silent, too
short or steady-tone files; :func:`encoding` names how a file was encoded, part of the
recording group that :mod:`lapsv.demo.voice_check` compares.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import butter, sosfilt

from lapsv.audio import SAMPLE_RATE, resample
from lapsv.demo.voices import VoiceSource

FRAME, HOP = 400, 160  # 25 ms frames, 10 ms hop at 16 kHz
SILENT_DBFS = -50.0  # a file whose loudest frame is quieter holds no speech
ACTIVE_DB = 35.0  # frames within this many dB of the loudest frame are active
TRIM_MARGIN = 0.1  # seconds of silence kept around the active part
MIN_ACTIVE_SECONDS = 0.1


@dataclasses.dataclass
class Clip:
    """The speech of one file: trimmed 16 kHz mono waveform and where it came from."""

    source: int
    rel: str
    wave: np.ndarray
    offset: float  # seconds trimmed from the start of the file
    group: str
    file_hash: str
    audio_hash: str

    @property
    def seconds(self) -> float:
        return len(self.wave) / SAMPLE_RATE


@dataclasses.dataclass(frozen=True)
class Skip:
    """A selected file that is not used, and why."""

    source: int
    rel: str
    reason: str


def analyse_file(task: tuple[int, VoiceSource, str, str]) -> Clip | Skip:
    """Decode one file of a source and keep its speech, or say why it is not used.

    ``task`` is (source index, source, package tree, relative path). The file is
    down-mixed, resampled to 16 kHz and trimmed to its active part; files of another
    channel count or sample rate than the source asks for, undecodable, silent, too
    short or steady-tone files are skipped.
    """
    index, source, tree, rel = task
    path = Path(tree) / source.folder / rel

    def skip(reason: str) -> Skip:
        return Skip(index, rel, reason)

    try:
        info = soundfile.info(str(path))
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
        return skip(f"cannot decode ({error})")
    if source.channels is not None and info.channels != source.channels:
        return skip(f"{info.channels}-channel file: not this voice")
    if source.sample_rates and rate not in source.sample_rates:
        return skip(f"{rate} Hz file: not this voice")
    if len(data) == 0:
        return skip("empty (no samples)")
    wave = data.mean(axis=1)
    wave = resample(wave, rate, SAMPLE_RATE) if rate != SAMPLE_RATE else wave
    wave = np.clip(wave, -1.0, 1.0).astype(np.float32)
    active = _active_frames(wave)
    if active is None:
        return skip(f"silent (loudest frame below {SILENT_DBFS:.0f} dBFS)")
    first, last = active
    if (last - first) * HOP / SAMPLE_RATE < MIN_ACTIVE_SECONDS:
        return skip(f"too short (under {MIN_ACTIVE_SECONDS} s of sound)")
    margin = int(TRIM_MARGIN * SAMPLE_RATE)
    start = max(0, first * HOP - margin)
    trimmed = wave[start : min(len(wave), last * HOP + FRAME + margin)]
    if is_steady_tone(trimmed):
        return skip("steady tone (beep)")
    group = _group_name(source, rel, info, path)
    pcm = np.round(wave * 32767).astype(np.int16)
    return Clip(
        source=index,
        rel=rel,
        wave=trimmed,
        offset=start / SAMPLE_RATE,
        group=group,
        file_hash=hashlib.sha1(path.read_bytes()).hexdigest(),
        audio_hash=hashlib.sha1(pcm.tobytes()).hexdigest(),
    )


def _frame_db(wave: np.ndarray, frame: int = FRAME, hop: int = HOP) -> np.ndarray:
    if len(wave) < frame:
        wave = np.pad(wave, (0, frame - len(wave)))
    frames = np.lib.stride_tricks.sliding_window_view(wave, frame)[::hop]
    return 10 * np.log10((frames.astype(np.float64) ** 2).mean(axis=1) + 1e-12)


def _active_frames(wave: np.ndarray) -> tuple[int, int] | None:
    """First and last active frame, or None when the file is silent."""
    db = _frame_db(wave)
    loudest = float(db.max())
    if loudest < SILENT_DBFS:
        return None
    active = np.flatnonzero(db > loudest - ACTIVE_DB)
    return int(active[0]), int(active[-1])


def is_steady_tone(wave: np.ndarray, *, sample_rate: int = SAMPLE_RATE) -> bool:
    """True for a beep: one spectral peak holding the energy at one fixed frequency.

    Voices have several harmonics and a pitch that moves; a tone generator has neither.
    Measured on the loudest frames above 100 Hz: median share of the energy within
    +-3 bins of the peak (> 0.9) and median relative deviation of the peak frequency
    (< 0.3 %). Speech in the demo sources stays under one of the two limits.

    >>> t = np.arange(8000) / 16000
    >>> is_steady_tone(np.sin(2 * np.pi * 1000 * t)), is_steady_tone(np.random.randn(8000))
    (True, False)
    """
    n, pad = 1024, 4
    if len(wave) < n + HOP:
        return False
    middle = len(wave) // 2
    wave = wave[max(0, middle - 2 * sample_rate) : middle + 2 * sample_rate]  # 4 s suffice
    high = sosfilt(butter(4, 100, "highpass", fs=sample_rate, output="sos"), wave)
    frames = np.lib.stride_tricks.sliding_window_view(high, n)[::HOP]
    energy = (frames**2).mean(axis=1)
    frames = frames[energy > energy.max() * 0.01]  # the loudest 20 dB
    if len(frames) < 3:
        return False
    spectrum = np.abs(np.fft.rfft(frames * np.hanning(n), n=pad * n, axis=1)) ** 2
    peak = spectrum[:, 8:-8].argmax(axis=1) + 8
    bins = np.arange(spectrum.shape[1])
    near = np.abs(bins[None, :] - peak[:, None]) <= 3 * pad
    share = float(np.median((spectrum * near).sum(axis=1) / spectrum.sum(axis=1)))
    rows = np.arange(len(peak))
    a, b, c = (np.log(spectrum[rows, peak + k] + 1e-20) for k in (-1, 0, 1))
    frequency = peak + 0.5 * (a - c) / (a - 2 * b + c - 1e-20)
    deviation = float(np.median(np.abs(frequency - np.median(frequency))) / np.median(frequency))
    return share > 0.9 and deviation < 0.003


def _group_name(source: VoiceSource, rel: str, info, path: Path) -> str:
    """Recording group of a file: sub-group, channels, sample rate and encoder."""
    sub = ""
    if source.group_by:
        match = re.match(source.group_by, rel)
        sub = match.group(1) if match else ""
    layout = {1: "mono", 2: "stereo"}.get(info.channels, f"{info.channels}ch")
    fields = [source.package, sub or "-", layout, f"{info.samplerate} Hz", encoding(path, info)]
    return " | ".join(fields)


def encoding(path: Path, info) -> str:
    """How a file was encoded: Vorbis nominal bit rate and encoder, or the PCM format.

    Files of one label made with another encoder or bit rate were often recorded by
    someone else, so the voice check compares such groups.
    """
    if info.format != "OGG":
        return f"{info.format} {info.subtype}"
    with open(path, "rb") as handle:
        head = handle.read(16384)
    ident = head.find(b"\x01vorbis")
    if ident >= 0 and len(head) >= ident + 28:
        nominal = int.from_bytes(head[ident + 20 : ident + 24], "little", signed=True)
        vendor = _vendor(head, b"\x03vorbis")
        return f"vorbis {max(nominal, 0) // 1000} kb/s, {vendor}"
    return f"{info.subtype.lower()}, {_vendor(head, b'OpusTags')}"


def _vendor(head: bytes, marker: bytes) -> str:
    at = head.find(marker)
    if at < 0:
        return "unknown encoder"
    start = at + len(marker) + 4
    length = int.from_bytes(head[at + len(marker) : start], "little")
    return head[start : start + min(length, 80)].decode("utf-8", "replace").strip()
