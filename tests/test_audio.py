"""Audio loading: resampling, down-mixing, and clear errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from lapsv.audio import load_audio, pad_batch, prepare_waveform
from lapsv.errors import AudioError


def write(path, samples, rate):
    soundfile.write(path, samples, rate)
    return path


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_rate_is_resampled_to_16k(tmp_path, rate):
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)
    wave = load_audio(write(tmp_path / "tone.wav", tone, rate))
    assert wave.dtype == np.float32 and abs(len(wave) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) * 16000 / len(wave) - 440) < 2  # pitch preserved


def test_stereo_is_down_mixed(tmp_path):
    left = 0.2 * np.ones(16000)
    wave = load_audio(write(tmp_path / "stereo.flac", np.stack([left, -0.5 * left], 1), 16000))
    np.testing.assert_allclose(wave, 0.05, atol=1e-4)


def test_real_clip_loads(clips):
    wave = load_audio(clips["speaker_a_1"])
    assert 3.4 < len(wave) / 16000 < 3.6


@pytest.mark.parametrize(
    ("name", "make", "message"),
    [
        ("missing.wav", None, "no such file"),
        ("corrupt.wav", lambda p: p.write_bytes(b"RIFF\x00\x00garbage" * 10), "cannot decode"),
        ("empty.wav", lambda p: p.write_bytes(b""), "cannot decode"),
        ("short.wav", lambda p: write(p, 0.1 * np.ones(1600), 16000), "too short: 0.10 s"),
        ("silent.wav", lambda p: write(p, np.zeros(16000), 16000), "silent"),
        ("zero.wav", lambda p: write(p, np.zeros((0, 1)), 16000), "empty audio"),
    ],
)
def test_bad_files_raise_audio_errors_naming_the_file(tmp_path, name, make, message):
    path = tmp_path / name
    if make:
        make(path)
    with pytest.raises(AudioError, match=message) as info:
        load_audio(path)
    assert name in str(info.value)


def test_nan_samples_and_absurd_rates_are_rejected():
    with pytest.raises(AudioError, match="NaN"):
        prepare_waveform(np.array([0.1, np.nan] * 8000, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="sample rate"):
        prepare_waveform(np.ones(16000, dtype=np.float32), 3)


def test_integer_pcm_is_scaled():
    wave = prepare_waveform((np.ones(16000) * 16384).astype(np.int16), 16000)
    assert wave.max() == pytest.approx(0.5, abs=1e-3)


def test_pad_batch_keeps_lengths():
    batch, lengths = pad_batch([np.ones(2), np.ones(4)])
    assert lengths.tolist() == [2, 4]
    assert batch[0].tolist() == [1, 1, 0, 0]
