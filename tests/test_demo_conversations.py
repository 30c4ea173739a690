"""Simulated diarization conversations on a tiny generated corpus: layout, rules, re-runs."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

from lapsv.data.manifest import Utterance, read_manifest, write_manifest
from lapsv.demo.conversations import (
    LEVEL_SPREAD,
    OVERLAP,
    PEAK,
    SILENCE,
    SNR_DB,
    TURN_SPREAD,
    _gap,
    build_conversations,
    speech_bounds,
)
from lapsv.diarization.rttm import read_rttm
from lapsv.errors import ConfigError
from synthetic import voice

MINUTES = (0.2, 0.4)
EPS = 0.002  # RTTM times have 3 decimals


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, float]]:
    """5 speakers x 8 utterances: 0.1-0.4 s of digital silence, 1.5-3 s of a speaker's
    'voice', 0.1-0.4 s of silence; speaker k recorded 6k dB quieter than speaker 0 (the
    demo corpus's voices lie 26 dB apart). Returns the manifest and utt -> seconds of voice."""
    root = tmp_path_factory.mktemp("conv_corpus")
    rng = np.random.default_rng(0)
    rows, speech = [], {}
    for s in range(5):
        name = f"spk{s:02d}"
        f0, formant = 100 + 30 * s, 600 + 350 * s
        for u in range(8):
            utt = f"{name}/{u:02d}.flac"
            body = voice(f0, formant, float(rng.uniform(1.5, 3.0)), rng)
            lead, tail = (np.zeros(int(rng.uniform(0.1, 0.4) * 16000)) for _ in range(2))
            wave = np.concatenate([lead, body, tail]) * 10 ** (-6 * s / 20)
            (root / "audio" / name).mkdir(parents=True, exist_ok=True)
            soundfile.write(root / "audio" / utt, wave, 16000, subtype="PCM_16")
            rows.append(Utterance(utt, name, len(wave) / 16000))
            speech[utt] = len(body) / 16000
    write_manifest(root / "test.tsv", rows, root=root / "audio")
    return root / "test.tsv", speech


@pytest.fixture(scope="module")
def noise_folder(tmp_path_factory) -> Path:
    """The demo noise layout: one file each of noise, music, babble speech, one RIR."""
    root = tmp_path_factory.mktemp("conv_noise")
    rng = np.random.default_rng(1)
    t = np.arange(32000) / 16000
    files = {
        "musan/noise/hum.wav": 0.2 * rng.normal(size=16000),
        "musan/music/chord.wav": 0.2 * (np.sin(2 * np.pi * 220 * t) + np.sin(2 * np.pi * 330 * t)),
        "musan/speech/talker.wav": voice(180, 900, 2.0, rng),
        "rirs/simulated_rirs/Room0001-00001.wav": rng.normal(size=3200)
        * np.exp(-np.arange(3200) / 400),
    }
    for name, wave in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(root / name, wave / np.abs(wave).max() * 0.9, 16000)
    return root


@pytest.fixture(scope="module")
def clean(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv_clean") / "set"
    return build_conversations(corpus[0], out, noise=None, count=16, minutes=MINUTES, seed=0)


@pytest.fixture(scope="module")
def noisy(corpus, noise_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("conv_noisy") / "set"
    return build_conversations(corpus[0], out, noise=noise_folder, count=9, minutes=MINUTES, seed=0)


def _hashes(folder: Path) -> dict[str, str]:
    """File name -> sha256 of every output file (the marker holds build times: left out)."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.name != ".complete"
    }


def _outside(conv, samples: int) -> np.ndarray:
    """(samples,) bool: more than 20 ms away from every reference segment."""
    outside = np.ones(samples, dtype=bool)
    for s in conv.segments:
        outside[max(int((s.start - 0.02) * 16000), 0) : int((s.end + 0.02) * 16000)] = False
    assert outside.sum() > 0.1 * 16000  # the padding and the silences between turns
    return outside


def test_layout_and_metadata(noisy):
    names = set(_hashes(noisy.folder))
    ids = [c.id for c in noisy.conversations]
    assert ids == [f"conv_{i:03d}" for i in range(9)]
    assert names == {f"{i}{s}" for i in ids for s in (".flac", ".rttm")} | {
        "all.rttm",
        "conversations.json",
    }
    assert noisy.reference == noisy.folder / "all.rttm"
    info = soundfile.info(str(noisy.audio_path(noisy.conversations[0])))
    assert (info.samplerate, info.channels, info.subtype, info.format) == (
        16000,
        1,
        "PCM_16",
        "FLAC",
    )
    records = json.loads((noisy.folder / "conversations.json").read_text())["conversations"]
    assert [r["id"] for r in records] == ids
    assert records[0]["speakers"] == list(noisy.conversations[0].speakers)
    combined = read_rttm(noisy.reference)
    assert combined == {
        c.id: read_rttm(noisy.folder / f"{c.id}.rttm")[c.id] for c in noisy.conversations
    }


def test_same_seed_gives_identical_files_and_another_seed_differs(
    corpus, noise_folder, noisy, tmp_path
):
    again = build_conversations(
        corpus[0], tmp_path / "again", noise=noise_folder, count=9, minutes=MINUTES, seed=0
    )
    assert not again.skipped
    assert _hashes(again.folder) == _hashes(noisy.folder)
    other = build_conversations(
        corpus[0], tmp_path / "other", noise=noise_folder, count=9, minutes=MINUTES, seed=1
    )
    first, second = _hashes(noisy.folder), _hashes(other.folder)
    assert all(first[f"conv_{i:03d}.flac"] != second[f"conv_{i:03d}.flac"] for i in range(9))


def test_references_name_the_speakers_and_fit_the_audio(clean, corpus):
    manifest = read_manifest(corpus[0])
    longest = max(u.seconds for u in manifest)
    counts = set()
    for conv in clean.conversations:
        references = read_rttm(clean.folder / f"{conv.id}.rttm")
        assert list(references) == [conv.id]
        segments = references[conv.id]
        speakers = {s.speaker for s in segments}
        assert speakers == set(conv.speakers) <= set(manifest.speakers)
        assert 2 <= len(speakers) <= 5
        counts.add(len(speakers))
        seconds = soundfile.info(str(clean.audio_path(conv))).duration
        assert seconds == pytest.approx(conv.seconds, abs=1e-3)
        assert all(0 <= s.start < s.end <= seconds + EPS for s in segments)
        # at least the target; past it by less than one silence and one (last) utterance
        assert MINUTES[0] * 60 <= seconds < MINUTES[1] * 60 + SILENCE[1] + longest
        used = [u.utt for u in manifest if u.utt in conv.utterances]
        assert len(used) == len(conv.utterances) == len(set(conv.utterances)) == len(segments)
    assert len(counts) > 1


def test_turns_are_separated_by_a_silence_or_a_bounded_overlap(clean):
    overlaps, continued = 0, 0
    for conv in clean.conversations:
        segments = read_rttm(clean.folder / f"{conv.id}.rttm")[conv.id]
        assert [s.start for s in segments] == sorted(s.start for s in segments)
        overlap_total = 0.0
        for before, after in itertools.pairwise(segments):
            gap = after.start - before.end
            assert after.end > before.end  # turns never nest
            if gap >= 0:
                assert SILENCE[0] - EPS <= gap <= SILENCE[1] + EPS
                continued += before.speaker == after.speaker
                continue
            assert before.speaker != after.speaker
            assert OVERLAP[0] - EPS <= -gap <= OVERLAP[1] + EPS
            assert -gap <= min(before.duration, after.duration) / 2 + EPS
            overlaps += 1
            overlap_total -= gap
        assert conv.overlap == pytest.approx(overlap_total, abs=0.01)
    assert overlaps > 0  # ~10 % of ~100 speaker changes
    assert continued > 0  # a speaker sometimes takes two turns in a row


def test_references_mark_the_speech_and_the_mix_keeps_the_whole_utterances(clean, corpus):
    speech = corpus[1]
    for conv in clean.conversations[:6]:
        for utt, segment in zip(conv.utterances, conv.segments, strict=True):
            assert segment.duration == pytest.approx(speech[utt], abs=0.021)  # 10 ms frames
        wave, _ = soundfile.read(str(clean.audio_path(conv)), dtype="float32")
        assert np.abs(wave[_outside(conv, len(wave))]).max() < 1e-3  # the silent padding
        assert np.abs(wave).max() == pytest.approx(PEAK, abs=1e-3)
        assert conv.snr is None and conv.noise is None and not conv.reverb


def test_each_voice_is_mixed_at_its_drawn_level_whatever_its_recording_level(clean):
    """Turn levels in the mix follow the speakers' drawn levels, not the 24 dB spread of
    the recordings, so the noise's SNR holds for every voice."""
    for conv in clean.conversations:
        wave, _ = soundfile.read(str(clean.audio_path(conv)), dtype="float64")
        assert all(-LEVEL_SPREAD <= level <= 0 for level in conv.levels)
        drawn = dict(zip(conv.speakers, conv.levels, strict=True))
        offsets = []
        for segment in conv.segments:
            a, b = round(segment.start * 16000), round(segment.end * 16000)
            alone = np.ones(b - a, dtype=bool)
            for other in conv.segments:
                if other is not segment:
                    lo, hi = round(other.start * 16000) - a, round(other.end * 16000) - a
                    alone[max(lo, 0) : max(hi, 0)] = False
            if alone.sum() > 1600:
                level = 10 * np.log10(np.mean(np.square(wave[a:b][alone])))
                offsets.append(level - drawn[segment.speaker])
        assert max(offsets) - min(offsets) <= TURN_SPREAD + 0.3  # 10 ms frame edges


def test_noise_and_reverb(noisy):
    convs = noisy.conversations
    assert all(SNR_DB[0] <= c.snr <= SNR_DB[1] for c in convs)
    assert {c.noise for c in convs} <= {"music", "noise", "babble"}
    assert len({c.noise for c in convs}) > 1
    assert 0 < sum(c.reverb for c in convs) < len(convs)
    for conv in convs[:3]:
        wave, _ = soundfile.read(str(noisy.audio_path(conv)), dtype="float32")
        assert np.abs(wave).max() <= PEAK + 1e-3  # never clips
        assert np.abs(wave[_outside(conv, len(wave))]).max() > 1e-2  # noise between turns


def test_rerun_is_skipped_and_new_settings_rebuild(corpus, tmp_path):
    lines: list[str] = []
    options = {"noise": None, "count": 3, "minutes": MINUTES, "progress": lines.append}
    first = build_conversations(corpus[0], tmp_path / "set", **options)
    assert not first.skipped
    assert lines[-1].startswith("conversations: 3/3 built")
    stamps = {p.name: p.stat().st_mtime_ns for p in first.folder.iterdir()}
    (first.folder / "conv_001.rttm").unlink()  # e.g. killed before the references were written
    second = build_conversations(corpus[0], tmp_path / "set", **options)
    assert second.skipped and second.conversations == first.conversations
    assert "reused" in lines[-1]
    assert (first.folder / "conv_001.rttm").is_file()
    again = {p.name: p.stat().st_mtime_ns for p in first.folder.iterdir()}
    assert {k: v for k, v in again.items() if k != "conv_001.rttm"} == {
        k: v for k, v in stamps.items() if k != "conv_001.rttm"
    }
    third = build_conversations(corpus[0], tmp_path / "set", **{**options, "count": 2})
    assert not third.skipped
    assert sorted(p.name for p in third.folder.glob("*.flac")) == ["conv_000.flac", "conv_001.flac"]


def test_speaker_count_is_capped_at_the_manifest(corpus, tmp_path):
    built = build_conversations(
        corpus[0], tmp_path / "set", noise=None, count=1, speakers=(6, 9), minutes=MINUTES
    )
    assert len(built.conversations[0].speakers) == 5


@pytest.mark.parametrize(
    "options",
    [{"count": 0}, {"speakers": (3, 2)}, {"minutes": (0.0, 1.0)}, {"noise": Path("/nowhere")}],
)
def test_bad_options_are_config_errors(corpus, tmp_path, options):
    with pytest.raises(ConfigError):
        build_conversations(corpus[0], tmp_path / "set", **{"noise": None, **options})
    assert not (tmp_path / "set").exists()


def test_speech_bounds_trim_only_the_ends():
    rng = np.random.default_rng(0)
    loud = rng.normal(0, 0.3, 4800)
    wave = np.concatenate([np.zeros(1600), loud, np.zeros(3200), loud, 1e-5 * loud[:800]])
    assert speech_bounds(wave) == (1600, 1600 + 4800 + 3200 + 4800)


def test_an_overlap_is_at_most_half_of_either_turn():
    rng = np.random.default_rng(0)
    short, long = 16000 // 2, 16000 * 5  # 0.5 s and 5 s of speech
    gaps = np.array([_gap(rng, True, a, b) for a, b in [(short, long), (long, short)] * 500])
    assert (gaps < 0).any() and -gaps.min() <= short / 2
    assert (-gaps[gaps < 0] >= OVERLAP[0] * 16000).all()
    same = np.array([_gap(rng, False, long, long) for _ in range(300)])
    assert (same >= SILENCE[0] * 16000).all() and (same <= SILENCE[1] * 16000).all()
