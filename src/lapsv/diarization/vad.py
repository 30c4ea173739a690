"""Speech activity detection with Silero VAD (MIT), run with onnxruntime.

The ONNX model ships inside the ``silero-vad`` wheel (``make install`` installs it); lapsv
never downloads it. The model is a small recurrent network that reads 16 kHz audio in
frames of 512 samples (32 ms), each with the last 64 samples of the frame before as
context, and carries a (2, 1, 128) state from frame to frame. :class:`SileroVAD` streams
blocks of any length through it, so a recording of any length is scored in bounded
memory; the speech probabilities (one float per 32 ms) are then turned into regions by
Silero's own post-processing (``get_speech_timestamps_from_probs``: hysteresis between
``threshold`` and ``threshold - 0.15``, minimum speech and silence, padding).

Silero calls any voice speech, a quiet voice in the background too (babble, a television,
a game's sound effects). Two optional gates take back frames before the post-processing:
the energy gate those much quieter than the recording's own loud speech (the 95th
percentile level of the frames it calls speech), the floor gate those near the
recording's background level (babble is continuous, so it sets that level). On
conversations of the demo's training and validation voices (noise, babble and music at
5-20 dB SNR, collar ±0.25 s), missed + false-alarm speech was 27.1 / 39.2 % with neither
gate, 11.2 / 11.3 % with a 15 dB energy gate, and 6.3 / 7.3 % with a 20 dB energy gate and
a floor gate of 0.3 (threshold 0.3, minimum silence 0.25 s, padding 0.03 s). Once each
voice was mixed at a level within 8 dB of the others (the conversations' FORMAT 4), a
floor gate of 0.35 gave the lowest DER on the validation conversations.

Silero also misses quiet speech, so :func:`input_gain` amplifies a recording (by at most
``max_gain`` dB) until its loud frames reach full scale; with 20 dB, missed speech on
those conversations fell from 6.2 to 3.3 %.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
from collections.abc import Iterable, Iterator

import numpy as np
import torch

from lapsv.errors import ConfigError, LapsvError

SAMPLE_RATE = 16_000
FRAME = 512  # samples per VAD frame at 16 kHz (32 ms)
CONTEXT = 64  # samples of the previous frame fed with each frame
MODEL_FILE = "silero_vad.onnx"
LOUD_PERCENTILE = 95  # the level of a recording's loud frames (input gain, energy gate)
FLOOR_PERCENTILE = 20  # the level of a recording's background (floor gate)
DIGITAL_SILENCE_DB = -100.0  # frames below this are zeros, not background


class VADError(LapsvError, RuntimeError):
    """The VAD model cannot be loaded; the message says how to install it."""


@dataclasses.dataclass(frozen=True)
class VADOptions:
    """Silero VAD post-processing (its own defaults, in seconds).

    threshold: speech probability above which a frame starts speech.
    min_speech: speech regions shorter than this are dropped.
    min_silence: silences shorter than this inside speech are bridged.
    speech_pad: each region is widened by this on both sides.
    energy_gate: frames more than this many dB quieter than the recording's loud speech
        are not speech (None: no gate).
    floor_gate: frames below this share of the way, in dB, from the recording's
        background level (the 20th percentile of its frame levels) up to its loud speech
        are not speech (0: no gate). Silero calls background voices speech; babble 10 dB
        under the talkers sits near that floor.
    max_gain: the recording is amplified, by at most this many dB, so that its loud
        frames reach full scale before Silero reads it (0: as recorded). Silero misses
        quiet speech: a reverberant validation conversation at -24 dBFS had 0.7 % of its
        frames above 0.5, and 31 % when 9.5 dB louder.
    """

    threshold: float = 0.5
    min_speech: float = 0.25
    min_silence: float = 0.1
    speech_pad: float = 0.03
    energy_gate: float | None = None
    floor_gate: float = 0.0
    max_gain: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError(f"vad_threshold must lie in (0, 1), got {self.threshold}")
        if not self.max_gain >= 0.0:
            raise ConfigError(f"max_gain must be >= 0 dB, got {self.max_gain}")
        for name in ("min_speech", "min_silence", "speech_pad"):
            if not getattr(self, name) >= 0.0:
                raise ConfigError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")
        if not 0.0 <= self.floor_gate < 1.0:
            raise ConfigError(f"floor_gate must lie in [0, 1), got {self.floor_gate}")
        if self.energy_gate is not None and not self.energy_gate > 0.0:
            raise ConfigError(f"energy_gate must be > 0 dB (or none), got {self.energy_gate}")


def _session():
    import onnxruntime  # lapsv's export extra; imported here to keep `import lapsv` fast

    threads = torch.get_num_threads()
    try:
        model = importlib.resources.files("silero_vad") / "data" / MODEL_FILE
    except ModuleNotFoundError:
        raise VADError(
            "speech detection needs the silero-vad package (its ONNX model): "
            "pip install silero-vad==6.2.3 (make install does)"
        ) from None
    finally:  # importing silero_vad sets torch to one thread for the whole process
        torch.set_num_threads(threads)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # a 32 ms frame is too small to split across threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # the model's unused initialisers warn at load time
    return onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


class SileroVAD:
    """Streaming Silero VAD: feed 16 kHz blocks, read back per-frame speech probabilities.

    >>> vad = SileroVAD()
    >>> vad.probabilities([np.zeros(16_000, np.float32)]).shape  # 1 s -> 32 frames
    (32,)
    """

    def __init__(self) -> None:
        self.session = _session()

    def probabilities(self, blocks: Iterable[np.ndarray]) -> np.ndarray:
        """(F,) speech probability of each 32 ms frame of the blocks joined end to end.

        The last frame is zero-padded, as Silero's ``get_speech_timestamps`` pads it.
        """
        return self.scan(blocks)[0]

    def scan(
        self, blocks: Iterable[np.ndarray], *, gain: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(F,) speech probabilities and (F,) levels (dB, mean square) of the 32 ms frames
        of the blocks joined end to end, times ``gain``, in one pass."""
        state = np.zeros((2, 1, 128), np.float32)
        rate = np.array(SAMPLE_RATE, np.int64)
        previous = np.zeros(CONTEXT, np.float32)
        out: list[float] = []
        levels: list[np.ndarray] = []
        for samples in _whole_frames(blocks):
            samples = samples * np.float32(gain) if gain != 1.0 else samples
            previous, state = self._frames(samples, previous, state, rate, out)
            levels.append(frame_levels(samples))
        return np.asarray(out, np.float32), np.concatenate([np.zeros(0), *levels])

    def _frames(self, samples, previous, state, rate, out):
        for start in range(0, len(samples), FRAME):
            frame = samples[start : start + FRAME]
            x = np.concatenate([previous, frame])[None, :]
            probability, state = self.session.run(None, {"input": x, "state": state, "sr": rate})
            out.append(float(probability[0, 0]))
            previous = frame[-CONTEXT:]
        return previous, state


