"""Waveform augmentation: speed perturbation, MUSAN noise/music/babble, RIR reverberation.

Every function takes and returns (N,) float32 waveforms at 16 kHz; randomness comes only
from the ``numpy.random.Generator`` passed in, so a fixed seed gives a fixed result.
The noise folders have the layouts of the public corpora, so the offline demo folders
(:mod:`lapsv.demo.noise`) and the real data go through the same code:

* MUSAN: ``musan/{noise,music,speech}/**/*.{wav,flac,ogg}``;
* RIRS_NOISES: ``**/*.wav`` (``simulated_rirs/``, ``real_rirs_isotropic_noises/``).
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import fftconvolve, resample_poly

from lapsv.audio import SAMPLE_RATE, load_audio, resample
from lapsv.errors import AudioError, ConfigError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")
MUSAN_KINDS = ("noise", "music", "speech")
KINDS = ("noise", "music", "babble", "reverb")


def speed_perturb(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play ``wave`` ``factor`` times faster, like ``sox speed``: duration / factor, pitch * factor.

    Polyphase resampling by the ratio ``factor`` as a small fraction (0.9 -> up 10, down 9).
    A speed-perturbed speaker sounds like a different speaker: the training code gives
    each factor its own set of classes (METHOD.md §4).

    Args:
        wave: (N,) float32.
        factor: speed factor, e.g. 0.9 or 1.1.

    Returns:
        (ceil(N / factor),) float32.

    >>> speed_perturb(np.zeros(1600, dtype=np.float32), 0.9).shape
    (1778,)
    """
    if factor == 1.0:
        return wave
    ratio = Fraction(factor).limit_denominator(100)
    if ratio <= 0:
        raise ConfigError(f"speed factor must be positive, got {factor}")
    out = resample_poly(wave, ratio.denominator, ratio.numerator)
    return out.astype(np.float32, copy=False)


