"""Simulated conversations for diarization tests, with a reference RTTM for each.

Whole utterances of a few speakers of a speaker-labelled manifest are laid out as turns
(never cut), separated by short silences or, at some speaker changes, overlapping; the
demo's noise, music or babble is added over the whole conversation, after room reverb on
about a third of them. Output folder::

    out/conv_000.flac        16 kHz mono PCM_16
    out/conv_000.rttm        its reference (file id = conversation id)
    out/all.rttm             every reference in one file
    out/conversations.json   settings and per-conversation metadata
    out/.complete            the marker of :func:`lapsv.demo.folders.build_audio_folder`

Rules of one conversation (its random generators derive from ``(seed, index)`` only):

* ``speakers`` (low, high) distinct speakers (capped at the manifest's), a target length
  drawn from ``minutes``; no utterance is used twice;
* until everyone has spoken, the next speaker is one who has not; after that the speaker
  continues with probability :data:`CONTINUE_CHANCE`, else one of the others speaks;
* between the speech of two turns, a silence of :data:`SILENCE` seconds; at
  :data:`OVERLAP_CHANCE` of the speaker changes an overlap of :data:`OVERLAP` seconds
  instead, if that is at most half the speech of both turns (else a silence);
* the conversation ends with the first turn that brings it to the target length once
  everyone has spoken: it is at least the target long (unless the speakers run out of
  utterances) and overruns it by less than one silence and one utterance (unless the
  first turns, one per speaker, are already longer than the target);
* a reference segment is a stretch of a turn's speech: the 10 ms frames of the utterance
  at least halfway (in dB) from its noise floor up to its loudest frame, and never more
  than :data:`TRIM_DB` dB below that frame, with pauses shorter than :data:`MIN_PAUSE`
  bridged (see :func:`speech_runs`): a pause inside a turn (the corpus joins short clips
  with 0.25 s of silence) is not speech, nor is a recording's steady hum around a short
  word; the mix holds the whole, untrimmed utterance;
* each speaker's speech level (the mean power of its reference frames) is drawn from an
  :data:`LEVEL_SPREAD` dB range, and each turn is scaled to within :data:`TURN_SPREAD`/2
  dB of it (LibriMix draws each source's loudness from an 8 dB range too), so the noise's
  SNR holds for every voice: the corpus keeps its recordings' levels, which lie 26 dB
  apart, and FORMAT 3 mixed them as recorded;
* the mix is scaled to a peak of :data:`PEAK`, so it never clips.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

from lapsv.audio import SAMPLE_RATE, load_audio
from lapsv.data.augment import NoiseBank, RirBank, add_noise, babble, reverberate
from lapsv.data.manifest import Manifest, Utterance, read_manifest
from lapsv.demo.folders import build_audio_folder
from lapsv.diarization.rttm import format_rttm
from lapsv.diarization.segments import Segment
from lapsv.errors import ConfigError
from lapsv.files import atomic_write_text

FORMAT = 4  # version of the layout and rules; part of the settings in the marker
SILENCE = (0.1, 1.5)  # seconds between the speech of two turns
OVERLAP = (0.2, 1.0)  # seconds of overlap at an overlapping speaker change
OVERLAP_CHANCE = 0.1  # share of the speaker changes that overlap
CONTINUE_CHANCE = 0.15  # chance that a speaker takes the next turn too
SNR_DB = (5.0, 20.0)
REVERB_CHANCE = 1 / 3
BABBLE_TALKERS = (3, 7)
NOISE_KINDS = {"music": "music", "noise": "noise", "babble": "speech"}  # kind -> MUSAN folder
TRIM_DB = 40.0  # speech is never quieter than this below the loudest frame
FLOOR_PERCENTILE = 10  # the noise floor: this percentile of the non-silent frames' power
QUIET_FLOOR_DB = -20.0  # a floor louder than this is speech itself (an item without pauses)
MIN_PAUSE = 0.2  # seconds: shorter pauses inside a turn stay in its reference segment
FRAME = SAMPLE_RATE // 100  # 10 ms
PEAK = 0.9
SPEECH_LEVEL_DB = -26.0  # the loudest speaker's speech level before the mix is scaled to PEAK
LEVEL_SPREAD = 8.0  # dB: the range of the speakers' speech levels in one conversation
TURN_SPREAD = 2.0  # dB: the range of a turn's level around its speaker's
PROGRESS_EVERY = 10
REFERENCE = "all.rttm"
METADATA = "conversations.json"


@dataclasses.dataclass(frozen=True)
class Conversation:
    """One simulated conversation: its id (the file stem) and how it was made.

    ``seconds`` is the audio length, ``overlap`` the seconds where two speakers talk,
    ``snr`` (dB) and ``noise`` ("music", "noise", "babble") are None without noise,
    ``utterances`` the manifest ids in turn order, ``segments`` the reference, ``levels``
    each speaker's speech level in dB below the loudest possible (0 to -:data:`LEVEL_SPREAD`).
    """

    id: str
    speakers: tuple[str, ...]
    seconds: float
    overlap: float
    snr: float | None
    noise: str | None
    reverb: bool
    utterances: tuple[str, ...]
    segments: tuple[Segment, ...]
    levels: tuple[float, ...]

    def to_json(self) -> dict:
        """Metadata as JSON (segments as [start, end, speaker] lists)."""
        record = dataclasses.asdict(self)
        record["segments"] = [[s.start, s.end, s.speaker] for s in self.segments]
        return record

    @classmethod
    def from_json(cls, record: dict) -> Conversation:
        return cls(
            **{
                **record,
                "speakers": tuple(record["speakers"]),
                "utterances": tuple(record["utterances"]),
                "levels": tuple(record["levels"]),
                "segments": tuple(Segment(a, b, s) for a, b, s in record["segments"]),
            }
        )


@dataclasses.dataclass(frozen=True)
class ConversationSet:
    """The output of :func:`build_conversations`; ``reference`` is ``folder/all.rttm``."""

    folder: Path
    conversations: list[Conversation]
    reference: Path
    skipped: bool = False

    def audio_path(self, conversation: Conversation) -> Path:
        return self.folder / f"{conversation.id}.flac"


@dataclasses.dataclass(frozen=True)
class _Turn:
    utterance: Utterance
    wave: np.ndarray  # (N,) float32, untrimmed
    offset: int  # first sample in the mix, before the mix is shifted to start at 0
    speech: tuple[int, int]  # [start, end) samples of speech within ``wave``
    runs: tuple[tuple[int, int], ...]  # the speech stretches within ``wave`` (reference)


def speech_runs(
    wave: np.ndarray, *, floor_db: float = TRIM_DB, min_pause: float = MIN_PAUSE
) -> list[tuple[int, int]]:
    """[start, end) samples of each stretch of speech in ``wave`` (N,).

    The wave is cut into 10 ms frames. The noise floor is the
    :data:`FLOOR_PERCENTILE`-th percentile of the frames' power (digital silence left out);
    a frame is speech when its power is at least halfway, in dB, from that floor up to
    the loudest frame, and at most ``floor_db`` dB below it. A floor within
    :data:`QUIET_FLOOR_DB` of the peak is the speech itself (an item without pauses), and
    then only ``floor_db`` applies. So a letter spoken over a
    recording's steady hum 24 dB down is the letter, not the whole clip (the rule before
    FORMAT 3 kept every frame within 40 dB of the peak). Silences shorter than
    ``min_pause`` seconds between two speech frames are bridged.

    >>> wave = np.concatenate([np.zeros(800), np.ones(1600), np.zeros(4800), np.ones(800)])
    >>> speech_runs(wave)
    [(800, 2400), (7200, 8000)]
    >>> hum = np.full(8000, 0.06)  # a steady hum 24 dB below a 0.1 s word
    >>> hum[3200:4800] = 1.0
    >>> speech_runs(hum)
    [(3200, 4800)]
    """
    if len(wave) == 0:
        return [(0, 0)]
    padded = np.zeros(-(-len(wave) // FRAME) * FRAME)
    padded[: len(wave)] = wave
    power = np.mean(np.square(padded.reshape(-1, FRAME)), axis=1)
    peak = power.max()
    if peak == 0:  # all zeros
        return [(0, len(wave))]
    with np.errstate(divide="ignore"):
        level = 10.0 * np.log10(power / peak)  # dB below the loudest frame; -inf: zeros
    floor = np.percentile(level[level > -100.0], FLOOR_PERCENTILE)
    threshold = max(-floor_db, floor / 2) if floor <= QUIET_FLOOR_DB else -floor_db
    loud = np.flatnonzero(level >= threshold)
    pause_frames = round(min_pause * SAMPLE_RATE / FRAME)
    breaks = np.flatnonzero(np.diff(loud) > pause_frames)
    starts = np.r_[loud[0], loud[breaks + 1]]
    ends = np.r_[loud[breaks], loud[-1]] + 1
    return [
        (int(a) * FRAME, min(int(b) * FRAME, len(wave))) for a, b in zip(starts, ends, strict=True)
    ]


def speech_bounds(wave: np.ndarray, *, floor_db: float = TRIM_DB) -> tuple[int, int]:
    """[start, end) samples of ``wave`` (N,) without its leading and trailing silence.

    >>> wave = np.concatenate([np.zeros(800), np.ones(1600), np.zeros(800)])
    >>> speech_bounds(wave)
    (800, 2400)
    """
    runs = speech_runs(wave, floor_db=floor_db)
    return runs[0][0], runs[-1][1]


def _next_speaker(
    rng: np.random.Generator, current: str | None, spoken: set[str], pools: dict[str, list]
) -> str | None:
    """Who takes the next turn (module rules); None when nobody has utterances left."""
    available = [s for s in pools if pools[s]]
    if not available:
        return None
    waiting = [s for s in available if s not in spoken]
    if waiting:
        return waiting[int(rng.integers(len(waiting)))]
    others = [s for s in available if s != current]
    if not others or (current in available and rng.random() < CONTINUE_CHANCE):
        return current if current in available else None
    return others[int(rng.integers(len(others)))]


def _gap(rng: np.random.Generator, change: bool, before: int, after: int) -> int:
    """Samples from the end of one turn's speech to the start of the next (< 0: overlap)."""
    if change and rng.random() < OVERLAP_CHANCE:
        limit = min(OVERLAP[1], before / 2 / SAMPLE_RATE, after / 2 / SAMPLE_RATE)
        if limit >= OVERLAP[0]:
            return -round(rng.uniform(OVERLAP[0], limit) * SAMPLE_RATE)
    return round(rng.uniform(*SILENCE) * SAMPLE_RATE)


