"""Item 5: data-loading throughput of one CPU worker: decode, speed perturbation, noise, reverb.

Utterances per second for 2-s training crops, in one process (a data-loader worker), on
synthetic data in MUSAN/RIRS_NOISES layouts (RIRs simulated like the demo ones), or on
real folders given as ``musan=`` / ``rirs=``. ``full_pipeline`` is the stage-1 recipe's
``CropDataset.__getitem__``: decode a random segment, speed factor 0.9/1.0/1.1, crop,
augment with probability 0.6.

    python -m benchmarks.run --only data      # this item alone, in the one entry point
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy
import soundfile

from lapsv.audio import SAMPLE_RATE
from lapsv.data.augment import Augmenter, NoiseBank, RirBank, add_noise, reverberate, speed_perturb
from lapsv.data.dataset import CropConfig, CropDataset, read_random_segment
from lapsv.data.manifest import Manifest, Utterance
from lapsv.demo.noise import simulate_rirs

CROP_SECONDS = 2.0
ITERATIONS = {"tiny": 10, "small": 300, "full": 300}


def _speechlike(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Harmonics with a wandering pitch under a syllable-rate envelope, plus a little noise."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / SAMPLE_RATE
    voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = np.clip(np.sin(2 * np.pi * 4 * t), 0, None)
    wave = 0.1 * voiced * envelope + 0.005 * rng.normal(size=t.size)
    return wave.astype(np.float32)


def _synthetic_musan(root: Path, rng: np.random.Generator) -> None:
    for kind, count, seconds in (("noise", 6, 8.0), ("music", 2, 60.0), ("speech", 10, 6.0)):
        (root / kind).mkdir(parents=True)
        for i in range(count):
            wave = (
                _speechlike(seconds, rng)
                if kind == "speech"
                else rng.normal(0, 0.1, int(seconds * SAMPLE_RATE))
            )
            soundfile.write(str(root / kind / f"{kind}-{i}.wav"), wave, SAMPLE_RATE)


def _rate(step: Callable[[], object], iterations: int) -> float:
    for _ in range(min(3, iterations)):  # warm caches and imports
        step()
    started = time.perf_counter()
    for _ in range(iterations):
        step()
    return iterations / (time.perf_counter() - started)


def run(size: str = "small", *, musan: Path | None = None, rirs: Path | None = None) -> dict:
    """Utterances (2-s crops) per second of one CPU process for each data-loading step.

    Args:
        size: ``"tiny"`` runs a few iterations only (a smoke test).
        musan, rirs: real MUSAN / RIRS_NOISES folders; default synthetic ones.

    Returns:
        {"utterances_per_second": {step: rate}, "setup": {...}}.
    """
    small = size == "tiny"
    iterations = ITERATIONS[size]
    rng = np.random.default_rng(0)
    data = "synthetic" if musan is None and rirs is None else f"musan={musan}, rirs={rirs}"
    samples = int(CROP_SECONDS * SAMPLE_RATE)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        flac = tmp / "utterance.flac"
        soundfile.write(str(flac), _speechlike(8.0, rng), SAMPLE_RATE)
        if musan is None:
            musan = tmp / "musan"
            _synthetic_musan(musan, rng)
        if rirs is None:
            rirs = tmp / "rirs"
            (rirs / "simulated_rirs").mkdir(parents=True)
            simulate_rirs(rirs / "simulated_rirs", 4 if small else 20, np.random.default_rng(1))
        noise_bank, rir_bank = NoiseBank(musan), RirBank(rirs)
        crop = read_random_segment(flac, samples, rng)
        always = Augmenter(noise_bank, rir_bank, probability=1.0)
        recipe = Augmenter(noise_bank, rir_bank, probability=0.6)
        factors = iter(np.resize([0.9, 1.1], 10 * iterations))
        manifest = Manifest(tmp, (Utterance("utterance", "speaker", 8.0, flac.name),))
        dataset = CropDataset(
            manifest, CropConfig(CROP_SECONDS, (0.9, 1.0, 1.1)), augment=recipe, seed=0
        )
        epochs = iter(range(10 * iterations))

        def pipeline() -> object:
            dataset.set_epoch(next(epochs))  # a new random crop, factor and augmentation
            return dataset[0]

        steps = {
            "decode_2s_flac_crop": lambda: read_random_segment(flac, samples, rng),
            "speed_perturb": lambda: speed_perturb(crop, float(next(factors))),
            "add_noise": lambda: add_noise(crop, noise_bank.sample("noise", rng), 5.0, rng),
            "reverberate": lambda: reverberate(crop, rir_bank.sample(rng)),
            "augmenter_probability_1": lambda: always(crop, rng),
            "augmenter_probability_0.6": lambda: recipe(crop, rng),
            "full_pipeline": pipeline,
        }
        rates = {name: round(_rate(step, iterations), 1) for name, step in steps.items()}
        rir_seconds = [len(rir_bank.sample(rng)) / SAMPLE_RATE for _ in range(20)]
    return {
        "utterances_per_second": rates,
        "setup": {
            "crop_seconds": CROP_SECONDS,
            "iterations": iterations,
            "augmenter_kinds": list(always.kinds),
            "mean_rir_seconds": round(float(np.mean(rir_seconds)), 2),
            "data": data,
            "processes": 1,
            "cpu": platform.processor() or platform.machine(),
            "cpus_visible": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
        },
    }


if __name__ == "__main__":
    from benchmarks.run import main

    main(["--only", "data", *sys.argv[1:]])
