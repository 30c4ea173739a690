"""A tiny generated speaker corpus for training tests: harmonic 'voices' with jitter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile

from lapsv.data.manifest import Utterance, write_manifest


def voice(f0: float, formant: float, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A harmonic signal with a speaker-specific pitch and spectral tilt, randomly modulated."""
    t = np.arange(int(seconds * 16000)) / 16000
    pitch = f0 * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t))
    phase = 2 * np.pi * np.cumsum(pitch) / 16000
    harmonics = sum(
        np.exp(-(((k * f0) - formant) ** 2) / (2 * 400**2)) * np.sin(k * phase)
        for k in range(1, 20)
    )
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 5) * t) ** 2
    wave = harmonics * envelope + 0.01 * rng.normal(size=t.size)
    return (0.3 * wave / np.abs(wave).max()).astype(np.float32)


def make_corpus(
    root: Path, *, speakers: int = 6, utterances: int = 6, val_speakers: int = 2, seed: int = 0
) -> dict[str, Path]:
    """Write audio/, train.tsv, val.tsv and a VoxCeleb-format val trial list under ``root``."""
    rng = np.random.default_rng(seed)
    audio = root / "audio"
    rows: dict[str, list[Utterance]] = {"train": [], "val": []}
    for s in range(speakers + val_speakers):
        name = f"spk{s:02d}"
        f0, formant = rng.uniform(90, 260), rng.uniform(500, 2500)
        split = "train" if s < speakers else "val"
        for u in range(utterances):
            seconds = float(rng.uniform(1.0, 3.0))
            path = audio / name / f"{u:03d}.flac"
            path.parent.mkdir(parents=True, exist_ok=True)
            soundfile.write(path, voice(f0, formant, seconds, rng), 16000)
            rows[split].append(Utterance(f"{name}/{u:03d}.flac", name, seconds))
    write_manifest(root / "train.tsv", rows["train"], root=audio)
    write_manifest(root / "val.tsv", rows["val"], root=audio)
    val = rows["val"]
    lines = [
        f"{int(a.speaker == b.speaker)} {a.utt} {b.utt}"
        for i, a in enumerate(val)
        for b in val[i + 1 :]
    ]
    (root / "val_trials.txt").write_text("\n".join(lines) + "\n")
    return {
        "train": root / "train.tsv",
        "val": root / "val.tsv",
        "val_trials": root / "val_trials.txt",
        "audio": audio,
    }
