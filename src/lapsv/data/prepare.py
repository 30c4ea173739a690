"""Manifests from the usual corpus layouts, a speaker-disjoint validation split, trials.

Layouts: a folder of speaker sub-folders (``spk/**/*.wav``), VoxCeleb1/2
(``id*/video/*.wav``, or VoxCeleb2's ``.m4a`` converted with ffmpeg), and Kaldi data dirs
(``wav.scp`` + ``utt2spk``). Validation speakers are held out of training entirely: model
selection on held-out utterances of training speakers saturates and cannot select models.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from lapsv.audio import AUDIO_SUFFIXES, audio_duration
from lapsv.data.manifest import Utterance, write_manifest
from lapsv.errors import AudioError, ConfigError
from lapsv.files import atomic_write_text

OFFICIAL_VOXCELEB_LISTS = (
    "veri_test.txt",
    "veri_test2.txt",
    "list_test_hard.txt",
    "list_test_hard2.txt",
    "list_test_all.txt",
    "list_test_all2.txt",
)


def folder_utterances(
    root: Path, *, suffixes: Sequence[str] = AUDIO_SUFFIXES
) -> list[tuple[str, str]]:
    """(utterance id = path relative to root, speaker = first folder) for every audio file."""
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes and p.is_file())
    items = []
    for path in files:
        relative = path.relative_to(root)
        if len(relative.parts) < 2:
            raise ConfigError(f"{path}: expected <speaker>/<...>/<file> under {root}")
        items.append((relative.as_posix(), relative.parts[0]))
    return items


def kaldi_utterances(data_dir: Path) -> list[tuple[str, str, str]]:
    """(utterance id, speaker, absolute path) from a Kaldi data dir."""
    wav_scp, utt2spk = data_dir / "wav.scp", data_dir / "utt2spk"
    for path in (wav_scp, utt2spk):
        if not path.is_file():
            raise ConfigError(f"{data_dir}: missing {path.name} (a Kaldi data dir needs both)")
    speakers = dict(line.split(maxsplit=1) for line in utt2spk.read_text().splitlines() if line)
    items = []
    for number, line in enumerate(wav_scp.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        utt, _, location = line.strip().partition(" ")
        if location.endswith("|"):
            raise ConfigError(
                f"{wav_scp}:{number}: piped commands are not supported; convert to files first"
            )
        if utt not in speakers:
            raise ConfigError(f"{wav_scp}:{number}: utterance {utt} is missing from utt2spk")
        items.append((utt, speakers[utt].strip(), str(Path(location.strip()).resolve())))
    return items


def convert_m4a(source: Path, target_root: Path) -> Path:
    """VoxCeleb2's AAC files -> 16 kHz mono wav under ``target_root`` (needs ffmpeg)."""
    files = sorted(source.rglob("*.m4a"))
    if not files:
        return source
    if shutil.which("ffmpeg") is None:
        raise ConfigError(
            f"{source} holds .m4a files: install ffmpeg (e.g. apt-get install ffmpeg) to convert"
        )

    def convert(path: Path) -> None:
        target = target_root / path.relative_to(source).with_suffix(".wav")
        if target.exists():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".tmp.wav")
        command = ["ffmpeg", "-v", "error", "-y", "-i", str(path), "-ac", "1", "-ar", "16000"]
        subprocess.run([*command, str(tmp)], check=True)
        tmp.replace(target)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(convert, files))
    return target_root