def _plan(
    rng: np.random.Generator,
    manifest: Manifest,
    by_speaker: dict[str, list[Utterance]],
    target: int,
) -> list[_Turn]:
    """The turns of one conversation of ``by_speaker``'s speakers, ``target`` samples long."""
    pools = {s: [utts[i] for i in rng.permutation(len(utts))] for s, utts in by_speaker.items()}
    turns: list[_Turn] = []
    spoken: set[str] = set()
    current: str | None = None
    first = last = speech_end = 0  # extent of the mix, end of the latest speech
    while True:
        speaker = _next_speaker(rng, current, spoken, pools)
        if speaker is None:
            break
        utterance = pools[speaker].pop()
        wave = load_audio(manifest.audio_path(utterance))
        runs = speech_runs(wave)
        start, end = runs[0][0], runs[-1][1]
        offset = 0
        if turns:
            before = turns[-1].speech[1] - turns[-1].speech[0]
            offset = speech_end + _gap(rng, speaker != current, before, end - start) - start
        turns.append(_Turn(utterance, wave, offset, (start, end), tuple(runs)))
        first, last = min(first, offset), max(last, offset + len(wave))
        speech_end = offset + end
        spoken.add(speaker)
        current = speaker
        if last - first >= target and len(spoken) == len(pools):
            break
    return turns


