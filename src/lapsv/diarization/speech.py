"""Finding the speech of a recording read as a stream of 16 kHz blocks (never whole).

:func:`find_speech` checks the samples, measures the level and runs Silero VAD in one or
two passes (:func:`scan_recording`), and returns a function that reads the recording again
(:func:`block_reader`) for the embedding pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lapsv.audio import SAMPLE_RATE, audio_duration, prepare_waveform, read_blocks
from lapsv.diarization.vad import (
    SileroVAD,
    VADOptions,
    input_gain,
    recording_levels,
    speech_regions,
)
from lapsv.errors import AudioError

BLOCK_SECONDS = 30.0  # audio read at a time (and Whisper's one encoder pass)
Progress = Callable[[str, float], None]  # (stage, seconds of the recording done)


def find_speech(
    audio: str | Path | np.ndarray,
    *,
    sample_rate: int | None = None,
    vad: SileroVAD | None = None,
    speech: np.ndarray | None = None,
    options: VADOptions | None = None,
    progress: Progress | None = None,
) -> tuple[Callable[[], Iterator[np.ndarray]], np.ndarray, int]:
    """One pass over a recording: (a function giving it again as 16 kHz blocks, (R, 2)
    speech regions in seconds, its length in samples). ``speech`` replaces the VAD.

    Raises:
        AudioError: the file cannot be read, has bad samples, or holds no speech.
    """
    source = str(audio) if isinstance(audio, str | Path) else "<array>"
    options = options or VADOptions()
    reader = block_reader(audio, sample_rate)
    vad = None if speech is not None else (vad or SileroVAD())  # oracle speech: no VAD
    probabilities, levels, n_samples = scan_recording(
        vad, reader, source, progress, options.max_gain
    )
    if vad is not None:
        regions = speech_regions(probabilities, n_samples, options, levels)
    else:
        regions = np.clip(np.asarray(speech, np.float64).reshape(-1, 2), 0, n_samples / SAMPLE_RATE)
        regions = regions[regions[:, 1] > regions[:, 0]]
    if not len(regions):
        raise AudioError(
            source,
            f"no speech found (Silero VAD at threshold {options.threshold}); "
            "a lower VAD threshold (`vad_threshold`) finds quieter speech",
        )
    return reader, regions, n_samples


def block_reader(audio: str | Path | np.ndarray, sample_rate: int | None) -> Callable[[], Iterator]:
    """A function giving the recording as a fresh stream of 16 kHz blocks."""
    block = int(BLOCK_SECONDS * SAMPLE_RATE)
    if isinstance(audio, str | Path):
        audio_duration(audio)  # AudioError now for a missing or undecodable file
        return lambda: read_blocks(audio, sample_rate=SAMPLE_RATE, block_samples=block)
    wave = prepare_waveform(audio, sample_rate or SAMPLE_RATE, min_seconds=0.0)
    return lambda: (wave[i : i + block] for i in range(0, len(wave), block))


def scan_recording(
    vad: SileroVAD | None,
    reader: Callable[[], Iterator],
    source: str,
    progress: Progress | None,
    max_gain: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, int]:
    """The recording's length, checked samples, and the VAD's per-frame speech
    probabilities and levels (none without a VAD). One pass; two with a ``max_gain`` (the
    first measures the level, :func:`~lapsv.diarization.vad.input_gain`)."""
    n_samples = 0

    def checked(report: bool) -> Iterator[np.ndarray]:
        nonlocal n_samples
        n_samples = 0
        for block in reader():
            if not np.isfinite(block).all():
                raise AudioError(source, "audio contains NaN or infinite samples")
            n_samples += len(block)
            if report and progress is not None:
                progress("speech", n_samples / SAMPLE_RATE)
            yield block

    try:
        if vad is None:
            probabilities = levels = np.zeros(0, np.float32)
            for _ in checked(report=True):  # the length and the sample checks only
                pass
        else:
            gain = 1.0
            if max_gain > 0:
                gain = input_gain(recording_levels(checked(report=False)), max_gain)
            probabilities, levels = vad.scan(checked(report=True), gain=gain)
    except (RuntimeError, OSError) as error:  # libsndfile failing mid-file
        raise AudioError(source, f"cannot decode audio ({error})") from error
    if n_samples == 0:
        raise AudioError(source, "empty audio (no samples)")
    return probabilities, levels, n_samples