def speaker_trials(
    utterances: Sequence[Utterance], *, max_trials: int = 20_000, seed: int = 0
) -> list[tuple[int, str, str]]:
    """Balanced (label, enroll, test) pairs of distinct utterances: targets, then as many
    random non-targets; at most ``max_trials`` in all."""
    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[str]] = {}
    for u in utterances:
        by_speaker.setdefault(u.speaker, []).append(u.utt)
    targets = [
        (1, a, b) for utts in by_speaker.values() for i, a in enumerate(utts) for b in utts[i + 1 :]
    ]
    rng.shuffle(targets)
    targets = targets[: max_trials // 2]
    ids = [u.utt for u in utterances]
    speaker = {u.utt: u.speaker for u in utterances}
    nontargets: set[tuple[str, str]] = set()
    attempts = 0
    while len(nontargets) < len(targets) and attempts < 50 * max(len(targets), 1):
        a, b = rng.choice(len(ids), size=2, replace=False)
        if speaker[ids[a]] != speaker[ids[b]]:
            nontargets.add((ids[a], ids[b]))
        attempts += 1
    trials = targets + [(0, a, b) for a, b in sorted(nontargets)]
    order = rng.permutation(len(trials))
    return [trials[i] for i in order]


def write_trials(path: Path, trials: Sequence[tuple[int, str, str]]) -> None:
    """VoxCeleb format: ``label enroll test`` per line."""
    atomic_write_text(path, "".join(f"{label} {a} {b}\n" for label, a, b in trials))


def prepare_corpus(
    source: Path, out: Path, *, layout: str = "folder", val_speakers: int = 20, seed: int = 0
) -> str:
    """Write ``train.tsv``, ``val.tsv`` and ``trials/val.txt`` for a corpus; returns a summary.

    For VoxCeleb, official trial lists found in ``source`` are copied to ``out/trials``.
    """
    if not source.exists():
        raise ConfigError(f"{source}: no such folder")
    root = source
    if layout == "kaldi":
        records = kaldi_utterances(source)
        root = Path("/")
        entries = [(utt, spk, str(Path(path).relative_to(root))) for utt, spk, path in records]
    elif layout in ("folder", "voxceleb"):
        if layout == "voxceleb":
            root = convert_m4a(source, out / "wav")
        entries = [(utt, spk, "") for utt, spk in folder_utterances(root)]
    else:
        raise ConfigError(f"unknown layout '{layout}'; use folder, voxceleb or kaldi")
    if not entries:
        raise ConfigError(f"{source}: no audio files found")

    def measure(entry: tuple[str, str, str]) -> Utterance | str:
        utt, spk, path = entry
        try:
            return Utterance(utt, spk, audio_duration(root / (path or utt)), path)
        except AudioError as error:
            return str(error)

    with ThreadPoolExecutor(max_workers=8) as pool:
        measured = list(pool.map(measure, entries))
    utterances = [m for m in measured if isinstance(m, Utterance)]
    problems = [m for m in measured if isinstance(m, str)]
    speakers = sorted({u.speaker for u in utterances})
    if len(speakers) <= val_speakers:
        raise ConfigError(
            f"{source}: {len(speakers)} speakers, not enough to hold out {val_speakers}"
        )
    held_out = set(np.random.default_rng(seed).choice(speakers, size=val_speakers, replace=False))
    train = [u for u in utterances if u.speaker not in held_out]
    val = [u for u in utterances if u.speaker in held_out]
    out.mkdir(parents=True, exist_ok=True)
    write_manifest(out / "train.tsv", train, root=root)
    write_manifest(out / "val.tsv", val, root=root)
    write_trials(out / "trials" / "val.txt", speaker_trials(val, seed=seed))
    copied = []
    if layout == "voxceleb":
        for name in OFFICIAL_VOXCELEB_LISTS:
            found = sorted(source.rglob(name))
            if found:
                shutil.copy(found[0], out / "trials" / name)
                copied.append(name)
    lines = [
        f"train: {len(speakers) - val_speakers} speakers, {len(train)} utterances, "
        f"{sum(u.seconds for u in train) / 3600:.2f} h -> {out / 'train.tsv'}",
        f"val:   {val_speakers} held-out speakers, {len(val)} utterances -> {out / 'val.tsv'}",
        f"validation trials -> {out / 'trials' / 'val.txt'}",
    ]
    if layout == "voxceleb":
        lines.append(
            "official trial lists copied: "
            + (
                ", ".join(copied)
                if copied
                else "none found in the source (place veri_test2.txt etc. there and rerun)"
            )
        )
    if problems:
        lines.append(f"{len(problems)} unreadable files skipped, e.g. {problems[0]}")
    return "\n".join(lines)