def _whole_frames(blocks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """The blocks joined end to end, as runs of whole 512-sample frames (float32); the
    last frame zero-padded, as Silero's ``get_speech_timestamps`` pads it."""
    pending = np.zeros(0, np.float32)
    for block in blocks:
        pending = np.concatenate([pending, np.asarray(block, np.float32)])
        usable = len(pending) - len(pending) % FRAME
        if usable:
            yield pending[:usable]
        pending = pending[usable:]
    if len(pending):
        frame = np.zeros(FRAME, np.float32)
        frame[: len(pending)] = pending
        yield frame


def recording_levels(blocks: Iterable[np.ndarray]) -> np.ndarray:
    """(F,) levels (dB, mean square) of the 32 ms frames of the blocks joined end to end."""
    return np.concatenate([np.zeros(0), *(frame_levels(f) for f in _whole_frames(blocks))])


def input_gain(levels: np.ndarray, max_gain: float) -> float:
    """The linear gain that brings a recording's loud frames (the 95th percentile of its
    frame ``levels``, dB) to full scale (0 dBFS), at most ``max_gain`` dB and never below
    1; 1 when ``max_gain`` is 0.

    >>> round(input_gain(np.array([-40.0, -12.0]), 20.0), 2)  # 95th percentile: -13.4 dB
    4.68
    >>> input_gain(np.array([-90.0]), 20.0), input_gain(np.array([-30.0]), 0.0)
    (10.0, 1.0)
    """
    if max_gain <= 0 or not len(levels):
        return 1.0
    loud = float(np.percentile(levels, LOUD_PERCENTILE))
    return float(10 ** (min(max(-loud, 0.0), max_gain) / 20))


def frame_levels(samples: np.ndarray) -> np.ndarray:
    """(N,) samples, N a multiple of 512 -> (N / 512,) frame levels in dB (mean square)."""
    frames = np.asarray(samples, np.float64).reshape(-1, FRAME)
    return 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)


