"""Audio fuzzing: whatever bytes or samples come in, the audio loader and embedding give a
typed error (AudioError) or a valid, finite result; never a crash, never unbounded memory.

Example counts are modest and derandomized so that the default test run stays fast and
reproducible; ``LAPSV_FUZZ_EXAMPLES=500`` runs 500 fresh random examples per property.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

import lapsv
from lapsv.audio import MIN_SECONDS, SAMPLE_RATE, load_audio, prepare_waveform
from lapsv.errors import AudioError
from lapsv.inference import extract_embeddings

EXAMPLES = int(os.environ.get("LAPSV_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=EXAMPLES or 25,
    deadline=None,
    derandomize=not EXAMPLES,  # a longer run asked for explores new examples each time
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def ge2e():
    return lapsv.load_model("ge2e")


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def voice(seconds: float, rate: int = SAMPLE_RATE, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 150 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return np.repeat(wave[:, None], channels, axis=1) * np.linspace(1.0, 0.5, channels)


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


VALID_WAV = wav_bytes(voice(0.5))


def check_file(path: Path, model) -> str:
    """Load and embed ``path``: a typed error or a valid result, nothing else.

    Returns "error" or "ok".
    """
    failure: AudioError | None = None
    try:
        wave = load_audio(path)
    except AudioError as error:  # the typed error; any other exception fails the test
        failure = error
    if failure is not None:
        assert failure.reason and str(path) in str(failure)
    else:
        assert wave.dtype == np.float32 and wave.ndim == 1
        assert np.isfinite(wave).all() and len(wave) >= MIN_SECONDS * SAMPLE_RATE
    loaded = failure is None
    result = extract_embeddings(model, [("item", path)])
    if result.failures:
        assert result.ids == () and result.failures[0][0] == "item"
        assert isinstance(result.failures[0][1], str) and result.failures[0][1]
        return "error"
    assert result.ids == ("item",) and result.embeddings.shape == (1, model.embed_dim)
    assert np.isfinite(result.embeddings).all()
    assert loaded  # whatever embeds also loads
    return "ok"


def write(scratch: Path, data: bytes, name: str = "fuzz.wav") -> Path:
    path = scratch / name
    path.write_bytes(data)
    return path


@FUZZ
@given(data=st.binary(max_size=4096), riff=st.booleans())
def test_random_bytes(scratch, ge2e, data, riff):
    prefix = VALID_WAV[:12] if riff else b""  # "RIFF....WAVE": reach the chunk parser
    check_file(write(scratch, prefix + data), ge2e)


@FUZZ
@given(cut=st.integers(0, len(VALID_WAV)))
def test_truncated_wav(scratch, ge2e, cut):
    check_file(write(scratch, VALID_WAV[:cut]), ge2e)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 43), st.integers(0, 255)), min_size=1, max_size=6))
def test_corrupted_wav_header(scratch, ge2e, edits):
    data = bytearray(VALID_WAV)
    for position, value in edits:
        data[position] = value
    check_file(write(scratch, bytes(data)), ge2e)


@FUZZ
@given(rate=st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 1, 999, 1_000_001])))
def test_absurd_sample_rates_in_the_header(scratch, ge2e, rate):
    data = bytearray(VALID_WAV)
    data[24:28] = struct.pack("<I", rate)  # fmt chunk: sample rate
    data[28:32] = struct.pack("<I", (rate * 2) % 2**32)  # byte rate
    outcome = check_file(write(scratch, bytes(data)), ge2e)
    if not 1_000 <= rate <= 1_000_000:
        assert outcome == "error"


@FUZZ
@given(
    samples=arrays(
        np.float32,
        st.integers(0, 24_000),
        elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
    )
)
def test_arbitrary_float_samples(scratch, ge2e, samples):
    """NaN, inf, huge, denormal, silent, empty: float WAV files hold any float."""
    outcome = check_file(write(scratch, wav_bytes(samples, subtype="FLOAT")), ge2e)
    if not np.isfinite(samples).all():
        assert outcome == "error"


@FUZZ
@given(
    channels=st.integers(1, 8),
    rate=st.sampled_from([8_000, 11_025, 16_000, 22_050, 44_100, 48_000, 96_000, 44_101]),
    seconds=st.floats(0.0, 1.5),
)
def test_any_channel_count_and_rate(scratch, ge2e, channels, rate, seconds):
    outcome = check_file(write(scratch, wav_bytes(voice(seconds, rate, channels), rate)), ge2e)
    if seconds >= MIN_SECONDS + 0.01:
        assert outcome == "ok"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        VALID_WAV[:44],  # a header and no samples
        wav_bytes(np.zeros((0, 1))),
        wav_bytes(np.zeros((0, 8))),
        wav_bytes(np.zeros(16000)),  # silence
        wav_bytes(np.full(16000, np.nan, dtype=np.float32), subtype="FLOAT"),
        wav_bytes(np.full(16000, np.inf, dtype=np.float32), subtype="FLOAT"),
        wav_bytes(np.full(16000, 3e38, dtype=np.float32), subtype="FLOAT"),
    ],
    ids=[
        "empty-file",
        "header-only",
        "zero-frames",
        "zero-frames-8ch",
        "silent",
        "nan",
        "inf",
        "huge",
    ],
)
def test_degenerate_files_are_typed_errors(scratch, ge2e, data):
    assert check_file(write(scratch, data), ge2e) == "error"


@FUZZ
@given(
    samples=arrays(
        st.sampled_from([np.float32, np.float64, np.int16, np.int32, np.uint8, np.int8, bool]),
        st.one_of(
            array_shapes(min_dims=0, max_dims=1, max_side=20_000),
            array_shapes(min_dims=2, max_dims=3, max_side=40),
        ),
    ),
    rate=st.one_of(st.integers(-10, 2_000_000), st.sampled_from([16_000, 8_000, 44_100])),
)
def test_prepare_waveform_of_any_array(samples, rate):
    try:
        wave = prepare_waveform(samples, rate)
    except AudioError:
        return
    assert wave.dtype == np.float32 and wave.ndim == 1 and np.isfinite(wave).all()


def load_with_peak_memory(path: Path) -> tuple[np.ndarray, int]:
    """load_audio(path) and the peak bytes Python allocated while it ran (tracemalloc)."""
    tracemalloc.start()
    try:
        wave = load_audio(path)
        return wave, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_decoding_memory_is_one_mono_copy_whatever_the_channels(scratch):
    """8 channels of 48 kHz for a minute: the loader never holds all channels at once."""
    path = scratch / "eight.flac"
    soundfile.write(path, voice(60.0, 48_000, 8).astype(np.float32), 48_000, subtype="PCM_16")
    all_channels = 60 * 48_000 * 8 * 4  # what decoding the whole file at once would take
    wave, peak = load_with_peak_memory(path)
    assert len(wave) == 60 * SAMPLE_RATE
    assert peak < all_channels / 2, f"{peak / 1e6:.0f} MB peak for {all_channels / 1e6:.0f} MB"


def test_longer_than_the_limit_is_refused_without_decoding(scratch, monkeypatch):
    path = scratch / "long.wav"
    soundfile.write(path, voice(3.0), SAMPLE_RATE)
    decoded = []
    original = soundfile.SoundFile.read
    monkeypatch.setattr(
        soundfile.SoundFile, "read", lambda *a, **k: decoded.append(1) or original(*a, **k)
    )
    with pytest.raises(AudioError, match="too long: 3 s, the limit is 2 s"):
        load_audio(path, max_seconds=2.0)
    assert not decoded


@pytest.mark.slow
def test_a_one_hour_file_loads_in_bounded_memory_and_embeds(scratch, ge2e):
    path = scratch / "hour.flac"
    rate, block = SAMPLE_RATE, 600 * SAMPLE_RATE
    with soundfile.SoundFile(path, "w", rate, 1, subtype="PCM_16") as handle:
        piece = voice(600.0)[:, 0]
        for _ in range(6):
            handle.write(piece)
    assert soundfile.info(str(path)).duration == 3600.0
    wave, peak = load_with_peak_memory(path)
    assert len(wave) == 3600 * rate and np.isfinite(wave).all()
    assert peak < 3 * len(wave) * 4  # a few copies of the mono float32 waveform
    del wave
    assert check_file(path, ge2e) == "ok"
    assert block  # the file was written in blocks: memory never held it as float64
