"""The offline demo corpus: real, speaker-labelled speech from Debian packages.

Layout of ``out``::

    audio/<speaker>/<speaker>_0001.flac   16 kHz mono FLAC (PCM_16) items of 3-20 s
    audio/<speaker>/.complete             that speaker's build record (JSON)
    train.tsv, val.tsv, test.tsv          manifests (root: audio), speaker-disjoint splits
    trials/val.txt, trials/test.txt       VoxCeleb-format trials (ids relative to audio/)
    items.tsv                             provenance: the source clips of every item
    summary.json, README.md               tables, and every file or group left out and why

The voices and the rules that pick their files are in :mod:`lapsv.data.voices`. Clips
shorter than 3 s (letters, words) are joined, with 0.25 s of silence between them, into
items of 4-7.25 s of one speaker; clips over 20 s are cut into 4-12 s pieces at their
quietest points. Every speaker folder and the corpus as a whole are written atomically
and skipped when they exist with the same settings, so the build is re-runnable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import soundfile

from lapsv.audio import SAMPLE_RATE
from lapsv.data.debian import unpacked_package

# One implementation of "build a folder atomically unless its marker has these settings".
from lapsv.data.folders import MARKER, build_audio_folder
from lapsv.data.manifest import Utterance, write_manifest
from lapsv.data.prepare import speaker_trials, write_trials
from lapsv.data.voices import (
    Clip,
    GroupCheck,
    Skip,
    VoiceSource,
    analyse_file,
    check_voice_groups,
    demo_corpus_sources,
    select_files,
)
from lapsv.files import atomic_write_text

BUILD_VERSION = 1
SPLITS = ("train", "val", "test")
# The long dialogue voices carry most of the training speech; they are never held out.
TRAIN_ONLY = ("fillets_cs_small", "fillets_cs_big", "fillets_nl_small", "fillets_nl_big")
TRIAL_ITEMS = 50  # items per speaker in the trial lists: at most 1,225 target pairs each


@dataclasses.dataclass(frozen=True)
class ItemLengths:
    """How clips become items (seconds)."""

    join_below: float = 3.0  # shorter clips are joined with others of the speaker
    join_target: float = 4.0  # a joined item is closed once it is this long
    max_joined: float = 8.0
    gap: float = 0.25  # silence between joined clips
    split_above: float = 20.0  # longer clips are cut into pieces
    piece_min: float = 4.0
    piece_max: float = 12.0


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
    """What :func:`build_demo_corpus` built, and every decision it took.

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


def build_demo_corpus(
    out: Path,
    *,
    cache: Path | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    fetch: Callable[[str], Path] | None = None,
    check_voices: bool = True,
    voice_threshold: float = 0.8,
    test_speakers: int = 10,
    val_speakers: int = 4,
    max_trials: int = 20_000,
    workers: int | None = None,
) -> CorpusSummary:
    """Build the demo corpus into ``out`` (layout in the module docstring); re-runnable.

    Args:
        out: output folder; when it holds a complete corpus built with the same
            settings, its summary is returned at once.
        cache: where Debian packages are downloaded and unpacked (default ``out/.debs``).
        seed: seed of the speaker splits and of the trial lists.
        progress: called with one line per step.
        fetch: ``package name -> unpacked package tree``; default
            ``unpacked_package(name, cache)``.
        check_voices: compare the recording groups of each label with GE2E and drop
            those of another voice (see :func:`~lapsv.data.voices.check_voice_groups`).
        voice_threshold: GE2E similarity below which a group is another voice.
        test_speakers, val_speakers: held-out speakers, chosen per package family.
        max_trials: most lines of each trial list.
        workers: decoding processes (default: all CPU cores, at most 8).

    Returns:
        the :class:`CorpusSummary`, also written to ``out/summary.json``.
    """
    started = time.perf_counter()
    out = Path(out)
    say = progress or (lambda line: None)
    lengths = ItemLengths()
    by_speaker: dict[str, list[tuple[int, VoiceSource]]] = {}
    for index, source in enumerate(demo_corpus_sources()):
        by_speaker.setdefault(source.speaker, []).append((index, source))
    speaker_settings = {
        name: {
            "version": BUILD_VERSION,
            "sources": [dataclasses.asdict(s) for _, s in sources],
            "check_voices": check_voices,
            "voice_threshold": voice_threshold,
            "lengths": dataclasses.asdict(lengths),
        }
        for name, sources in by_speaker.items()
    }
    settings = json.loads(
        json.dumps(
            {
                "speakers": speaker_settings,
                "seed": seed,
                "test_speakers": test_speakers,
                "val_speakers": val_speakers,
                "max_trials": max_trials,
            }
        )
    )
    summary_path = out / "summary.json"
    if summary_path.exists() and all((out / "audio" / n / MARKER).exists() for n in by_speaker):
        done = json.loads(summary_path.read_text())
        if done.get("settings") == settings:
            return CorpusSummary.from_dict(done["summary"])

    cache = Path(cache) if cache is not None else out / ".debs"
    fetch = fetch or (lambda name: unpacked_package(name, cache))
    workers = workers or min(8, os.cpu_count() or 1)
    trees: dict[str, Path] = {}
    seen: dict[str, str] = {}  # file or audio hash -> the first file that had it
    embedder = _LazyEmbedder() if check_voices else None
    records: dict[str, dict] = {}
    with ProcessPoolExecutor(workers) if workers > 1 else _InlineExecutor() as pool:
        for number, (name, sources) in enumerate(by_speaker.items(), start=1):

            def build(tmp: Path, name: str = name, sources: list = sources) -> dict:
                def tree(package: str) -> Path:
                    if package not in trees:
                        say(f"      fetching {package}")
                        trees[package] = Path(fetch(package))
                    return trees[package]

                return _build_speaker(
                    tmp, name, sources, tree, pool, seen, embedder, voice_threshold, lengths
                )

            record = build_audio_folder(out / "audio" / name, speaker_settings[name], build)
            seen.update({h: ref for h, ref in record["hashes"].items() if h not in seen})
            records[name] = record
            state = "reused" if record["skipped"] else f"{record['seconds']:.0f} s"
            say(
                f"[{number}/{len(by_speaker)}] {name}: {len(record['items'])} items, "
                f"{record['minutes']:.1f} min, {len(record['skipped_files'])} files "
                f"skipped ({state})"
            )
    summary = _write_corpus(
        out, records, by_speaker, settings, seed, test_speakers, val_speakers, max_trials, started
    )
    say(f"corpus written to {out} in {summary.seconds:.0f} s")
    return summary