def speech_level(wave: np.ndarray, runs: tuple[tuple[int, int], ...]) -> float | None:
    """dB (re full scale) of the mean power of ``wave`` (N,) over ``runs``; None if silent.

    >>> speech_level(np.full(100, 0.1), ((0, 50),))
    -20.0
    """
    power = sum(float(np.sum(np.square(wave[a:b], dtype=np.float64))) for a, b in runs)
    samples = sum(b - a for a, b in runs)
    return None if power == 0 else round(10.0 * float(np.log10(power / samples)), 6)


def _level_turns(
    turns: list[_Turn], speakers: tuple[str, ...], rng: np.random.Generator
) -> tuple[list[_Turn], tuple[float, ...]]:
    """Turns scaled to their speakers' levels (module rules), and those levels (dB)."""
    levels = tuple(round(float(x), 2) for x in rng.uniform(-LEVEL_SPREAD, 0.0, len(speakers)))
    by_speaker = dict(zip(speakers, levels, strict=True))
    scaled = []
    for turn in turns:
        jitter = rng.uniform(-TURN_SPREAD / 2, TURN_SPREAD / 2)
        level = speech_level(turn.wave, turn.runs)
        if level is not None:
            target = SPEECH_LEVEL_DB + by_speaker[turn.utterance.speaker] + jitter
            wave = (turn.wave * 10.0 ** ((target - level) / 20.0)).astype(np.float32)
            turn = dataclasses.replace(turn, wave=wave)
        scaled.append(turn)
    return scaled, levels


