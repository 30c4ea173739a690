"""Augmentation: speed perturbation, SNR, reverberation, MUSAN/RIR banks, demo noise builder."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile

from lapsv.data.augment import (
    AugmentConfig,
    Augmenter,
    NoiseBank,
    RirBank,
    add_noise,
    babble,
    reverberate,
    speed_perturb,
)
from lapsv.data.manifest import Utterance, write_manifest
from lapsv.demo.noise import HEDGEWARS_SOUNDS, build_demo_noise
from lapsv.errors import ConfigError

RATE = 16_000


def tone(hz: float, seconds: float = 1.0, rate: int = RATE) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * hz * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def peak_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.argmax(spectrum) * RATE / len(wave))


def snr_db(clean: np.ndarray, noisy: np.ndarray) -> float:
    clean64 = clean.astype(np.float64)
    return float(10 * np.log10(np.mean(clean64**2) / np.mean((noisy - clean64) ** 2)))


def write(path: Path, wave: np.ndarray, rate: int = RATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), wave, rate)


def toy_rir(length: int = 2000, delay: int = 30) -> np.ndarray:
    rng = np.random.default_rng(5)
    rir = np.zeros(length, dtype=np.float32)
    rir[delay] = 1.0
    tail = np.arange(length - delay - 1)
    rir[delay + 1 :] = 0.3 * rng.normal(size=tail.size) * np.exp(-tail / 300)
    return rir


@pytest.fixture
def musan(tmp_path) -> Path:
    """A MUSAN-layout folder: nested sub-folders, mixed formats and rates."""
    rng = np.random.default_rng(0)
    root = tmp_path / "musan"
    write(root / "noise" / "free-sound" / "hiss.wav", rng.normal(0, 0.1, 8000))
    write(root / "noise" / "sound-bible" / "hum.flac", tone(50.0, 0.7))
    write(root / "music" / "fma" / "a" / "song.ogg", rng.normal(0, 0.1, 22050), 22050)
    for i in range(3):
        write(root / "speech" / "librivox" / f"talk-{i}.wav", tone(200.0 + 50 * i, 0.5))
    (root / "README").write_text("not audio")
    (root / "noise" / "ANNOTATIONS").write_text("not audio")
    return root


@pytest.fixture
def rirs(tmp_path) -> Path:
    """An RIRS_NOISES-layout folder with simulated and real RIRs and an isotropic noise."""
    root = tmp_path / "RIRS_NOISES"
    write(root / "simulated_rirs" / "smallroom" / "Room001" / "Room001-00001.wav", toy_rir())
    stereo = np.stack([toy_rir(800, 10), toy_rir(800, 50)], axis=1)
    write(root / "real_rirs_isotropic_noises" / "air_type1_air_binaural_1.wav", stereo)
    write(root / "real_rirs_isotropic_noises" / "RVB2014_type1_noise_1.wav", np.ones(800) / 9)
    write(root / ".simulated_rirs.tmp" / "half-built.wav", toy_rir())
    return root


def test_speed_perturb_changes_duration_and_pitch():
    wave = tone(1000.0)
    slow = speed_perturb(wave, 0.9)
    fast = speed_perturb(wave, 1.1)
    assert slow.dtype == np.float32
    assert abs(len(slow) - len(wave) / 0.9) <= 1
    assert abs(len(fast) - len(wave) / 1.1) <= 1
    assert peak_hz(slow) == pytest.approx(900.0, abs=2.0)
    assert peak_hz(fast) == pytest.approx(1100.0, abs=2.0)
    assert speed_perturb(wave, 1.0) is wave


@pytest.mark.parametrize("target", [0.0, 5.0, 13.5, 20.0])
@pytest.mark.parametrize("noise_length", [3000, 16000, 50000])  # tiled, equal, cropped
def test_add_noise_hits_the_snr(target, noise_length):
    rng = np.random.default_rng(1)
    wave = tone(300.0)
    noise = rng.normal(0, 0.3, noise_length).astype(np.float32)
    noisy = add_noise(wave, noise, target, rng)
    assert noisy.shape == wave.shape
    assert noisy.dtype == np.float32
    assert snr_db(wave, noisy) == pytest.approx(target, abs=0.1)


def test_babble_sums_talkers_at_the_snr():
    rng = np.random.default_rng(2)
    wave = tone(300.0)
    talkers = [tone(hz, 0.4) for hz in (150.0, 220.0, 330.0)]
    noisy = babble(wave, talkers, 15.0, rng)
    assert snr_db(wave, noisy) == pytest.approx(15.0, abs=0.1)
    spectrum = np.abs(np.fft.rfft(noisy - wave))
    for hz in (150.0, 220.0, 330.0):  # every talker is in the mixture
        assert spectrum[int(hz)] > 0.1 * spectrum.max()


def test_reverberate_keeps_length_and_direct_path_alignment():
    wave = np.zeros(8000, dtype=np.float32)
    wave[1234] = 1.0
    rir = toy_rir(delay=77)
    out = reverberate(wave, rir)
    assert out.shape == wave.shape
    assert out.dtype == np.float32
    assert int(np.argmax(np.abs(out))) == 1234  # the click stays where it was
    assert np.sum(out[1235:] ** 2) > 0.05  # followed by the room's tail
    assert np.allclose(out[:1234], 0.0, atol=1e-6)
    assert np.sum(out**2) == pytest.approx(1.0, rel=0.02)  # unit-energy RIR


def test_noise_bank_indexes_musan_layout(musan):
    bank = NoiseBank(musan)
    assert bank.kinds == ("noise", "music", "speech")
    assert [p.name for p in bank.files["noise"]] == ["hiss.wav", "hum.flac"]
    assert len(bank.files["speech"]) == 3
    music = bank.sample("music", np.random.default_rng(0))
    assert music.dtype == np.float32
    assert len(music) == 16000  # the 22.05 kHz ogg is resampled to 16 kHz
    again = bank.sample("music", np.random.default_rng(0))
    assert again is music  # decoded once, then cached


def test_noise_bank_cache_respects_budget(musan):
    bank = NoiseBank(musan, cache_mb=0.05)  # 52 kB: holds one 0.5 s recording (32 kB)
    rng = np.random.default_rng(0)
    for _ in range(10):
        bank.sample("speech", rng)
    assert bank._cache.size <= 0.05 * 2**20
    assert len(bank._cache.items) == 1


def test_banks_reject_empty_folders(tmp_path):
    (tmp_path / "noise").mkdir()
    with pytest.raises(ConfigError, match="MUSAN"):
        NoiseBank(tmp_path)
    with pytest.raises(ConfigError, match="RIRS_NOISES"):
        RirBank(tmp_path)


def test_rir_bank_indexes_rirs_layout(rirs):
    bank = RirBank(rirs)
    assert sorted(p.name for p in bank.files) == [
        "Room001-00001.wav",
        "air_type1_air_binaural_1.wav",
    ]  # no isotropic noise, no half-built temporary folder
    binaural = bank._load(bank.files[0])
    assert binaural.ndim == 1 and int(np.argmax(binaural)) == 10  # first channel


def test_augmenter_probability_zero_is_identity(musan, rirs):
    augment = Augmenter(NoiseBank(musan), RirBank(rirs), probability=0.0)
    wave = tone(300.0)
    for seed in range(20):
        assert augment(wave, np.random.default_rng(seed)) is wave


def test_augmenter_probability_one_always_changes(musan, rirs):
    augment = Augmenter(NoiseBank(musan), RirBank(rirs), probability=1.0)
    assert augment.kinds == ("noise", "music", "babble", "reverb")
    wave = tone(300.0, 0.5)
    for seed in range(40):
        out = augment(wave, np.random.default_rng(seed))
        assert out.shape == wave.shape and out.dtype == np.float32
        assert np.isfinite(out).all() and np.abs(out).max() <= 1.0
        assert not np.allclose(out, wave, atol=1e-3)


def test_augmenter_uses_only_available_kinds(musan, rirs):
    assert Augmenter(None, RirBank(rirs)).kinds == ("reverb",)
    assert Augmenter(NoiseBank(musan), None).kinds == ("noise", "music", "babble")
    only_music = AugmentConfig(kinds=("music",))
    assert Augmenter(NoiseBank(musan), RirBank(rirs), config=only_music).kinds == ("music",)
    with pytest.raises(ConfigError, match="no augmentation possible"):
        Augmenter(NoiseBank(musan), None, config=AugmentConfig(kinds=("reverb",)))


def test_augmenter_output_finite_for_silent_and_loud_input(musan, rirs):
    augment = Augmenter(NoiseBank(musan), RirBank(rirs), probability=1.0)
    inputs = [
        np.zeros(4000, dtype=np.float32),
        np.full(4000, 1e-7, dtype=np.float32),
        np.ones(4000, dtype=np.float32),  # full scale: noise would clip, output is rescaled
    ]
    for wave in inputs:
        for seed in range(12):
            out = augment(wave, np.random.default_rng(seed))
            assert out.shape == wave.shape
            assert np.isfinite(out).all() and np.abs(out).max() <= 1.0


def test_augmenter_is_deterministic(musan, rirs):
    wave = tone(300.0, 0.5)
    first = Augmenter(NoiseBank(musan), RirBank(rirs), probability=0.6)
    second = Augmenter(NoiseBank(musan), RirBank(rirs), probability=0.6)
    outs = [first(wave, np.random.default_rng(seed)) for seed in range(15)]
    for seed, out in enumerate(outs):
        np.testing.assert_array_equal(out, second(wave, np.random.default_rng(seed)))
    assert 0 < sum(out is wave for out in outs) < len(outs)  # some kept, some augmented


def test_augmenter_pickles_for_data_loader_workers(musan, rirs):
    augment = Augmenter(NoiseBank(musan), RirBank(rirs), probability=1.0)
    wave = tone(300.0, 0.5)
    augment(wave, np.random.default_rng(0))  # fill the caches first
    copy = pickle.loads(pickle.dumps(augment))
    for seed in range(5):
        expected = augment(wave, np.random.default_rng(seed))
        np.testing.assert_array_equal(copy(wave, np.random.default_rng(seed)), expected)


def test_augment_config_validates_and_accepts_yaml_lists():
    config = AugmentConfig(noise_snr=[0, 10], kinds=["noise"])
    assert config.noise_snr == (0, 10) and config.kinds == ("noise",)
    hash(config)
    with pytest.raises(ConfigError, match="low <= high"):
        AugmentConfig(music_snr=(15.0, 5.0))
    with pytest.raises(ConfigError, match="unknown augmentation"):
        AugmentConfig(kinds=("noise", "echo"))


def fake_packages(root: Path) -> dict[str, Path]:
    """Tiny stand-ins for the two Debian packages, with their real inner paths."""
    rng = np.random.default_rng(3)
    moh = root / "asterisk-moh-opsound-wav"
    write(moh / "usr/share/asterisk/moh/tune.wav", tone(440.0, 2.0, 8000), 8000)
    sounds = root / "hedgewars-data" / HEDGEWARS_SOUNDS
    write(sounds / "explosion.ogg", rng.normal(0, 0.2, (22050, 2)), 22050)
    write(sounds / "steam.ogg", rng.normal(0, 0.2, 30000), 44100)
    write(sounds / "minetick.ogg", rng.normal(0, 0.2, 4410), 44100)  # 0.1 s: too short
    write(sounds / "Yoohoo.ogg", tone(300.0, 1.0, 44100), 44100)  # a voice
    write(sounds / "voices" / "Default" / "Hello.ogg", tone(200.0, 1.0, 44100), 44100)
    return {"asterisk-moh-opsound-wav": moh, "hedgewars-data": root / "hedgewars-data"}


def test_build_demo_noise_writes_layout_and_is_rerunnable(tmp_path):
    packages = fake_packages(tmp_path / "debs")
    fetched = []

    def fetch(name: str) -> Path:
        fetched.append(name)
        return packages[name]

    audio = tmp_path / "corpus" / "audio"
    utterances = []
    for i in range(5):
        write(audio / f"spk{i % 2}" / f"u{i}.flac", tone(150.0 + 20 * i, 0.5))
        utterances.append(Utterance(f"spk{i % 2}/u{i}.flac", f"spk{i % 2}", 0.5))
    manifest = tmp_path / "corpus" / "train.tsv"
    write_manifest(manifest, utterances, root=audio)

    out = tmp_path / "demo-noise"
    summary = build_demo_noise(out, speech_manifest=manifest, n_rirs=3, n_speech=4, fetch=fetch)
    folders = summary["folders"]
    assert {name: folders[name]["files"] for name in folders} == {
        "music": 1,
        "noise": 2,
        "rirs": 3,
        "speech": 4,
    }
    assert folders["noise"]["skipped_short"] == 1
    assert not any(f["skipped"] for f in folders.values())
    names = sorted(p.name for p in (out / "musan" / "noise").glob("*.wav"))
    assert names == ["hedgewars-explosion.wav", "hedgewars-steam.wav"]  # no voices
    for path in (out / "musan").rglob("*.wav"):
        info = soundfile.info(str(path))
        assert (info.samplerate, info.channels) == (RATE, 1)
    rt60 = folders["rirs"]["rt60_measured"]
    assert 0.05 < rt60[0] <= rt60[2] < 2.0

    bank, rir_bank = NoiseBank(summary["musan"]), RirBank(summary["rirs"])
    assert bank.kinds == ("noise", "music", "speech") and len(rir_bank) == 3
    augment = Augmenter(bank, rir_bank, probability=1.0)
    assert np.isfinite(augment(tone(300.0), np.random.default_rng(0))).all()

    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    fetched.clear()
    again = build_demo_noise(out, speech_manifest=manifest, n_rirs=3, n_speech=4, fetch=fetch)
    assert fetched == []
    assert all(f["skipped"] for f in again["folders"].values())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    marker = json.loads((out / "rirs" / "simulated_rirs" / ".complete").read_text())
    assert marker["settings"]["n_rirs"] == 3