class _InlineExecutor:
    """``map`` in this process: for ``workers=1`` (tests, debugging)."""

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, function: Callable, items: Sequence, chunksize: int = 1):
        return map(function, items)


class _LazyEmbedder:
    """GE2E, loaded on first use: (list of 16 kHz waveforms) -> (N, 256) unit vectors."""

    def __init__(self) -> None:
        self.model = None

    def __call__(self, waves: list[np.ndarray]) -> np.ndarray:
        from lapsv.inference import embed_waveforms
        from lapsv.loading import load_model

        if self.model is None:
            self.model = load_model("ge2e")
        return embed_waveforms(self.model, waves)


def _build_speaker(
    folder: Path,
    speaker: str,
    sources: list[tuple[int, VoiceSource]],
    tree: Callable[[str], Path],
    pool,
    seen: dict[str, str],
    embedder: Callable[[list[np.ndarray]], np.ndarray] | None,
    threshold: float,
    lengths: ItemLengths,
) -> dict:
    """Write the items of one speaker into ``folder``; return its build record."""
    by_index = dict(sources)

    def ref(index: int, rel: str) -> str:
        source = by_index[index]
        return f"{source.package}:{source.folder}/{rel}"

    tasks, skipped = [], []
    for index, source in sources:
        package_tree = tree(source.package)
        selected, excluded = select_files(source, package_tree)
        skipped += [(ref(index, rel), "excluded by the source rules") for rel in excluded]
        tasks += [(index, source, str(package_tree), rel) for rel in selected]
    clips: list[Clip] = []
    hashes: dict[str, str] = {}
    for result in pool.map(analyse_file, tasks, chunksize=8):
        where = ref(result.source, result.rel)
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

    groups: dict[str, list[Clip]] = {}
    for clip in clips:
        groups.setdefault(clip.group, []).append(clip)
    checks, embedding, source_similarity = [], None, []
    if embedder is not None and groups:
        waves = {name: [c.wave for c in members] for name, members in groups.items()}
        checks, vectors = check_voice_groups(speaker, waves, embedder, threshold=threshold)
        for check in checks:
            if not check.kept:
                for clip in groups[check.group]:
                    reason = f"voice check: group similarity {check.similarity:.3f} < {threshold}"
                    skipped.append((ref(clip.source, clip.rel), reason))
        clips = [c for c in clips if c.group in vectors]
        embedding, source_similarity = _voice_vectors(vectors, groups, by_index)
    items = make_items(sorted(clips, key=lambda c: (c.source, c.rel)), lengths)
    used = {(index, rel) for _, pieces in items for index, rel, _, _ in pieces}
    skipped += [
        (ref(c.source, c.rel), f"left over after joining (under {lengths.join_below} s)")
        for c in clips
        if (c.source, c.rel) not in used
    ]
    rows = []
    for number, (wave, pieces) in enumerate(items, start=1):
        name = f"{speaker}_{number:04d}.flac"
        soundfile.write(str(folder / name), wave, SAMPLE_RATE, subtype="PCM_16", format="FLAC")
        clips_text = ";".join(f"{ref(i, rel)}@{a:.2f}-{b:.2f}" for i, rel, a, b in pieces)
        rows.append([name, round(len(wave) / SAMPLE_RATE, 3), clips_text])
    first_source = sources[0][1]
    return {
        "speaker": speaker,
        "package": "+".join(dict.fromkeys(s.package for _, s in sources)),
        "language": "+".join(dict.fromkeys(s.language for _, s in sources)),
        "voice": first_source.voice if len(sources) == 1 else first_source.voice.split(",")[0],
        "items": rows,
        "skipped_files": skipped,
        "groups": [dataclasses.asdict(c) for c in checks],
        "embedding": None if embedding is None else np.round(embedding, 5).tolist(),
        "source_similarity": source_similarity,
        "hashes": hashes,
    }


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