def _overlap_seconds(segments: list[Segment]) -> float:
    """Seconds where two or more segments are active."""
    edges = sorted([(s.start, 1) for s in segments] + [(s.end, -1) for s in segments])
    total, active, previous = 0.0, 0, 0.0
    for time_, step in edges:
        if active >= 2:
            total += time_ - previous
        active += step
        previous = time_
    return total


def _corrupt(
    wave: np.ndarray, rng: np.random.Generator, noise: NoiseBank, rirs: RirBank
) -> tuple[np.ndarray, str, float, bool]:
    """Reverb (sometimes), then noise, music or babble: (wave, kind, snr, reverb)."""
    reverb = bool(rng.random() < REVERB_CHANCE)
    if reverb:
        wave = reverberate(wave, rirs.sample(rng))
    kinds = [kind for kind, folder in NOISE_KINDS.items() if folder in noise.kinds]
    kind = kinds[int(rng.integers(len(kinds)))]
    snr = float(rng.uniform(*SNR_DB))
    if kind == "babble":
        talkers = int(rng.integers(BABBLE_TALKERS[0], BABBLE_TALKERS[1] + 1))
        wave = babble(wave, [noise.sample("speech", rng) for _ in range(talkers)], snr, rng)
    else:
        wave = add_noise(wave, noise.sample(kind, rng), snr, rng)
    return wave, kind, snr, reverb


def _conversation(
    index: int,
    name: str,
    manifest: Manifest,
    by_speaker: dict[str, list[Utterance]],
    options: dict,
    banks: tuple[NoiseBank, RirBank] | None,
) -> tuple[Conversation, np.ndarray]:
    """Conversation ``index`` of the set: its record and its (N,) float32 mix."""
    rng = np.random.default_rng((options["seed"], index, 0))
    low, high = (min(n, len(by_speaker)) for n in options["speakers"])
    names = sorted(by_speaker)
    chosen = sorted(names[i] for i in rng.choice(len(names), rng.integers(low, high + 1), False))
    target = round(rng.uniform(*options["minutes"]) * 60 * SAMPLE_RATE)
    turns = _plan(rng, manifest, {s: by_speaker[s] for s in chosen}, target)
    turns, levels = _level_turns(
        turns, tuple(chosen), np.random.default_rng((options["seed"], index, 2))
    )
    shift = -min(t.offset for t in turns)
    mix = np.zeros(max(t.offset + len(t.wave) for t in turns) + shift, dtype=np.float32)
    segments = []
    for turn in turns:
        start = turn.offset + shift
        mix[start : start + len(turn.wave)] += turn.wave
        for a, b in turn.runs:
            seconds = ((start + a) / SAMPLE_RATE, (start + b) / SAMPLE_RATE)
            segments.append(Segment(*seconds, turn.utterance.speaker))
    kind, snr, reverb = None, None, False
    if banks is not None:
        noise_rng = np.random.default_rng((options["seed"], index, 1))
        mix, kind, snr, reverb = _corrupt(mix, noise_rng, *banks)
    peak = float(np.abs(mix).max())
    if peak > 0:
        mix = (mix * (PEAK / peak)).astype(np.float32)
    record = Conversation(
        id=name,
        speakers=tuple(chosen),
        seconds=round(len(mix) / SAMPLE_RATE, 3),
        overlap=round(_overlap_seconds(segments), 3),
        snr=None if snr is None else round(snr, 2),
        noise=kind,
        reverb=reverb,
        utterances=tuple(t.utterance.utt for t in turns),
        segments=tuple(sorted(segments)),
        levels=levels,
    )
    return record, mix


def _check_options(count: int, speakers: tuple[int, int], minutes: tuple[float, float]) -> None:
    if count < 1:
        raise ConfigError(f"count must be at least 1, got {count}")
    if len(speakers) != 2 or not 1 <= speakers[0] <= speakers[1]:
        raise ConfigError(f"speakers must be (low, high) with 1 <= low <= high, got {speakers}")
    if len(minutes) != 2 or not 0 < minutes[0] <= minutes[1]:
        raise ConfigError(f"minutes must be (low, high) with 0 < low <= high, got {minutes}")