def add_noise(
    wave: np.ndarray,
    noise: np.ndarray,
    snr_db: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Add ``noise`` to ``wave`` at a signal-to-noise ratio of ``snr_db``.

    The noise is cropped at a random start, or repeated from a random start, to the length
    of ``wave``; the SNR compares the mean powers of the two over that length.

    Args:
        wave: (N,) float32; noise: (M,) float32, any M >= 1.

    Returns:
        (N,) float32.

    >>> wave = np.sin(np.arange(16000, dtype=np.float32) / 10)
    >>> rng = np.random.default_rng(0)
    >>> noisy = add_noise(wave, rng.normal(size=999), 10.0, rng)
    >>> round(float(10 * np.log10(np.mean(wave**2) / np.mean((noisy - wave) ** 2))), 3)
    10.0
    """
    noise = _crop_or_repeat(noise, len(wave), rng)
    speech_power = _power(wave)
    noise_power = _power(noise)
    if noise_power == 0.0:
        return wave
    gain = np.sqrt(speech_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (wave + gain * noise).astype(np.float32)


def babble(
    wave: np.ndarray,
    speech: Sequence[np.ndarray],
    snr_db: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Add a babble of several talkers: each ``speech`` item at equal power, summed, at ``snr_db``.

    Args:
        wave: (N,) float32; speech: a few (M_i,) float32 recordings (MUSAN uses 3-7).

    Returns:
        (N,) float32.
    """
    if not speech:
        raise ConfigError("babble needs at least one speech recording")
    talkers = [_crop_or_repeat(s, len(wave), rng) for s in speech]
    mixture = sum(t / np.sqrt(max(_power(t), 1e-20)) for t in talkers)
    return add_noise(wave, np.asarray(mixture, dtype=np.float32), snr_db, rng)


def reverberate(wave: np.ndarray, rir: np.ndarray) -> np.ndarray:
    """Convolve ``wave`` with a room impulse response, aligned so the speech is not delayed.

    The RIR is scaled to unit energy; the output starts at the RIR's direct-path peak
    (its largest sample) and keeps the input's length.

    Args:
        wave: (N,) float32; rir: (K,) float32.

    Returns:
        (N,) float32.

    >>> click = np.zeros(100, dtype=np.float32); click[10] = 1
    >>> rir = np.array([0, 0, 1, 0.5, 0.25], dtype=np.float32)
    >>> int(np.argmax(reverberate(click, rir)))
    10
    """
    energy = np.sqrt(_power(rir) * len(rir))
    if energy == 0.0:
        raise AudioError("<rir>", "the room impulse response is all zeros")
    delay = int(np.argmax(np.abs(rir)))
    out = fftconvolve(wave, rir / energy)[delay : delay + len(wave)]
    return out.astype(np.float32)


def _crop_or_repeat(wave: np.ndarray, samples: int, rng: np.random.Generator) -> np.ndarray:
    """(samples,): a random crop of a longer ``wave``, or its repetition from a random start."""
    if len(wave) == 0:
        raise AudioError("<noise>", "empty noise recording")
    if len(wave) >= samples:
        start = int(rng.integers(len(wave) - samples + 1))
        return wave[start : start + samples]
    return wave[(int(rng.integers(len(wave))) + np.arange(samples)) % len(wave)]


def _power(wave: np.ndarray) -> float:
    return float(np.mean(np.square(wave, dtype=np.float64))) if len(wave) else 0.0


class _AudioCache:
    """Decoded recordings kept in memory up to ``budget_bytes``, least recently used out."""

    def __init__(self, budget_bytes: int, loader) -> None:
        self.budget = budget_bytes
        self.loader = loader
        self.items: OrderedDict[Path, np.ndarray] = OrderedDict()
        self.size = 0

    def get(self, path: Path) -> np.ndarray:
        wave = self.items.get(path)
        if wave is not None:
            self.items.move_to_end(path)
            return wave
        wave = self.loader(path)
        if wave.nbytes <= self.budget:
            self.items[path] = wave
            self.size += wave.nbytes
            while self.size > self.budget:
                _, old = self.items.popitem(last=False)
                self.size -= old.nbytes
        return wave


def _audio_files(folder: Path, suffixes: Sequence[str]) -> tuple[Path, ...]:
    """Audio files below ``folder``, sorted; hidden files and folders (e.g. the temporary
    folders of an interrupted build) are left out."""
    if not folder.is_dir():
        return ()
    found = (
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
        and p.is_file()
    )
    return tuple(sorted(found))


class NoiseBank:
    """The recordings of a MUSAN-layout folder, decoded on first use and cached.

    Args:
        root: folder with ``noise/``, ``music/`` and/or ``speech/`` sub-folders holding
            wav/flac/ogg files at any depth (the real MUSAN, or the demo folder).
        cache_mb: memory for decoded recordings (float32 16 kHz: 3.5 MB per minute);
            least recently used ones are dropped beyond it.

    Raises:
        ConfigError: none of the three sub-folders holds audio.

    >>> import tempfile, soundfile
    >>> root = Path(tempfile.mkdtemp())
    >>> (root / "noise" / "free-sound").mkdir(parents=True)
    >>> soundfile.write(root / "noise" / "free-sound" / "hum.wav", np.ones(8000) / 4, 16000)
    >>> bank = NoiseBank(root)
    >>> bank.kinds, bank.sample("noise", np.random.default_rng(0)).shape
    (('noise',), (8000,))
    """

    def __init__(self, root: str | Path, *, cache_mb: float = 512.0) -> None:
        self.root = Path(root)
        self.files = {kind: _audio_files(self.root / kind, AUDIO_SUFFIXES) for kind in MUSAN_KINDS}
        if not any(self.files.values()):
            raise ConfigError(
                f"{self.root}: no wav/flac/ogg files under noise/, music/ or speech/; point "
                "it at a MUSAN folder or build the demo one with lapsv.demo.noise"
            )
        self._cache = _AudioCache(int(cache_mb * 2**20), self._load)

    @property
    def kinds(self) -> tuple[str, ...]:
        """The sub-folders that hold at least one file."""
        return tuple(kind for kind in MUSAN_KINDS if self.files[kind])

    def sample(self, kind: str, rng: np.random.Generator) -> np.ndarray:
        """One random recording of ``kind`` ("noise", "music" or "speech"): (M,) float32."""
        files = self.files[kind]
        if not files:
            raise ConfigError(f"{self.root / kind}: no audio files")
        return self._cache.get(files[int(rng.integers(len(files)))])

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        return load_audio(path, min_seconds=0.0)


class RirBank:
    """The room impulse responses of an RIRS_NOISES-layout folder: every ``*.wav`` below it.

    Files with "noise" in their name are left out: RIRS_NOISES keeps its isotropic
    noise recordings beside the real RIRs. Multi-channel RIRs use their first channel.

    Args:
        root: e.g. ``RIRS_NOISES`` (``simulated_rirs/``, ``real_rirs_isotropic_noises/``).
        cache_mb: memory for decoded RIRs.

    Raises:
        ConfigError: no RIR found.
    """

    def __init__(self, root: str | Path, *, cache_mb: float = 256.0) -> None:
        self.root = Path(root)
        self.files = tuple(
            p for p in _audio_files(self.root, (".wav",)) if "noise" not in p.name.lower()
        )
        if not self.files:
            raise ConfigError(
                f"{self.root}: no *.wav room impulse responses; point it at RIRS_NOISES "
                "or build the demo one with lapsv.demo.noise"
            )
        self._cache = _AudioCache(int(cache_mb * 2**20), self._load)

    def __len__(self) -> int:
        return len(self.files)

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        """One random RIR: (K,) float32 at 16 kHz."""
        return self._cache.get(self.files[int(rng.integers(len(self.files)))])

    @staticmethod
    def _load(path: Path) -> np.ndarray:
        try:
            data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except (soundfile.LibsndfileError, RuntimeError) as error:
            raise AudioError(str(path), f"cannot decode the RIR ({error})") from error
        rir = data[:, 0]
        if rate != SAMPLE_RATE:
            rir = resample(rir, rate, SAMPLE_RATE)
        if not np.any(rir):
            raise AudioError(str(path), "the room impulse response is all zeros")
        return rir


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the augmentations; (low, high) pairs are drawn uniformly.

    Defaults follow the usual MUSAN/RIR recipe for VoxCeleb (METHOD.md §5).
    ``kinds`` lists the augmentations that may be used; those whose data is missing
    (e.g. no ``speech/`` folder for babble) are skipped.
    """

    noise_snr: tuple[float, float] = (0.0, 15.0)
    music_snr: tuple[float, float] = (5.0, 15.0)
    babble_snr: tuple[float, float] = (13.0, 20.0)
    babble_talkers: tuple[int, int] = (3, 7)
    kinds: tuple[str, ...] = KINDS

    def __post_init__(self) -> None:
        for name in ("noise_snr", "music_snr", "babble_snr", "babble_talkers"):
            pair = tuple(getattr(self, name))
            if len(pair) != 2 or pair[0] > pair[1]:
                raise ConfigError(f"augment.{name} must be [low, high] with low <= high")
            object.__setattr__(self, name, pair)  # YAML gives lists; keep the config hashable
        if self.babble_talkers[0] < 1:
            raise ConfigError("augment.babble_talkers must be at least 1")
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ConfigError(f"unknown augmentation {unknown[0]!r} (valid: {', '.join(KINDS)})")
        object.__setattr__(self, "kinds", tuple(self.kinds))


class Augmenter:
    """Randomly corrupt training crops with noise, music, babble or reverberation.

    With ``probability``, ONE augmentation is applied, chosen uniformly among the
    configured kinds whose data exists; otherwise the wave is returned unchanged.
    Outputs whose peak exceeds 1 are scaled down to peak 1.

    Args:
        noise_bank: MUSAN-layout recordings (noise, music, speech for babble), or None.
        rir_bank: room impulse responses, or None.
        probability: chance that a crop is augmented.
        config: SNR ranges and the talker count of babble.

    Raises:
        ConfigError: no augmentation is possible with the given banks.

    Call with ``(wave (N,) float32, rng) -> (N,) float32``.

    >>> import tempfile, soundfile
    >>> root = Path(tempfile.mkdtemp())
    >>> soundfile.write(root / "room.wav", np.array([0.0, 0.9, 0.4, 0.1]), 16000)
    >>> augment = Augmenter(None, RirBank(root), probability=1.0)
    >>> augment.kinds
    ('reverb',)
    >>> wave = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    >>> augment(wave, np.random.default_rng(0)).shape
    (16000,)
    """

    def __init__(
        self,
        noise_bank: NoiseBank | None,
        rir_bank: RirBank | None,
        *,
        probability: float = 0.6,
        config: AugmentConfig | None = None,
    ) -> None:
        if not 0.0 <= probability <= 1.0:
            raise ConfigError(f"augment probability must be in [0, 1], got {probability}")
        self.noise_bank = noise_bank
        self.rir_bank = rir_bank
        self.probability = probability
        self.config = config or AugmentConfig()
        musan = noise_bank.kinds if noise_bank is not None else ()
        available = {
            "noise": "noise" in musan,
            "music": "music" in musan,
            "babble": "speech" in musan,
            "reverb": rir_bank is not None and len(rir_bank) > 0,
        }
        self.kinds = tuple(kind for kind in self.config.kinds if available[kind])
        if not self.kinds:
            raise ConfigError(
                f"no augmentation possible: kinds {list(self.config.kinds)} need MUSAN "
                "noise/, music/, speech/ folders or RIRs, and none of those was given"
            )

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.probability <= 0.0 or rng.random() >= self.probability:
            return wave
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        config = self.config
        if kind == "reverb":
            out = reverberate(wave, self.rir_bank.sample(rng))
        elif kind == "babble":
            low, high = config.babble_talkers
            talkers = [
                self.noise_bank.sample("speech", rng)
                for _ in range(int(rng.integers(low, high + 1)))
            ]
            out = babble(wave, talkers, rng.uniform(*config.babble_snr), rng)
        else:
            snr = rng.uniform(*(config.noise_snr if kind == "noise" else config.music_snr))
            out = add_noise(wave, self.noise_bank.sample(kind, rng), snr, rng)
        peak = float(np.abs(out).max()) if len(out) else 0.0
        return out / peak if peak > 1.0 else out