def gate_quiet_frames(
    probabilities: np.ndarray, levels: np.ndarray, options: VADOptions
) -> np.ndarray:
    """The probabilities with the quiet frames set to 0: those more than
    ``options.energy_gate`` dB below the recording's loud speech (the 95th percentile
    level of its frames above the threshold), and those below ``options.floor_gate`` of
    the way from its background (the 20th percentile level of its non-zero frames) up to
    that loud speech. Unchanged without gates or without frames above the threshold.

    >>> p, levels = np.array([0.9, 0.9, 0.9, 0.1]), np.array([-20.0, -22.0, -50.0, -20.0])
    >>> gate_quiet_frames(p, levels, VADOptions(energy_gate=15.0)).tolist()
    [0.9, 0.9, 0.0, 0.1]
    >>> babble = np.array([-30.0] * 6 + [-20.0] * 4)  # background voices 10 dB down
    >>> gate_quiet_frames(np.full(10, 0.9), babble, VADOptions(floor_gate=0.3)).tolist()
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.9, 0.9, 0.9, 0.9]
    """
    speech = probabilities > options.threshold
    if (options.energy_gate is None and not options.floor_gate) or not speech.any():
        return probabilities
    loud = np.percentile(levels[speech], LOUD_PERCENTILE)
    cut = -np.inf if options.energy_gate is None else loud - options.energy_gate
    sounding = levels[levels > DIGITAL_SILENCE_DB]
    if options.floor_gate and len(sounding):
        floor = np.percentile(sounding, FLOOR_PERCENTILE)
        cut = max(cut, floor + options.floor_gate * (loud - floor))
    return np.where(levels < cut, 0.0, probabilities)


def speech_regions(
    probabilities: np.ndarray,
    n_samples: int,
    options: VADOptions = VADOptions(),
    levels: np.ndarray | None = None,
) -> np.ndarray:
    """(R, 2) speech [start, end) seconds from per-frame probabilities (Silero's rules),
    after the energy gate when ``options`` has one and the frame ``levels`` are given.

    >>> speech_regions(np.r_[np.zeros(20), np.ones(40), np.zeros(20)], 80 * FRAME).round(2)
    array([[0.61, 1.95]])
    """
    # Silero's own post-processing; imported here, as the optional package imports torch
    from silero_vad.utils_vad import get_speech_timestamps_from_probs

    if levels is not None:
        probabilities = gate_quiet_frames(probabilities, levels, options)
    stamps = get_speech_timestamps_from_probs(
        [float(p) for p in probabilities],
        sampling_rate=SAMPLE_RATE,
        threshold=options.threshold,
        min_speech_duration_ms=round(options.min_speech * 1000),
        min_silence_duration_ms=round(options.min_silence * 1000),
        speech_pad_ms=round(options.speech_pad * 1000),
        audio_length_samples=int(n_samples),
    )
    regions = np.array([[s["start"], s["end"]] for s in stamps], np.float64).reshape(-1, 2)
    return regions / SAMPLE_RATE