def _banks(noise: Path) -> tuple[NoiseBank, RirBank]:
    if not noise.is_dir():
        raise ConfigError(
            f"{noise}: no such noise folder; build it with lapsv.demo.noise.build_demo_noise "
            "or pass noise=None for clean conversations"
        )
    return NoiseBank(noise / "musan"), RirBank(noise / "rirs")


def _write_if_changed(path: Path, text: str) -> None:
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def _write_references(out: Path, conversations: list[Conversation], settings: dict) -> None:
    """``<id>.rttm``, ``all.rttm`` and ``conversations.json``: each atomically, where missing
    or different (an interrupted first run is completed by the next)."""
    texts = {c.id: format_rttm(c.id, c.segments) for c in conversations}
    for name, text in texts.items():
        _write_if_changed(out / f"{name}.rttm", text)
    _write_if_changed(out / REFERENCE, "".join(texts.values()))
    metadata = [{k: v for k, v in c.to_json().items() if k != "segments"} for c in conversations]
    body = {"settings": settings, "conversations": metadata}
    _write_if_changed(out / METADATA, json.dumps(body, indent=1) + "\n")


def build_conversations(
    manifest: Path,
    out: Path,
    *,
    noise: Path | None,
    count: int = 40,
    speakers: tuple[int, int] = (2, 5),
    minutes: tuple[float, float] = (1.0, 4.0),
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> ConversationSet:
    """Build ``count`` conversations of ``manifest``'s speakers in ``out`` (module docstring).

    The audio is built atomically with a marker of the settings: a second call with the
    same settings (and an unchanged manifest file) reuses it; the RTTM files and
    ``conversations.json`` are then written from the marker, each atomically, where they
    are missing or differ. The same inputs and ``seed`` give byte-identical files.

    Args:
        manifest: speaker-labelled utterances (:mod:`lapsv.data.manifest`).
        out: output folder; replaced as a whole when the settings change.
        noise: a demo noise folder (``musan/`` and ``rirs/``, :mod:`lapsv.demo.noise`),
            or None for clean conversations (no noise, no reverb).
        count: conversations, ids ``conv_000``, ``conv_001``, ...
        speakers: (low, high) speakers per conversation, capped at the manifest's.
        minutes: (low, high) target length of a conversation.
        seed: seed of every random choice.
        progress: called with a line every 10 conversations and at the end.

    Returns:
        The folder, the conversation records and the combined reference RTTM.

    Raises:
        ConfigError: bad options, an empty manifest or a missing noise folder.
        AudioError: an utterance or noise file cannot be read.
    """
    _check_options(count, speakers, minutes)
    manifest_path, out = Path(manifest).resolve(), Path(out)
    corpus = read_manifest(manifest_path)
    by_speaker: dict[str, list[Utterance]] = {}
    for utterance in corpus:
        by_speaker.setdefault(utterance.speaker, []).append(utterance)
    if not by_speaker:
        raise ConfigError(f"{manifest_path}: the manifest lists no utterances")
    settings = {
        "format": FORMAT,
        "manifest": str(manifest_path),
        "manifest_modified_ns": manifest_path.stat().st_mtime_ns,
        "noise": None if noise is None else str(Path(noise).resolve()),
        "count": count,
        "speakers": list(speakers),
        "minutes": list(minutes),
        "seed": seed,
    }
    say = progress or (lambda line: None)
    width = max(3, len(str(count - 1)))

    def build(tmp: Path) -> dict:
        banks = None if noise is None else _banks(Path(noise))
        started, records = time.perf_counter(), []
        for index in range(count):
            name = f"conv_{index:0{width}d}"
            record, mix = _conversation(index, name, corpus, by_speaker, settings, banks)
            soundfile.write(str(tmp / f"{name}.flac"), mix, SAMPLE_RATE, "PCM_16", format="FLAC")
            records.append(record.to_json())
            if (index + 1) % PROGRESS_EVERY == 0 or index + 1 == count:
                elapsed = time.perf_counter() - started
                say(f"conversations: {index + 1}/{count} built ({elapsed:.0f} s)")
        return {"conversations": records}

    summary = build_audio_folder(out, settings, build)
    if summary["skipped"]:
        say(f"conversations: {out} reused (same settings)")
    conversations = [Conversation.from_json(r) for r in summary["conversations"]]
    _write_references(out, conversations, settings)
    return ConversationSet(out, conversations, out / REFERENCE, bool(summary["skipped"]))