def make_items(
    clips: Sequence[Clip], lengths: ItemLengths = ItemLengths()
) -> list[tuple[np.ndarray, list[tuple[int, str, float, float]]]]:
    """Turn the clips of one speaker into items.

    Returns:
        (waveform, pieces) per item; a piece is (source index, path, start, end) with
        start/end in seconds of the original file.
    """
    rate = SAMPLE_RATE
    gap = np.zeros(int(lengths.gap * rate), np.float32)
    items: list[tuple[list[np.ndarray], list]] = []
    open_at = last_joined = None  # indices into items

    def samples(at: int) -> int:
        return sum(len(w) for w in items[at][0])

    for clip in clips:
        if clip.seconds > lengths.split_above:
            for a, b in split_points(clip.wave, lengths):
                start = clip.offset + a / rate
                piece = (clip.source, clip.rel, start, start + (b - a) / rate)
                items.append(([clip.wave[a:b]], [piece]))
            continue
        piece = (clip.source, clip.rel, clip.offset, clip.offset + clip.seconds)
        if clip.seconds >= lengths.join_below:
            items.append(([clip.wave], [piece]))
            continue
        if open_at is None:
            open_at = len(items)
            items.append(([], []))
        waves, pieces = items[open_at]
        waves += [gap, clip.wave] if waves else [clip.wave]
        pieces.append(piece)
        if samples(open_at) >= lengths.join_target * rate:
            last_joined, open_at = open_at, None
    if open_at is not None and samples(open_at) < lengths.join_below * rate:
        waves, pieces = items.pop(open_at)  # the remainder joins the last joined item if it fits
        if last_joined is not None:
            total = samples(last_joined) + len(gap) + sum(len(w) for w in waves)
            if total <= lengths.max_joined * rate:
                items[last_joined][0].extend([gap, *waves])
                items[last_joined][1].extend(pieces)
    return [(np.concatenate(waves), pieces) for waves, pieces in items]


def split_points(wave: np.ndarray, lengths: ItemLengths = ItemLengths()) -> list[tuple[int, int]]:
    """(start, end) samples of pieces of ``piece_min``-``piece_max`` s, cut at the
    quietest 20 ms within the allowed range.

    >>> pieces = split_points(np.random.default_rng(0).normal(size=16000 * 30))
    >>> all(4 * 16000 <= b - a <= 12 * 16000 for a, b in pieces), pieces[-1][1]
    (True, 480000)
    """
    rate, window = SAMPLE_RATE, SAMPLE_RATE // 50
    power = np.convolve(wave.astype(np.float64) ** 2, np.ones(window) / window, mode="same")
    low, high = int(lengths.piece_min * rate), int(lengths.piece_max * rate)
    cuts, start = [], 0
    while len(wave) - start > high:
        lo, hi = start + low, min(start + high, len(wave) - low)
        cut = lo + int(np.argmin(power[lo : hi + 1]))
        cuts.append((start, cut))
        start = cut
    cuts.append((start, len(wave)))
    return cuts


def assign_splits(
    families: dict[str, list[str]],
    *,
    seed: int,
    test: int,
    val: int,
    train_only: Sequence[str] = (),
) -> dict[str, str]:
    """Speaker -> split: ``test`` and ``val`` speakers spread over the families in
    proportion to their size (largest remainder), chosen by ``seed``.

    >>> splits = assign_splits({"a": ["a1", "a2", "a3"], "b": ["b1", "b2"]}, seed=0, test=2, val=1)
    >>> sorted(splits.values())
    ['test', 'test', 'train', 'train', 'val']
    """
    rng = np.random.default_rng(seed)
    eligible = {
        family: sorted(s for s in speakers if s not in train_only)
        for family, speakers in sorted(families.items())
    }
    split = {s: "train" for speakers in families.values() for s in speakers}
    left = dict(eligible)
    for name, wanted in (("test", test), ("val", val)):
        quota = _largest_remainder({f: len(s) for f, s in left.items()}, wanted)
        for family, speakers in left.items():
            order = [speakers[i] for i in rng.permutation(len(speakers))]
            for speaker in order[: quota[family]]:
                split[speaker] = name
        left = {f: [s for s in speakers if split[s] == "train"] for f, speakers in left.items()}
    return split


