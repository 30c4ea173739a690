"""The offline demo corpus: real, speaker-labelled speech from Debian packages.

Layout of ``out``::

    audio/<speaker>/<speaker>_0001.flac   16 kHz mono FLAC (PCM_16) items of 3-20 s
    audio/<speaker>/.complete             that speaker's build record (JSON)
    train.tsv, val.tsv, test.tsv          manifests (root: audio), speaker-disjoint splits
    trials/val.txt, trials/test.txt       VoxCeleb-format trials (ids relative to audio/)
    items.tsv                             provenance: the source clips of every item
    summary.json, README.md               tables, and every file or group left out and why

The voices and the rules that pick their files are in :mod:`lapsv.demo.voices`. Clips
shorter than 3 s (letters, words) are joined, with 0.25 s of silence between them, into
items of 4-7.25 s of one speaker; clips over 20 s are cut into 4-12 s pieces at their
quietest points (:mod:`lapsv.demo.items`). Every speaker folder
(:mod:`lapsv.demo.speaker_folder`) and the corpus as a whole are written atomically and
skipped when they exist with the same settings, so the build is re-runnable.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from lapsv.data.manifest import Utterance, write_manifest
from lapsv.data.prepare import speaker_trials, write_trials
from lapsv.demo.corpus_summary import SPLITS, CorpusSummary, corpus_readme, summarise_corpus
from lapsv.demo.debian import unpacked_package

# One implementation of "build a folder atomically unless its marker has these settings".
from lapsv.demo.folders import MARKER, build_audio_folder
from lapsv.demo.items import ItemLengths
from lapsv.demo.speaker_folder import Embedder, build_speaker_folder
from lapsv.demo.splits import assign_splits, trial_utterances
from lapsv.demo.voice_check import GE2EEmbedder
from lapsv.demo.voices import VoiceSource, demo_corpus_sources
from lapsv.files import atomic_write_text

BUILD_VERSION = 1
# The long dialogue voices carry most of the training speech; they are never held out.
TRAIN_ONLY = ("fillets_cs_small", "fillets_cs_big", "fillets_nl_small", "fillets_nl_big")
TRIAL_ITEMS = 50  # items per speaker in the trial lists: at most 1,225 target pairs each

SpeakerSources = dict[str, list[tuple[int, VoiceSource]]]


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
            those of another voice (see :func:`~lapsv.demo.voice_check.check_voice_groups`).
        voice_threshold: GE2E similarity below which a group is another voice.
        test_speakers, val_speakers: held-out speakers, chosen per package family.
        max_trials: most lines of each trial list.
        workers: decoding processes (default: all CPU cores, at most 8).

    Returns:
        the :class:`~lapsv.demo.corpus_summary.CorpusSummary`, also written to
        ``out/summary.json``.
    """
    started = time.perf_counter()
    out = Path(out)
    say = progress or (lambda line: None)
    lengths = ItemLengths()
    by_speaker: SpeakerSources = {}
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
    corpus_settings = {
        "seed": seed,
        "test_speakers": test_speakers,
        "val_speakers": val_speakers,
        "max_trials": max_trials,
    }
    settings = json.loads(json.dumps({"speakers": speaker_settings, **corpus_settings}))
    done = _finished_summary(out, by_speaker, settings)
    if done is not None:
        return done

    cache = Path(cache) if cache is not None else out / ".debs"
    records = _build_speakers(
        out,
        by_speaker,
        speaker_settings,
        fetch=fetch or (lambda name: unpacked_package(name, cache)),
        workers=workers or min(8, os.cpu_count() or 1),
        embedder=GE2EEmbedder() if check_voices else None,
        threshold=voice_threshold,
        lengths=lengths,
        say=say,
    )
    summary = _write_corpus(
        out, records, by_speaker, settings, seed, test_speakers, val_speakers, max_trials, started
    )
    say(f"corpus written to {out} in {summary.seconds:.0f} s")
    return summary


def _finished_summary(
    out: Path, by_speaker: SpeakerSources, settings: dict
) -> CorpusSummary | None:
    """The summary of a complete corpus in ``out`` built with ``settings``, else None."""
    summary_path = out / "summary.json"
    if summary_path.exists() and all((out / "audio" / n / MARKER).exists() for n in by_speaker):
        done = json.loads(summary_path.read_text())
        if done.get("settings") == settings:
            return CorpusSummary.from_dict(done["summary"])
    return None


def _build_speakers(
    out: Path,
    by_speaker: SpeakerSources,
    speaker_settings: dict[str, dict],
    *,
    fetch: Callable[[str], Path],
    workers: int,
    embedder: Embedder | None,
    threshold: float,
    lengths: ItemLengths,
    say: Callable[[str], None],
) -> dict[str, dict]:
    """Build (or reuse) ``out/audio/<speaker>`` of every speaker; speaker -> build record."""
    trees: dict[str, Path] = {}
    seen: dict[str, str] = {}  # file or audio hash -> the first file that had it
    records: dict[str, dict] = {}
    with ProcessPoolExecutor(workers) if workers > 1 else _InlineExecutor() as pool:
        for number, (name, sources) in enumerate(by_speaker.items(), start=1):

            def build(tmp: Path, name: str = name, sources: list = sources) -> dict:
                def tree(package: str) -> Path:
                    if package not in trees:
                        say(f"      fetching {package}")
                        trees[package] = Path(fetch(package))
                    return trees[package]

                return build_speaker_folder(
                    tmp, name, sources, tree, pool, seen, embedder, threshold, lengths
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
    return records


class _InlineExecutor:
    """``map`` in this process: for ``workers=1`` (tests, debugging)."""

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def map(self, function: Callable, items: Sequence, chunksize: int = 1):
        return map(function, items)


def _write_corpus(
    out: Path,
    records: dict[str, dict],
    by_speaker: SpeakerSources,
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
    summary = summarise_corpus(out, records, split_of, utterances, trial_counts, started)
    atomic_write_text(out / "README.md", corpus_readme(summary, by_speaker, records))
    atomic_write_text(
        out / "summary.json",
        json.dumps({"settings": settings, "summary": summary.to_dict()}, indent=1),
    )
    return summary
