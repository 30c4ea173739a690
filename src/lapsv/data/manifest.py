"""Manifests: small, readable text files listing utterances with their speaker and duration.

Format (tab-separated, UTF-8)::

    # root: audio
    utt	speaker	seconds
    id001/clip_0001.flac	id001	4.21

``root`` is the audio folder, relative to the manifest file (or absolute). ``utt`` is the
utterance id and, unless a fourth column ``path`` is given, also the file's path relative
to ``root``: the same ids that VoxCeleb-style trial lists use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from lapsv.errors import ConfigError
from lapsv.files import atomic_write_text

HEADER = ("utt", "speaker", "seconds")


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One audio file: id, speaker label, duration in seconds, path relative to the root."""

    utt: str
    speaker: str
    seconds: float
    path: str = ""

    @property
    def relative_path(self) -> str:
        return self.path or self.utt


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Utterances under one audio root."""

    root: Path
    utterances: tuple[Utterance, ...]

    def __len__(self) -> int:
        return len(self.utterances)

    def __iter__(self) -> Iterator[Utterance]:
        return iter(self.utterances)

    def audio_path(self, utterance: Utterance) -> Path:
        return self.root / utterance.relative_path

    @property
    def speakers(self) -> list[str]:
        """Sorted unique speaker labels."""
        return sorted({u.speaker for u in self.utterances})

    @property
    def total_seconds(self) -> float:
        return sum(u.seconds for u in self.utterances)

    def sample_per_speaker(self, count: int, *, seed: int = 0) -> Manifest:
        """At most ``count`` random utterances of every speaker (a cohort for scoring)."""
        rng = np.random.default_rng(seed)
        by_speaker: dict[str, list[Utterance]] = {}
        for utterance in self.utterances:  # one pass: a scan per speaker would be O(S x U)
            by_speaker.setdefault(utterance.speaker, []).append(utterance)
        chosen = []
        for speaker in sorted(by_speaker):
            rows = by_speaker[speaker]
            picks = rng.permutation(len(rows))[:count]
            chosen.extend(rows[i] for i in sorted(picks))
        return Manifest(self.root, tuple(chosen))

    def subset(self, speakers: Iterable[str]) -> Manifest:
        keep = set(speakers)
        return Manifest(self.root, tuple(u for u in self.utterances if u.speaker in keep))


def read_manifest(path: str | Path) -> Manifest:
    """Read a manifest file; errors name the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError as error:
        raise ConfigError(f"{path}: no such manifest") from error
    except UnicodeDecodeError as error:
        reason = f"{error.reason} at byte {error.start}"
        raise ConfigError(f"{path}: not a text manifest ({reason})") from error
    root = path.parent
    utterances = []
    header_seen = False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            if key.strip() == "root":
                root = path.parent / value.strip()
            continue
        fields = line.split("\t")
        if not header_seen:
            if tuple(fields[:3]) != HEADER:
                raise ConfigError(f"{path}:{number}: expected the header {' '.join(HEADER)}")
            header_seen = True
            continue
        if len(fields) not in (3, 4):
            raise ConfigError(f"{path}:{number}: expected 3 or 4 tab-separated fields")
        try:
            seconds = float(fields[2])
        except ValueError as error:
            raise ConfigError(f"{path}:{number}: seconds '{fields[2]}' is not a number") from error
        utterances.append(
            Utterance(fields[0], fields[1], seconds, fields[3] if len(fields) == 4 else "")
        )
    return Manifest(root.resolve(), tuple(utterances))


def write_manifest(path: str | Path, utterances: Sequence[Utterance], *, root: str | Path) -> None:
    """Write utterances atomically; ``root`` is stored relative to the manifest if possible."""
    path = Path(path)
    root = Path(root)
    try:
        stored_root = root.resolve().relative_to(path.parent.resolve())
    except ValueError:
        stored_root = root.resolve()
    with_paths = any(u.path for u in utterances)
    lines = [f"# root: {stored_root}", "\t".join(HEADER + (("path",) if with_paths else ()))]
    for u in utterances:
        fields = [u.utt, u.speaker, f"{u.seconds:.3f}"] + ([u.relative_path] if with_paths else [])
        lines.append("\t".join(fields))
    atomic_write_text(path, "\n".join(lines) + "\n")
