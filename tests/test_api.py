"""The Python API: load_model, embed(path or array), verify, similarity; long recordings."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from scipy.signal import resample_poly

import lapsv
from lapsv.audio import load_audio, pad_batch
from lapsv.config import BackendConfig, ModelConfig
from lapsv.errors import AudioError, ConfigError
from lapsv.inference import embed_file, embed_waveforms, extract_embeddings, window_bounds
from lapsv.scoring.calibrate import QMFCalibrator
from lapsv.scoring.norm import cosine_scores, length_normalize
from lapsv.scoring.state import ScoringState

SMALL_BACKEND = BackendConfig(lap_heads=4, lap_out_dim=32, embed_dim=16)


def tiny_model() -> lapsv.SpeakerModel:
    """LAP+ASTP on a randomly initialised GE2E frontend: fast, no weights to load."""
    return lapsv.SpeakerModel.build(ModelConfig(backend=SMALL_BACKEND), pretrained=False).eval()


def add_calibration(model_dir: Path, embed_dim: int, *, seed: int = 0) -> None:
    """A synthetic training mean, AS-norm cohort and fitted QMF saved beside a model."""
    rng = np.random.default_rng(seed)
    mean = 0.1 * rng.normal(size=embed_dim).astype(np.float32)
    cohort = length_normalize(rng.normal(size=(12, embed_dim))).astype(np.float32)
    labels = np.repeat([1, 0], 100)
    features = rng.normal(size=(200, 9)) + labels[:, None]
    ScoringState(mean, cohort, 8, QMFCalibrator().fit(features, labels)).save(model_dir)


@pytest.fixture
def model_dir(tmp_path) -> Path:
    return tiny_model().save(tmp_path / "tiny")


@pytest.fixture
def calibrated_dir(model_dir) -> Path:
    add_calibration(model_dir, 16)
    return model_dir


def test_embed_a_file_or_an_array_gives_one_numpy_vector(model_dir, clips):
    model = lapsv.load_model(model_dir)
    from_file = model.embed(clips["speaker_a_1"])
    assert isinstance(from_file, np.ndarray) and from_file.shape == (16,)
    assert from_file.dtype == np.float32
    wave = load_audio(clips["speaker_a_1"])
    assert np.array_equal(model.embed(wave), from_file)
    assert np.array_equal(model.embed(torch.from_numpy(wave)), from_file)
    batch = model.embed_batch(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))
    assert np.allclose(batch[0].numpy(), from_file, atol=1e-6)


def test_any_sample_rate_and_stereo_are_resampled_and_down_mixed(model_dir, clips):
    model = lapsv.load_model(model_dir)
    wave = load_audio(clips["speaker_a_1"])
    at_44k = resample_poly(wave, 441, 160).astype(np.float32)
    stereo = np.stack([at_44k, at_44k], axis=1)
    reference = model.embed(wave)
    assert model.similarity(model.embed(stereo, sample_rate=44100), reference) > 0.999
    pcm16 = (resample_poly(wave, 1, 2) * 32767).astype(np.int16)
    assert model.similarity(model.embed(pcm16, sample_rate=8000), reference) > 0.99
    with pytest.raises(AudioError, match="channels, samples"):
        model.embed(np.stack([wave, wave]))
    with pytest.raises(ConfigError, match="header"):
        model.embed(clips["speaker_a_1"], sample_rate=8000)


def test_tensor_batch_call_is_unchanged(model_dir, clips):
    model = lapsv.load_model(model_dir)
    waveforms, lengths = pad_batch([load_audio(p) for p in clips.values()])
    batch = model.embed_batch(waveforms, lengths)
    assert isinstance(batch, torch.Tensor) and batch.shape == (4, 16)
    assert torch.equal(batch, model.encoder.embed_batch(waveforms, lengths))
    with pytest.raises(TypeError):  # one return type per method: a batch is embed_batch's
        model.embed(waveforms, lengths)


def test_similarity_is_the_verify_cosine_with_the_training_mean(calibrated_dir, clips):
    model = lapsv.load_model(calibrated_dir)
    assert model.scoring.mean is not None and model.scoring.calibrated
    a, b = model.embed(clips["speaker_a_1"]), model.embed(clips["speaker_b_1"])
    expected = cosine_scores(a[None], b[None], [0], [0], mean=model.scoring.mean)[0]
    assert model.similarity(a, b) == pytest.approx(expected, abs=1e-6)
    matrix = model.similarity(np.stack([a, b]), np.stack([a, b, a]))
    assert matrix.shape == (2, 3) and matrix[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_verify_gives_llr_and_decision_like_the_verifier(calibrated_dir, clips):
    model = lapsv.load_model(calibrated_dir)
    result = model.verify(clips["speaker_a_1"], clips["speaker_a_2"])
    assert result.llr is not None and result.asnorm is not None
    assert result.threshold == 0.0 and result.same == (result.llr >= 0)
    assert result == lapsv.load_model(calibrated_dir).verify(
        str(clips["speaker_a_1"]), str(clips["speaker_a_2"])
    )
    given = model.verify(clips["speaker_a_1"], load_audio(clips["speaker_a_2"]), threshold=99.0)
    assert given.same is False and given.threshold_source == "given"
    assert given.llr == pytest.approx(result.llr, abs=1e-9)


def test_uncalibrated_verify_has_no_decision_without_a_threshold(model_dir, clips):
    model = lapsv.load_model(model_dir)
    result = model.verify(clips["speaker_a_1"], clips["speaker_b_1"])
    assert result.llr is None and result.same is None
    assert result.cosine == pytest.approx(
        model.similarity(model.embed(clips["speaker_a_1"]), model.embed(clips["speaker_b_1"])),
        abs=1e-6,
    )


def test_builtin_ge2e_has_the_same_api(clips):
    model = lapsv.load_model("ge2e")
    a1, a2, b1 = (model.embed(clips[k]) for k in ("speaker_a_1", "speaker_a_2", "speaker_b_1"))
    assert a1.shape == (256,) and np.linalg.norm(a1) == pytest.approx(1.0, abs=1e-5)
    assert model.similarity(a1, a2) > model.similarity(a1, b1)
    same = model.verify(clips["speaker_a_1"], clips["speaker_a_2"], threshold=0.8)
    assert same.same is True and same.cosine == pytest.approx(model.similarity(a1, a2), abs=1e-6)
    waveforms, lengths = pad_batch([load_audio(clips["speaker_a_1"])])
    assert np.allclose(model.embed_batch(waveforms, lengths)[0].numpy(), a1, atol=1e-6)
    assert model.model_id.startswith("ge2e-")


def test_model_id_follows_the_weights_not_the_file(tmp_path, model_dir):
    model = lapsv.load_model(model_dir)
    copy = lapsv.load_model(model.save(tmp_path / "copy"))
    assert copy.model_id == model.model_id
    assert tiny_model().model_id != model.model_id  # other random weights


# --- long recordings: windows of at most max_seconds, averaged ---------------------------


def voiced_noise(seconds: float, rate: int = 16000, channels: int = 1, seed: int = 0):
    rng = np.random.default_rng(seed)
    return (0.1 * rng.normal(size=(int(seconds * rate), channels))).astype(np.float32)


def test_window_rule_equal_windows_no_short_leftover():
    windows = window_bounds(16000 * 25, 16000 * 10)
    assert len(windows) == 3 and {b - a for a, b in windows} <= {133333, 133334}
    assert windows[0][0] == 0 and windows[-1][1] == 16000 * 25
    assert window_bounds(16000 * 10, 16000 * 10) == [(0, 160000)]


def test_short_recordings_are_embedded_whole(tmp_path):
    model = tiny_model()
    wave = voiced_noise(4.0)[:, 0]
    whole = model.embed_batch(torch.from_numpy(wave)[None], torch.tensor([len(wave)]))[0]
    windowed = embed_waveforms(model, [wave], max_seconds=5.0)[0]
    assert np.array_equal(windowed, whole.numpy())
    soundfile.write(tmp_path / "short.wav", wave, 16000, subtype="FLOAT")
    vector, seconds = embed_file(model, tmp_path / "short.wav", max_seconds=5.0)
    assert np.array_equal(vector, whole.numpy()) and seconds == pytest.approx(4.0)


def test_long_file_is_the_mean_of_its_windows_read_one_by_one(tmp_path):
    model = tiny_model()
    wave = voiced_noise(12.5)[:, 0]
    wave[66000:134000] = 0.0  # the middle window, samples 66,666 to 133,333, is silent: skipped
    path = tmp_path / "long.wav"
    soundfile.write(path, wave, 16000, subtype="FLOAT")
    vector, seconds = embed_file(model, path, max_seconds=5.0)
    assert seconds == pytest.approx(12.5)
    bounds = window_bounds(len(wave), 5 * 16000)
    assert len(bounds) == 3
    kept = [wave[a:b] for a, b in bounds if np.abs(wave[a:b]).max() > 0]
    assert len(kept) == 2
    alone = [model.embed_batch(torch.from_numpy(w)[None], torch.tensor([len(w)]))[0] for w in kept]
    assert np.allclose(vector, torch.stack(alone).mean(0).numpy(), atol=1e-5)
    in_memory = embed_waveforms(model, [wave], max_seconds=5.0)[0]
    assert np.allclose(vector, in_memory, atol=1e-6)
    api = lapsv.load_model(model.save(tmp_path / "m")).embed(path, max_seconds=5.0)
    assert np.allclose(api, vector, atol=1e-6)


def test_long_stereo_44k_file_streams_like_the_whole_decoded_file(tmp_path):
    model = tiny_model()
    path = tmp_path / "long44.wav"
    soundfile.write(path, voiced_noise(11.0, 44100, channels=2), 44100, subtype="FLOAT")
    streamed, _ = embed_file(model, path, max_seconds=4.0)
    whole = embed_waveforms(model, [load_audio(path)], max_seconds=4.0)[0]
    assert np.allclose(streamed, whole, atol=1e-5)


def test_extract_embeddings_streams_long_files_next_to_short_ones(tmp_path, clips):
    model = tiny_model()
    path = tmp_path / "long.wav"
    soundfile.write(path, voiced_noise(9.0), 16000, subtype="FLOAT")
    items = [("long", path), ("short", clips["speaker_a_1"])]
    result = extract_embeddings(model, items, max_seconds=4.0)
    rows = result.index()
    assert np.allclose(
        result.embeddings[rows["long"]], embed_file(model, path, max_seconds=4.0)[0], atol=1e-6
    )
    assert result.seconds[rows["long"]] == pytest.approx(9.0)


PEAK_SCRIPT = textwrap.dedent(
    """
    import resource, sys, tracemalloc
    import numpy as np, soundfile, torch
    sys.path.insert(0, {tests!r})
    from conftest import tiny_hf_config
    from lapsv import HFFrontend, SpeakerModel, build_backend
    from lapsv.inference import embed_file

    torch.set_num_threads(1)
    frontend = HFFrontend.from_config(tiny_hf_config("wavlm"), source="tiny")
    backend = build_backend("lap", "astp", in_dim=32, n_layers=3, lap_heads=4, lap_out_dim=32)
    model = SpeakerModel(frontend, backend).eval()
    rng = np.random.default_rng(0)

    def write(path, seconds):
        with soundfile.SoundFile(path, "w", 16000, 1, subtype="PCM_16") as out:
            for _ in range(int(seconds // 60)):
                out.write((0.1 * rng.normal(size=960000)).astype(np.float32))

    write({warm!r}, 120)
    write({long!r}, {minutes} * 60)
    mib = 1024 * 1024
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB
    for _ in range(2):  # the allocators settle; 12 windows = 3 full batches, as in the long file
        embed_file(model, {warm!r}, max_seconds=10, batch_size=4)
    before = peak()
    vector, seconds = embed_file(model, {long!r}, max_seconds=10, batch_size=4)
    growth = peak() - before
    tracemalloc.start()  # counts NumPy's buffers exactly, whatever the allocator keeps
    embed_file(model, {long!r}, max_seconds=10, batch_size=4)
    traced = tracemalloc.get_traced_memory()[1] / mib
    print(traced, growth, seconds, bool(np.isfinite(vector).all()))
    """
)


def test_peak_memory_does_not_grow_with_the_file_length(tmp_path):
    """A 10-minute file in 10 s windows is never held whole, in samples or in activations.

    Whole, the file would be 37 MiB of float32 samples (NumPy buffers, which tracemalloc
    counts exactly: measured peak 3 MiB), and the tiny WavLM's first convolution alone
    would output 32 x 1.92 M x 4 B = 234 MiB (attention over 30,000 frames: 7 GiB) on top
    of the peak a 2-minute file set (measured: +0 to +19 MiB, the allocator's slack).
    """
    minutes = 10
    script = PEAK_SCRIPT.format(
        tests=str(Path(__file__).parent),
        warm=str(tmp_path / "warm.wav"),
        long=str(tmp_path / "long.wav"),
        minutes=minutes,
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-2000:]
    traced, growth, seconds, finite = result.stdout.split()[-4:]
    assert float(seconds) == pytest.approx(minutes * 60) and finite == "True"
    assert float(traced) < 16, f"{traced} MiB of samples held for a {minutes}-minute file"
    assert float(growth) < 64, f"peak memory grew by {growth} MiB on a {minutes}-minute file"
