"""Offline stand-ins for MUSAN and RIRS_NOISES, with the same folder layouts.

The demo recipe trains with augmentation without downloading the real corpora, through
the same :class:`~lapsv.data.augment.NoiseBank` / :class:`~lapsv.data.augment.RirBank`
code path::

    out/musan/music/           music on hold (Debian asterisk-moh-opsound-wav), 16 kHz wav
    out/musan/noise/           game sound effects (Debian hedgewars-data, Sounds/ without
                               the voice packs or any other voice), 16 kHz wav
    out/musan/speech/          ~100 utterances of the training speech, for babble, 16 kHz wav
    out/rirs/simulated_rirs/   shoebox rooms simulated with pyroomacoustics, 16 kHz wav

Each folder is built in a temporary directory and renamed into place with a
``.complete`` file (its summary, as JSON); a later call with the same settings skips it.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

from lapsv.audio import SAMPLE_RATE, load_audio
from lapsv.data.manifest import read_manifest
from lapsv.demo.debian import unpacked_package
from lapsv.demo.folders import build_audio_folder
from lapsv.errors import ConfigError, LapsvError

MUSIC_PACKAGE = "asterisk-moh-opsound-wav"
NOISE_PACKAGE = "hedgewars-data"
HEDGEWARS_SOUNDS = "usr/share/games/hedgewars/Data/Sounds"
MIN_NOISE_SECONDS = 0.3
# hedgewars Sounds/ files that are voices or music rather than noise, judged from their
# use in the game's uSound.pas and a pitch-contour check; doubtful ones are left out. The
# voice packs (Sounds/voices/) are never read: only the top level of Sounds/ is listed.
NOT_NOISE = frozenset(
    {
        "Yoohoo",  # a voice calling "yoo-hoo" (seduction)
        "Kiss",  # a mouth sound (seduction)
        "Hellish",  # demonic laugh/voice
        "hell_growl",  # vocal growl and pain grunts
        "hell_ooff",
        "hell_ow",
        "hell_ugh",
        "hogchant3",  # chanting voices (resurrector)
        "homerun",  # home-run cheer, may hold voices
        "extratime",  # pitch contour like speech
        "ride_of_the_valkyries",  # music, not noise
    }
)


@dataclasses.dataclass(frozen=True)
class RoomRanges:
    """Random shoebox rooms: size (m), reverberation time (s), wall margin (m)."""

    low: tuple[float, float, float] = (3.0, 3.0, 2.5)
    high: tuple[float, float, float] = (12.0, 10.0, 4.0)
    rt60: tuple[float, float] = (0.2, 0.9)
    margin: float = 0.5
    max_order: int = 40  # image-source order cap: ~0.05 s per RIR, tails of ~1 s


def build_demo_noise(
    out: Path,
    *,
    speech_manifest: Path | None,
    cache: Path | None = None,
    seed: int = 0,
    n_rirs: int = 200,
    n_speech: int = 100,
    fetch: Callable[[str], Path] | None = None,
) -> dict:
    """Build ``out/musan`` and ``out/rirs`` (layout in the module docstring); re-runnable.

    Args:
        out: output folder.
        speech_manifest: training manifest whose utterances become babble material;
            None builds no ``speech/`` folder.
        cache: where Debian packages are downloaded and unpacked (default ``out/.debs``).
        seed: seed of the speech choice and of the simulated rooms.
        n_rirs: simulated room impulse responses.
        n_speech: utterances copied for babble.
        fetch: ``name -> unpacked package tree``; default ``unpacked_package(name, cache)``.

    Returns:
        {"musan": out/musan, "rirs": out/rirs, "folders": {name: {"files", "minutes",
        "seconds", ...}}, "seconds": wall time of this call}.
    """
    started = time.perf_counter()
    out = Path(out)
    cache = Path(cache) if cache is not None else out / ".debs"
    fetch = fetch or (lambda name: unpacked_package(name, cache))
    musan, rirs = out / "musan", out / "rirs"
    steps: dict[str, tuple[Path, dict, Callable[[Path], dict]]] = {
        "music": (musan / "music", {"package": MUSIC_PACKAGE}, lambda d: _music(d, fetch)),
        "noise": (
            musan / "noise",
            {"package": NOISE_PACKAGE, "excluded": sorted(NOT_NOISE)},
            lambda d: _noise(d, fetch),
        ),
        "rirs": (
            rirs / "simulated_rirs",
            {
                "n_rirs": n_rirs,
                "seed": seed,
                "rooms": dataclasses.asdict(RoomRanges()),
                "rt60": "T30",
            },
            lambda d: simulate_rirs(d, n_rirs, np.random.default_rng((seed, 1))),
        ),
    }
    if speech_manifest is not None:
        manifest = Path(speech_manifest).resolve()
        if not manifest.is_file():
            raise ConfigError(f"{manifest}: no such manifest (the speech for babble)")
        steps["speech"] = (
            musan / "speech",
            {
                "manifest": str(manifest),
                "modified_ns": manifest.stat().st_mtime_ns,
                "n_speech": n_speech,
                "seed": seed,
            },
            lambda d: _speech(d, manifest, n_speech, np.random.default_rng((seed, 2))),
        )
    folders = {name: build_audio_folder(*step) for name, step in steps.items()}
    return {
        "musan": str(musan),
        "rirs": str(rirs),
        "folders": folders,
        "seconds": round(time.perf_counter() - started, 2),
    }


def _write(path: Path, wave: np.ndarray) -> None:
    soundfile.write(str(path), wave, SAMPLE_RATE, subtype="PCM_16")


def _music(folder: Path, fetch: Callable[[str], Path]) -> dict:
    tree = fetch(MUSIC_PACKAGE)
    sources = sorted(tree.rglob("*.wav"))
    for source in sources:
        _write(folder / f"moh-{source.stem}.wav", load_audio(source))
    return {"sources": len(sources)}


def hedgewars_noise_files(tree: Path) -> list[Path]:
    """The sound effects of an unpacked hedgewars-data tree that are neither voice nor music.

    Only the top level of ``Sounds/`` is listed, so the voice packs in ``Sounds/voices/``
    are never used; :data:`NOT_NOISE` removes the vocal and musical effects.
    """
    sounds = tree / HEDGEWARS_SOUNDS
    return sorted(
        p
        for p in sounds.glob("*")
        if p.is_file() and p.suffix.lower() in (".ogg", ".wav") and p.stem not in NOT_NOISE
    )


def _noise(folder: Path, fetch: Callable[[str], Path]) -> dict:
    candidates = hedgewars_noise_files(fetch(NOISE_PACKAGE))
    short = 0
    for source in candidates:
        if soundfile.info(str(source)).duration < MIN_NOISE_SECONDS:
            short += 1
            continue
        _write(folder / f"hedgewars-{source.stem}.wav", load_audio(source))
    return {"skipped_short": short, "excluded_not_noise": sorted(NOT_NOISE)}


def _speech(folder: Path, manifest_path: Path, count: int, rng: np.random.Generator) -> dict:
    manifest = read_manifest(manifest_path)
    utterances = list(manifest)
    chosen = sorted(rng.choice(len(utterances), size=min(count, len(utterances)), replace=False))
    for number, index in enumerate(chosen):
        utterance = utterances[index]
        wave = load_audio(manifest.audio_path(utterance))
        _write(folder / f"{number:04d}-{utterance.speaker}.wav", wave)
    return {"speakers": len({utterances[i].speaker for i in chosen})}


def simulate_rirs(
    folder: Path, count: int, rng: np.random.Generator, *, rooms: RoomRanges | None = None
) -> dict:
    """Write ``count`` RIRs of random shoebox rooms as ``RoomNNNN-00001.wav`` in ``folder``.

    Image-source method (pyroomacoustics), wall absorption from Sabine's formula for a
    random target RT60, source and microphone at random positions ``margin`` from the
    walls. Sabine's formula is only a guide for such rooms, so the RT60 is measured on
    each simulated RIR (T30) and rooms outside ``rooms.rt60`` are drawn again. The RIRs
    are scaled to peak 0.99 and written as 16-bit 16 kHz wav (like RIRS_NOISES).

    Returns:
        {"rt60_measured": [min, median, max] seconds, "rooms_simulated": rooms tried}.
    """
    import pyroomacoustics as pra  # heavy import, needed only here

    rooms = rooms or RoomRanges()
    measured: list[float] = []
    attempts = 0
    while len(measured) < count:
        attempts += 1
        if attempts > 50 * count:
            raise LapsvError(f"cannot reach RT60 {rooms.rt60} s in rooms {rooms.low}-{rooms.high}")
        size = rng.uniform(rooms.low, rooms.high)
        try:  # a short RT60 is impossible in a large room: draw again
            absorption, order = pra.inverse_sabine(rng.uniform(*rooms.rt60), size)
        except ValueError:
            continue
        room = pra.ShoeBox(
            size,
            fs=SAMPLE_RATE,
            materials=pra.Material(absorption),
            max_order=min(order, rooms.max_order),
        )
        room.add_source(rng.uniform(rooms.margin, size - rooms.margin))
        room.add_microphone(rng.uniform(rooms.margin, size - rooms.margin))
        room.compute_rir()
        rir = np.asarray(room.rir[0][0], dtype=np.float64)
        rt60 = float(pra.experimental.measure_rt60(rir, fs=SAMPLE_RATE, decay_db=30))
        if not rooms.rt60[0] <= rt60 <= rooms.rt60[1]:
            continue
        measured.append(rt60)
        path = folder / f"Room{len(measured):04d}-00001.wav"
        _write(path, 0.99 * rir / np.abs(rir).max())
    quantiles = np.quantile(measured, [0, 0.5, 1]) if measured else []
    return {
        "rt60_measured": [round(float(q), 2) for q in quantiles],
        "rooms_simulated": attempts,
    }
