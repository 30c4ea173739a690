"""What the demo corpus holds: the split and speaker tables, and its README.md."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from lapsv.data.manifest import Utterance
from lapsv.demo.voice_check import GroupCheck
from lapsv.demo.voices import VoiceSource

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class SplitStats:
    split: str
    speakers: int
    items: int
    minutes: float


@dataclasses.dataclass(frozen=True)
class SpeakerStats:
    speaker: str
    package: str
    language: str
    voice: str
    split: str
    items: int
    minutes: float


@dataclasses.dataclass(frozen=True)
class CorpusSummary:
    """What :func:`~lapsv.demo.corpus.build_demo_corpus` built, and every decision it took.

    Attributes:
        root: the corpus folder.
        splits: speakers, items and minutes of train / val / test.
        speakers: one row per speaker.
        skipped: (file, reason) of every selected file not used.
        groups: the voice check of every recording group.
        similar: (speaker, speaker, GE2E similarity) of the closest pairs of labels, and of
            the sources of labels made of several packages.
        trials: (split, target, non-target) trial counts.
        seconds: wall time of the build.
    """

    root: str
    splits: tuple[SplitStats, ...]
    speakers: tuple[SpeakerStats, ...]
    skipped: tuple[tuple[str, str], ...]
    groups: tuple[GroupCheck, ...]
    similar: tuple[tuple[str, str, float], ...]
    trials: tuple[tuple[str, int, int], ...]
    seconds: float

    def format_table(self) -> str:
        """The split table and the per-speaker table, as aligned text."""
        lines = [f"{'split':<6} {'speakers':>8} {'items':>6} {'minutes':>8}"]
        lines += [
            f"{s.split:<6} {s.speakers:>8} {s.items:>6} {s.minutes:>8.1f}" for s in self.splits
        ]
        total = (sum(s.speakers for s in self.splits), sum(s.items for s in self.splits))
        minutes = sum(s.minutes for s in self.splits)
        lines.append(f"{'all':<6} {total[0]:>8} {total[1]:>6} {minutes:>8.1f}")
        lines.append("")
        header = f"{'speaker':<22} {'split':<5} {'package':<27} {'lang':<6} {'voice':<22}"
        lines.append(f"{header} {'items':>5} {'min':>6}")
        for s in self.speakers:
            row = f"{s.speaker:<22} {s.split:<5} {s.package[:27]:<27} {s.language:<6}"
            lines.append(f"{row} {s.voice[:22]:<22} {s.items:>5} {s.minutes:>6.1f}")
        dropped = sum(not g.kept for g in self.groups)
        lines.append(
            f"\n{len(self.skipped)} files skipped, {dropped} recording groups dropped by "
            f"the voice check; built in {self.seconds:.0f} s; details in {self.root}/README.md"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CorpusSummary:
        return cls(
            root=data["root"],
            splits=tuple(SplitStats(**s) for s in data["splits"]),
            speakers=tuple(SpeakerStats(**s) for s in data["speakers"]),
            skipped=tuple(tuple(s) for s in data["skipped"]),
            groups=tuple(GroupCheck(**g) for g in data["groups"]),
            similar=tuple(tuple(s) for s in data["similar"]),
            trials=tuple(tuple(t) for t in data["trials"]),
            seconds=data["seconds"],
        )


def summarise_corpus(
    out: Path,
    records: dict[str, dict],
    split_of: dict[str, str],
    utterances: dict[str, list[Utterance]],
    trial_counts: list[tuple[str, int, int]],
    started: float,
) -> CorpusSummary:
    """The :class:`CorpusSummary` of the speaker build ``records`` and the splits."""
    speakers = tuple(
        SpeakerStats(
            speaker=name,
            package=records[name]["package"],
            language=records[name]["language"],
            voice=records[name]["voice"],
            split=split_of.get(name, "-"),
            items=len(records[name]["items"]),
            minutes=round(sum(row[1] for row in records[name]["items"]) / 60, 2),
        )
        for name in records
    )
    splits = tuple(
        SplitStats(
            split=split,
            speakers=len({u.speaker for u in utterances[split]}),
            items=len(utterances[split]),
            minutes=round(sum(u.seconds for u in utterances[split]) / 60, 2),
        )
        for split in SPLITS
    )
    return CorpusSummary(
        root=str(out),
        splits=splits,
        speakers=speakers,
        skipped=tuple((f, r) for record in records.values() for f, r in record["skipped_files"]),
        groups=tuple(GroupCheck(**g) for record in records.values() for g in record["groups"]),
        similar=similar_speakers(records),
        trials=tuple(trial_counts),
        seconds=round(time.perf_counter() - started, 1),
    )


def similar_speakers(records: dict[str, dict], top: int = 10) -> tuple:
    """The ``top`` most similar pairs of labels, plus source pairs within labels."""
    named = [(n, np.asarray(r["embedding"])) for n, r in records.items() if r["embedding"]]
    pairs = sorted(
        (
            (a, b, round(float(x @ y), 3))
            for i, (a, x) in enumerate(named)
            for b, y in named[i + 1 :]
        ),
        key=lambda p: -p[2],
    )[:top]
    within = [tuple(p) for r in records.values() for p in r["source_similarity"]]
    return tuple(within) + tuple(pairs)


def corpus_readme(
    summary: CorpusSummary,
    by_speaker: dict[str, list[tuple[int, VoiceSource]]],
    records: dict[str, dict],
) -> str:
    """README.md of the corpus: tables, voice rules, voice check and every file not used."""
    lines = [
        "# lapsv demo corpus",
        "",
        "Real speech from Debian packages, built by `lapsv.demo.corpus.build_demo_corpus`"
        " (rules: `lapsv.demo.voices.demo_corpus_sources`). 16 kHz mono FLAC; items of one "
        "speaker; short clips joined with 0.25 s of silence (provenance in `items.tsv`).",
        "",
        "```",
        summary.format_table(),
        "```",
        "",
        "Trials (VoxCeleb format, ids relative to `audio/`): "
        + ", ".join(f"{s}: {t} target + {n} non-target" for s, t, n in summary.trials),
        "",
        "## Voices and their rules",
        "",
    ]
    for name, sources in by_speaker.items():
        for _, source in sources:
            rule = f"`{source.folder}/` include `{source.include}`"
            if source.exclude:
                rule += f", exclude `{source.exclude}`"
            if source.channels:
                rule += f", {source.channels}-channel files only"
            if source.sample_rates:
                rule += f", {'/'.join(map(str, source.sample_rates))} Hz only"
            note = f" — {source.note}" if source.note else ""
            lines.append(f"- **{name}** ({source.package}): {rule}{note}")
    lines += ["", "## Voice check (GE2E, joined audio of each recording group)", ""]
    dropped = [g for g in summary.groups if not g.kept]
    lines.append(f"{len(summary.groups)} groups checked, {len(dropped)} dropped:")
    lines += [
        f"- dropped {g.speaker} / {g.group}: {g.files} files, {g.seconds:.0f} s, "
        f"similarity {g.similarity:.3f}"
        for g in dropped
    ]
    lines += ["", "Lowest similarity of a kept group, per speaker:", ""]
    for name in records:
        kept = [g for g in summary.groups if g.speaker == name and g.kept and g.similarity]
        if kept:
            low = min(kept, key=lambda g: g.similarity)
            lines.append(f"- {name}: {low.similarity:.3f} ({len(kept)} groups; lowest {low.group})")
    lines += ["", "Similarity of sources within a label, and the closest pairs of labels:", ""]
    lines += [f"- {a} ~ {b}: {s:.3f}" for a, b, s in summary.similar]
    lines += ["", "## Files not used", ""]
    reasons: dict[str, int] = {}
    for _, reason in summary.skipped:
        key = reason.split(":")[0] if reason.startswith(("duplicate", "voice check")) else reason
        reasons[key] = reasons.get(key, 0) + 1
    lines += [f"- {count} x {reason}" for reason, count in sorted(reasons.items())]
    lines += ["", "Every file, with its reason:", "", "```"]
    lines += [f"{path}\t{reason}" for path, reason in summary.skipped]
    lines += ["```", ""]
    return "\n".join(lines)