def _largest_remainder(sizes: dict[str, int], wanted: int) -> dict[str, int]:
    total = sum(sizes.values())
    wanted = min(wanted, total)
    if wanted == 0:
        return dict.fromkeys(sizes, 0)
    exact = {f: wanted * n / total for f, n in sizes.items()}
    quota = {f: min(sizes[f], int(x)) for f, x in exact.items()}
    for family in sorted(sizes, key=lambda f: (quota[f] - exact[f], -sizes[f], f)):
        if sum(quota.values()) >= wanted:
            break
        if quota[family] < sizes[family]:
            quota[family] += 1
    return quota


def _write_corpus(
    out: Path,
    records: dict[str, dict],
    by_speaker: dict[str, list[tuple[int, VoiceSource]]],
    settings: dict,
    seed: int,
    test: int,
    val: int,
    max_trials: int,
    started: float,
) -> CorpusSummary:
    """Splits, manifests, trials, items.tsv, summary.json and README.md."""
    usable = [name for name, record in records.items() if record["items"]]
    families: dict[str, list[str]] = {}
    for name in usable:
        families.setdefault(name.split("_")[0], []).append(name)
    split_of = assign_splits(
        families, seed=seed, test=test, val=val, train_only=[s for s in TRAIN_ONLY if s in usable]
    )
    utterances: dict[str, list[Utterance]] = {s: [] for s in SPLITS}
    item_lines = ["utt\tspeaker\tseconds\tclips"]
    for name in usable:
        for file_name, seconds, clips in records[name]["items"]:
            utt = f"{name}/{file_name}"
            utterances[split_of[name]].append(Utterance(utt, name, seconds))
            item_lines.append(f"{utt}\t{name}\t{seconds:.3f}\t{clips}")
    for split, utts in utterances.items():
        write_manifest(out / f"{split}.tsv", utts, root=out / "audio")
    trial_counts = []
    for split in ("val", "test"):
        chosen = trial_utterances(utterances[split], per_speaker=TRIAL_ITEMS, seed=seed)
        trials = speaker_trials(chosen, max_trials=max_trials, seed=seed)
        write_trials(out / "trials" / f"{split}.txt", trials)
        targets = sum(label for label, _, _ in trials)
        trial_counts.append((split, targets, len(trials) - targets))
    atomic_write_text(out / "items.tsv", "\n".join(item_lines) + "\n")

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
    summary = CorpusSummary(
        root=str(out),
        splits=splits,
        speakers=speakers,
        skipped=tuple((f, r) for record in records.values() for f, r in record["skipped_files"]),
        groups=tuple(GroupCheck(**g) for record in records.values() for g in record["groups"]),
        similar=_similar_speakers(records),
        trials=tuple(trial_counts),
        seconds=round(time.perf_counter() - started, 1),
    )
    atomic_write_text(out / "README.md", _readme(summary, by_speaker, records))
    atomic_write_text(
        out / "summary.json",
        json.dumps({"settings": settings, "summary": summary.to_dict()}, indent=1),
    )
    return summary


def trial_utterances(
    utterances: Sequence[Utterance], *, per_speaker: int, seed: int
) -> list[Utterance]:
    """At most ``per_speaker`` utterances of each speaker, chosen by ``seed``, so that
    speakers with hundreds of items do not take all the target trials.

    >>> utts = [Utterance(f"{s}{i}", s, 1.0) for s in "ab" for i in range(5)]
    >>> [u.utt for u in trial_utterances(utts, per_speaker=2, seed=0)]
    ['a2', 'a4', 'b1', 'b4']
    """
    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[Utterance]] = {}
    for u in utterances:
        by_speaker.setdefault(u.speaker, []).append(u)
    chosen = []
    for speaker in sorted(by_speaker):
        utts = by_speaker[speaker]
        keep = (
            sorted(rng.permutation(len(utts))[:per_speaker])
            if len(utts) > per_speaker
            else range(len(utts))
        )
        chosen += [utts[i] for i in keep]
    return chosen


def _similar_speakers(records: dict[str, dict], top: int = 10) -> tuple:
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


def _readme(
    summary: CorpusSummary,
    by_speaker: dict[str, list[tuple[int, VoiceSource]]],
    records: dict[str, dict],
) -> str:
    lines = [
        "# lapsv demo corpus",
        "",
        "Real speech from Debian packages, built by `lapsv.data.demo_corpus.build_demo_corpus`"
        " (rules: `lapsv.data.voices.demo_corpus_sources`). 16 kHz mono FLAC; items of one "
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
