"""The demo corpus builder on a generated fake package tree: no apt, no network."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from lapsv.data.manifest import read_manifest
from lapsv.demo.clips import Clip, analyse_file
from lapsv.demo.corpus import TRAIN_ONLY, build_demo_corpus
from lapsv.demo.items import make_items
from lapsv.demo.voice_check import check_voice_groups
from lapsv.demo.voices import demo_corpus_sources, select_files
from lapsv.scoring.trials import read_trials

RATES = {"asterisk": 8000, "ktuberling-data": 44100, "klettres-data": 44100}


def synthetic_voice(f0: float, seconds: float, rate: int, rng: np.random.Generator) -> np.ndarray:
    """A voiced sound: harmonics of a moving pitch under a formant-like tilt, in syllables."""
    t = np.arange(int(seconds * rate)) / rate
    pitch = f0 * (1 + 0.04 * np.sin(2 * np.pi * 5 * t) + 0.06 * np.sin(2 * np.pi * 0.8 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    formant = 500 + f0 * 2
    harmonics = [
        np.sin(k * phase + rng.uniform(0, 6)) / (1 + abs(k * f0 - formant) / 300)
        for k in range(1, 20)
        if k * f0 < rate / 2.5
    ]
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 3.5 * t) ** 2
    wave = np.sum(harmonics, axis=0) * syllables
    return (0.5 * wave / np.abs(wave).max()).astype(np.float32)


def _name(source, tag: str, n: int) -> str:
    """A file name that the source's include rule selects, carrying the speaker's tag."""
    if source.package.startswith("asterisk"):
        return f"{'digits/' if n % 2 else ''}{tag}_{n}.wav"
    if source.package == "ktuberling-data":
        return f"egypt_{tag}_{n}.{'opus' if source.language == 'nn' else 'ogg'}"
    if source.package == "klettres-data":
        return f"{'alpha' if n % 2 else 'syllab'}/{tag}_{n}.ogg"
    if source.package.startswith("tuxpaint"):
        return f"animals/{tag}_{n}_desc_{source.language}.ogg"
    letter = "m" if source.speaker.endswith("small") else "v"
    return f"level{n % 3}/{source.language}/lvl{n}-{letter}-{tag}.ogg"


def _write(path: Path, wave: np.ndarray, rate: int, channels: int, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.stack([wave, 0.8 * wave], axis=1) if channels == 2 else wave
    options = {"format": "OGG", "subtype": "VORBIS"} if path.suffix in (".ogg", ".opus") else {}
    soundfile.write(str(path), data, rate, **{**options, **kwargs})


@pytest.fixture(scope="module")
def fake_packages(tmp_path_factory) -> Path:
    """Six 1.2 s clips per source (fillets: three 5 s lines), each speaker its own pitch,
    plus the traps: a beep, a steady tone, a silent file, duplicates, a long prompt and
    files of other voices in the same folders."""
    root = tmp_path_factory.mktemp("packages")
    rng = np.random.default_rng(0)
    speakers = sorted({s.speaker for s in demo_corpus_sources()})
    for source in demo_corpus_sources():
        tag = source.speaker
        f0 = 90 + 7 * speakers.index(tag)
        base = root / source.package / source.folder
        rate = source.sample_rates[0] if source.sample_rates else 22050
        rate = RATES.get(source.package.split("-core")[0], RATES.get(source.package, rate))
        fillets = source.package.startswith("fillets")
        for n in range(3 if fillets else 6):
            wave = synthetic_voice(f0, 5.0 if fillets else 1.2, rate, rng)
            _write(base / _name(source, tag, n), wave, rate, source.channels or 1)
        if fillets:  # another character of the game: never selected
            wave = synthetic_voice(300, 2.0, rate, rng)
            _write(base / f"level0/{source.language}/lvl0-x-other.ogg", wave, rate, 1)
    en = root / "asterisk-core-sounds-en-wav/usr/share/asterisk/sounds/en_US_f_Allison"
    t = np.arange(8000) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    _write(en / "beep.wav", tone, 8000, 1)  # excluded by name
    _write(en / "digits/asterisk_en_es_tone.wav", tone, 8000, 1)  # caught as a steady tone
    _write(en / "digits/asterisk_en_es_silent.wav", np.zeros(8000, np.float32), 8000, 1)
    shutil.copy(en / "asterisk_en_es_0.wav", en / "digits/asterisk_en_es_copy.wav")
    same, _ = soundfile.read(str(en / "asterisk_en_es_2.wav"), dtype="float32")
    _write(en / "asterisk_en_es_float.wav", same, 8000, 1, subtype="FLOAT")  # same audio
    long_prompt = synthetic_voice(150, 25.0, 8000, rng)
    _write(en / "asterisk_en_es_long.wav", long_prompt, 8000, 1)
    return root


@pytest.fixture(scope="module")
def corpus(fake_packages, tmp_path_factory):
    calls = []

    def fetch(name: str) -> Path:
        calls.append(name)
        return fake_packages / name

    out = tmp_path_factory.mktemp("corpus") / "demo"
    summary = build_demo_corpus(out, fetch=fetch, check_voices=False, workers=1)
    return out, summary, calls, fetch


def _item_sources(out: Path) -> dict[str, list[str]]:
    lines = (out / "items.tsv").read_text().splitlines()[1:]
    return {f[0]: f[3].split(";") for f in (line.split("\t") for line in lines)}


def test_splits_are_speaker_disjoint_and_stratified(corpus):
    out, summary, _, _ = corpus
    manifests = {s: read_manifest(out / f"{s}.tsv") for s in ("train", "val", "test")}
    speakers = {s: set(m.speakers) for s, m in manifests.items()}
    assert not speakers["train"] & speakers["val"]
    assert not speakers["train"] & speakers["test"]
    assert not speakers["val"] & speakers["test"]
    assert len(speakers["test"]) == 10 and len(speakers["val"]) == 4
    assert set(TRAIN_ONLY) <= speakers["train"]
    assert len({s.split("_")[0] for s in speakers["test"]}) >= 3  # several packages
    assert sum(len(s) for s in speakers.values()) == 32 == len(summary.speakers)
    for manifest in manifests.values():
        for utt in manifest:
            assert manifest.audio_path(utt).is_file()
            assert utt.utt.startswith(f"{utt.speaker}/{utt.speaker}_")


def test_items_are_16k_mono_flac_of_one_speaker(corpus):
    out, _, _, _ = corpus
    items = _item_sources(out)
    assert len(items) == len(list((out / "audio").glob("*/*.flac")))
    for utt, clips in items.items():
        speaker = utt.split("/")[0]
        names = [clip.rsplit("/", 1)[1] for clip in clips]  # fake files carry their speaker
        assert all(speaker in name for name in names), (utt, names)
        info = soundfile.info(str(out / "audio" / utt))
        assert (info.samplerate, info.channels, info.format, info.subtype) == (
            16000,
            1,
            "FLAC",
            "PCM_16",
        )
        if len(clips) > 1:  # joined short clips
            assert 3.0 <= info.duration <= 8.0, (utt, info.duration)
        else:
            assert 3.0 <= info.duration <= 20.0, (utt, info.duration)
    pieces = [c for clips in items.values() for c in clips if "asterisk_en_es_long" in c]
    assert len(pieces) >= 2  # the 25 s prompt was cut
    for piece in pieces:
        start, end = map(float, piece.rsplit("@", 1)[1].split("-"))
        assert 4.0 <= end - start <= 12.0


def test_non_speech_and_duplicates_are_skipped(corpus):
    out, summary, _, _ = corpus
    reasons = {Path(path.split(":", 1)[1]).name: reason for path, reason in summary.skipped}
    assert reasons["beep.wav"] == "excluded by the source rules"
    assert reasons["asterisk_en_es_tone.wav"] == "steady tone (beep)"
    assert reasons["asterisk_en_es_silent.wav"].startswith("silent")
    assert reasons["asterisk_en_es_copy.wav"].startswith("duplicate: byte-identical")
    assert reasons["asterisk_en_es_float.wav"].startswith("duplicate: same decoded audio")
    traps = {"asterisk_en_es_tone.wav", "asterisk_en_es_silent.wav"}
    quality = ("steady tone", "silent", "too short", "cannot decode")
    assert {name for name, r in reasons.items() if r.startswith(quality)} == traps
    used = " ".join(c for clips in _item_sources(out).values() for c in clips)
    for name in ("beep.wav", "_tone.wav", "_silent.wav", "_copy.wav", "_float.wav", "-x-other"):
        assert name not in used
    # ktuberling da: the mono and the stereo files are two speakers sharing a folder
    assert "2-channel file: not this voice" in {r for _, r in summary.skipped}
    readme = (out / "README.md").read_text()
    assert "steady tone" in readme and "ktuberling_da_stereo" in readme


def test_trials_use_held_out_items(corpus):
    out, summary, _, _ = corpus
    for split in ("val", "test"):
        ids = {u.utt for u in read_manifest(out / f"{split}.tsv")}
        trials = read_trials(out / "trials" / f"{split}.txt")
        assert set(trials.enroll) | set(trials.test) <= ids
        labels = trials.labels.tolist()
        assert labels.count(1) > 0 and labels.count(0) > 0
        assert len(labels) <= 20_000
    assert "test" in summary.format_table() and "ktuberling_da_mono" in summary.format_table()


def test_rerun_is_a_no_op(corpus):
    out, summary, calls, fetch = corpus
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    fetched = len(calls)
    again = build_demo_corpus(out, fetch=fetch, check_voices=False, workers=1)
    assert again == summary
    assert len(calls) == fetched  # nothing fetched, nothing decoded
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps


def test_voice_check_drops_the_other_voice():
    """Groups are compared by their embeddings; a fake embedder tells voices apart by sign."""

    def embed(waves: list[np.ndarray]) -> np.ndarray:
        vectors = np.array([[max(w.mean(), 0), max(-w.mean(), 0), 1e-3] for w in waves])
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    clip = np.full(16000, 0.1, np.float32)
    groups = {"main": [clip] * 3, "same": [clip] * 2, "other": [-clip] * 2}
    checks, kept = check_voice_groups("spk", groups, embed, threshold=0.8)
    assert set(kept) == {"main", "same"}
    dropped = [c for c in checks if not c.kept]
    assert [c.group for c in dropped] == ["other"] and dropped[0].similarity < 0.1


def test_sources_select_their_files_only(fake_packages):
    sources = {s.speaker: s for s in demo_corpus_sources()}
    fillets = sources["fillets_cs_small"]
    selected, _ = select_files(fillets, fake_packages / fillets.package)
    assert selected and all(re.search(r"-m-fillets_cs_small\.ogg$", rel) for rel in selected)
    mono = sources["ktuberling_da_mono"]
    tree = fake_packages / mono.package
    stereo_files = [r for r in select_files(mono, tree)[0] if "stereo" in r]
    result = analyse_file((0, mono, str(tree), stereo_files[0]))
    assert not isinstance(result, Clip) and "2-channel" in result.reason


def test_short_clips_join_and_remainder_is_merged():
    clips = [
        Clip(0, f"c{i}", np.ones(int(16000 * s), np.float32) * 0.1, 0.0, "g", str(i), str(i))
        for i, s in enumerate([1.0, 1.0, 1.0, 1.5, 5.0, 1.0])
    ]
    items = make_items(clips)
    lengths = [len(w) / 16000 for w, _ in items]
    assert [len(pieces) for _, pieces in items] == [5, 1]  # c5 joined the first item
    assert 3.0 <= lengths[0] <= 8.0 and lengths[1] == 5.0
