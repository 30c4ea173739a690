"""One speaker of the demo corpus: select, decode, deduplicate, voice-check, write items.

:func:`build_speaker_folder` turns the voice sources of one label into FLAC items in a
folder and returns its build record: the items, every file left out and why, the voice
check of its recording groups and its voice embedding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

from lapsv.audio import SAMPLE_RATE
from lapsv.demo.clips import Clip, Skip, analyse_file
from lapsv.demo.items import ItemLengths, make_items
from lapsv.demo.voice_check import GroupCheck, check_voice_groups
from lapsv.demo.voices import VoiceSource, select_files

Embedder = Callable[[list[np.ndarray]], np.ndarray]


def build_speaker_folder(
    folder: Path,
    speaker: str,
    sources: list[tuple[int, VoiceSource]],
    tree: Callable[[str], Path],
    pool,
    seen: dict[str, str],
    embedder: Embedder | None,
    threshold: float,
    lengths: ItemLengths,
) -> dict:
    """Write the items of one speaker into ``folder``; return its build record.

    Args:
        sources: (index in the source list, source) of this speaker.
        tree: package name -> unpacked package tree.
        pool: an executor whose ``map`` decodes the files.
        seen: file or audio hash -> the first file of earlier speakers that had it.
        embedder: the voice check's embedder; None skips the check.
    """
    by_index = dict(sources)
    clips, skipped, hashes = _decode_clips(sources, tree, pool, seen)
    checks, embedding, source_similarity = [], None, []
    if embedder is not None and clips:
        clips, checks, embedding, source_similarity = _check_voice(
            speaker, clips, embedder, threshold, by_index, skipped
        )
    items = make_items(sorted(clips, key=lambda c: (c.source, c.rel)), lengths)
    used = {(index, rel) for _, pieces in items for index, rel, _, _ in pieces}
    skipped += [
        (
            _file_ref(by_index, c.source, c.rel),
            f"left over after joining (under {lengths.join_below} s)",
        )
        for c in clips
        if (c.source, c.rel) not in used
    ]
    first_source = sources[0][1]
    return {
        "speaker": speaker,
        "package": "+".join(dict.fromkeys(s.package for _, s in sources)),
        "language": "+".join(dict.fromkeys(s.language for _, s in sources)),
        "voice": first_source.voice if len(sources) == 1 else first_source.voice.split(",")[0],
        "items": _write_items(folder, speaker, items, by_index),
        "skipped_files": skipped,
        "groups": [dataclasses.asdict(c) for c in checks],
        "embedding": None if embedding is None else np.round(embedding, 5).tolist(),
        "source_similarity": source_similarity,
        "hashes": hashes,
    }


def _file_ref(sources: dict[int, VoiceSource], index: int, rel: str) -> str:
    """``package:folder/rel``: where a file of source ``index`` is."""
    source = sources[index]
    return f"{source.package}:{source.folder}/{rel}"


def _decode_clips(
    sources: list[tuple[int, VoiceSource]],
    tree: Callable[[str], Path],
    pool,
    seen: dict[str, str],
) -> tuple[list[Clip], list[tuple[str, str]], dict[str, str]]:
    """The clips of the selected files, (file, reason) of those left out, and the hashes
    (file and decoded audio -> file) of the clips kept."""
    by_index = dict(sources)
    tasks, skipped = [], []
    for index, source in sources:
        package_tree = tree(source.package)
        selected, excluded = select_files(source, package_tree)
        skipped += [
            (_file_ref(by_index, index, rel), "excluded by the source rules") for rel in excluded
        ]
        tasks += [(index, source, str(package_tree), rel) for rel in selected]
    clips: list[Clip] = []
    hashes: dict[str, str] = {}
    for result in pool.map(analyse_file, tasks, chunksize=8):
        where = _file_ref(by_index, result.source, result.rel)
        if isinstance(result, Skip):
            skipped.append((where, result.reason))
            continue
        first = seen.get(result.file_hash) or hashes.get(result.file_hash)
        same = seen.get(result.audio_hash) or hashes.get(result.audio_hash)
        if first or same:
            what = "byte-identical to" if first else "same decoded audio as"
            skipped.append((where, f"duplicate: {what} {first or same}"))
            continue
        hashes[result.file_hash] = hashes[result.audio_hash] = where
        clips.append(result)
    return clips, skipped, hashes


def _check_voice(
    speaker: str,
    clips: list[Clip],
    embedder: Embedder,
    threshold: float,
    sources: dict[int, VoiceSource],
    skipped: list[tuple[str, str]],
) -> tuple[list[Clip], list[GroupCheck], np.ndarray, list]:
    """Drop the recording groups of another voice (their files are added to ``skipped``).

    Returns:
        the clips kept, the group checks, the voice embedding, and the similarity between
        the sources of the label.
    """
    groups: dict[str, list[Clip]] = {}
    for clip in clips:
        groups.setdefault(clip.group, []).append(clip)
    waves = {name: [c.wave for c in members] for name, members in groups.items()}
    checks, vectors = check_voice_groups(speaker, waves, embedder, threshold=threshold)
    for check in checks:
        if not check.kept:
            for clip in groups[check.group]:
                reason = f"voice check: group similarity {check.similarity:.3f} < {threshold}"
                skipped.append((_file_ref(sources, clip.source, clip.rel), reason))
    kept = [c for c in clips if c.group in vectors]
    embedding, source_similarity = _voice_vectors(vectors, groups, sources)
    return kept, checks, embedding, source_similarity


def _voice_vectors(
    vectors: dict[str, np.ndarray],
    groups: dict[str, list[Clip]],
    sources: dict[int, VoiceSource],
) -> tuple[np.ndarray, list]:
    """Duration-weighted voice embedding of the kept groups, and the similarity between
    the sources (packages) of one label when it has several."""

    def mean(names: list[str]) -> np.ndarray:
        total = sum(vectors[n] * sum(c.seconds for c in groups[n]) for n in names)
        return total / np.linalg.norm(total)

    per_source: dict[str, list[str]] = {}
    for name in vectors:
        per_source.setdefault(sources[groups[name][0].source].package, []).append(name)
    packages = sorted(per_source)
    pairs = [
        [a, b, round(float(mean(per_source[a]) @ mean(per_source[b])), 3)]
        for i, a in enumerate(packages)
        for b in packages[i + 1 :]
    ]
    return mean(list(vectors)), pairs


def _write_items(
    folder: Path,
    speaker: str,
    items: list[tuple[np.ndarray, list[tuple[int, str, float, float]]]],
    sources: dict[int, VoiceSource],
) -> list[list]:
    """Write ``<speaker>_NNNN.flac`` per item; return (file name, seconds, clips) rows."""
    rows = []
    for number, (wave, pieces) in enumerate(items, start=1):
        name = f"{speaker}_{number:04d}.flac"
        soundfile.write(str(folder / name), wave, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
        clips_text = ";".join(
            f"{_file_ref(sources, i, rel)}@{a:.2f}-{b:.2f}" for i, rel, a, b in pieces
        )
        rows.append([name, round(len(wave) / SAMPLE_RATE, 3), clips_text])
    return rows
