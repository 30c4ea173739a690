"""Diarization: RTTM, scoring, clustering, VAD, windows, the pipeline and `lapsv diarize`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile

import lapsv
from lapsv.audio import load_audio
from lapsv.cli import main
from lapsv.config import BackendConfig, FrontendConfig, ModelConfig
from lapsv.diarization import (
    RTTMError,
    Segment,
    SileroVAD,
    diarize,
    read_references,
    read_rttm,
    score_diarization,
    write_rttm,
)
from lapsv.diarization.clustering import (
    SpeakerCount,
    agglomerative_clusters,
    cosine_affinity,
    smooth_windows,
    spectral_clusters,
    viterbi_resegmentation,
)
from lapsv.diarization.embedding import cut_windows, shared_pass_embeddings, window_embeddings
from lapsv.diarization.pipeline import (
    DiarizeOptions,
    _cluster,
    diarization_windows,
    label_windows,
)
from lapsv.diarization.speech import find_speech
from lapsv.diarization.vad import VADOptions, input_gain, recording_levels, speech_regions
from lapsv.diarization.windows import window_spans
from lapsv.errors import AudioError, ConfigError
from test_serve_diarize import write_conversation

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def ge2e():
    return lapsv.load_model("ge2e")


@pytest.fixture(scope="module")
def vad():
    return SileroVAD()


@pytest.fixture(scope="module")
def conversation(tmp_path_factory):
    path = tmp_path_factory.mktemp("conversation") / "talk.wav"
    turns = write_conversation(path)
    reference = [Segment(a, b, speaker) for a, b, speaker in turns]
    return path, reference


# --- RTTM ---------------------------------------------------------------------------------


def test_rttm_round_trip(tmp_path):
    recordings = {
        "call1": [Segment(0.5, 2.25, "alice"), Segment(2.0, 4.0, "bob")],
        "call2": [Segment(0.0, 1.0, "SPEAKER_00")],
    }
    path = write_rttm(tmp_path / "x.rttm", recordings)
    assert read_rttm(path) == recordings
    line = path.read_text().splitlines()[0]
    assert line == "SPEAKER call1 1 0.500 1.750 <NA> <NA> alice <NA> <NA>"


@pytest.mark.parametrize(
    ("line", "words"),
    [
        ("SPEAKER call1 1 0.5", "has 10 fields"),
        ("SPEAKER call1 1 zero 1.0 <NA> <NA> a <NA> <NA>", "must be seconds"),
        ("SPEAKER call1 1 -1 1.0 <NA> <NA> a <NA> <NA>", ">= 0"),
        ("hello world", "not an RTTM line"),
    ],
)
def test_a_malformed_reference_line_names_the_file_and_line(tmp_path, line, words):
    path = tmp_path / "ref.rttm"
    path.write_text(f"SPEAKER call1 1 0.0 1.0 <NA> <NA> a <NA> <NA>\n{line}\n")
    with pytest.raises(RTTMError, match=rf"ref\.rttm:2: .*{words}"):
        read_rttm(path)


def test_a_reference_naming_no_input_is_an_error(tmp_path):
    path = write_rttm(tmp_path / "ref.rttm", {"other": [Segment(0, 1, "a")]})
    with pytest.raises(RTTMError, match="names none of the inputs"):
        read_references(path, ["talk"])
    folder = tmp_path / "refs"
    folder.mkdir()
    write_rttm(folder / "talk.rttm", {"talk": [Segment(0, 1, "a")]})
    assert read_references(folder, ["talk", "missing"]) == {"talk": [Segment(0, 1, "a")]}


# --- scoring --------------------------------------------------------------------------------


def test_der_and_jer_match_a_hand_computed_pair():
    """Reference: A 0-10, B 10-20 (20 s). Hypothesis: x 0-12, y 12-18, z 19-22.
    The best mapping is A-x (10 s together), B-y (6 s); z is unmapped. Without collar:
    confusion 10-12 and 19-20 (3 s), missed 18-19 (1 s), false alarm 20-22 (2 s): DER
    6 / 20 = 30 %. With a 0.5 s collar (±0.25 s around 0, 10 and 20): the scored reference is
    0.25-9.75 and 10.25-19.75 (19 s); confusion 10.25-12 and 19-19.75 (2.5 s), missed 18-19
    (1 s), false alarm 20.25-22 (1.75 s): 5.25 / 19."""
    ref = {"r": [Segment(0, 10, "A"), Segment(10, 20, "B")]}
    hyp = {"r": [Segment(0, 12, "x"), Segment(12, 18, "y"), Segment(19, 22, "z")]}
    plain, per_file = score_diarization(ref, hyp, collar=0.0, durations={"r": 22.0})
    assert (plain.missed, plain.false_alarm, plain.confusion) == pytest.approx((1, 2, 3))
    assert plain.der == pytest.approx(30.0)
    assert per_file["r"].der == pytest.approx(30.0)
    collared, _ = score_diarization(ref, hyp, collar=0.5, durations={"r": 22.0})
    assert collared.speech == pytest.approx(19.0)
    assert collared.der == pytest.approx(100 * 5.25 / 19)
    # JER: A <-> x: |A ∩ x| = 10, |A ∪ x| = 12 -> 1/6; B <-> y: 6 / 10 -> 0.4; mean 28.3 %
    assert plain.jer == pytest.approx(100 * (1 / 6 + 0.4) / 2)


# --- clustering and windows ---------------------------------------------------------------


def _speakers(k: int, per: int, seed: int = 0, noise: float = 0.35):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, 32))
    truth = np.repeat(np.arange(k), per)
    return centres[truth] + noise * rng.normal(size=(k * per, 32)), truth


def _same_partition(labels, truth) -> bool:
    pairs = set(zip(labels.tolist(), truth.tolist(), strict=True))
    return len(pairs) == len(set(truth.tolist())) == len(set(labels.tolist()))


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_spectral_clustering_recovers_the_speakers(k):
    x, truth = _speakers(k, 25, seed=k)
    assert _same_partition(spectral_clusters(cosine_affinity(x)), truth)
    assert _same_partition(spectral_clusters(cosine_affinity(x), p=None), truth)  # NME-SC's own p
    assert _same_partition(spectral_clusters(cosine_affinity(x), SpeakerCount(exact=k)), truth)


@pytest.mark.parametrize("k", [2, 4])
def test_agglomerative_clustering_recovers_the_speakers(k):
    x, truth = _speakers(k, 20, seed=10 + k)
    scores = cosine_affinity(x)
    assert _same_partition(agglomerative_clusters(scores, threshold=0.5), truth)
    assert _same_partition(
        agglomerative_clusters(scores, threshold=0.99, count=SpeakerCount(exact=k)), truth
    )
    bounded = agglomerative_clusters(scores, threshold=-1.0, count=SpeakerCount(low=k, high=k))
    assert _same_partition(bounded, truth)  # a threshold too low to split, overruled by min


def test_labels_are_numbered_by_first_appearance():
    x, _ = _speakers(3, 10, seed=3)
    order = np.r_[20:30, 0:10, 10:20]
    labels = spectral_clusters(cosine_affinity(x[order]))
    assert labels[0] == 0 and labels[10] == 1 and labels[20] == 2


def test_impossible_speaker_counts_are_config_errors():
    with pytest.raises(ConfigError, match="larger than max_speakers"):
        SpeakerCount(low=3, high=2)
    x, _ = _speakers(2, 3)
    with pytest.raises(ConfigError, match="only 6 windows"):
        spectral_clusters(cosine_affinity(x), SpeakerCount(exact=7))


def test_windows_cover_each_region_and_end_with_it():
    spans = window_spans(np.array([[1.0, 4.2], [5.0, 5.2]]), duration=6.0)
    assert spans[:4].tolist() == [[1.0, 2.5], [1.75, 3.25], [2.5, 4.0], [2.7, 4.2]]
    assert spans[4].tolist() == [4.85, 5.35]  # a short region: one window, widened to 0.5 s


@pytest.mark.parametrize("block", [1, 3, 7, 100])
def test_cutting_windows_does_not_depend_on_the_block_size(block):
    wave = np.arange(50, dtype=np.float32)
    spans = np.array([[0, 10], [5, 15], [12, 30], [29, 31], [40, 50]])
    blocks = [wave[i : i + block] for i in range(0, 50, block)]
    cut = {i: w.tolist() for _, i, w in cut_windows(blocks, spans)}
    assert cut == {i: wave[a:b].tolist() for i, (a, b) in enumerate(spans)}


# --- VAD ------------------------------------------------------------------------------------


def test_vad_finds_nothing_in_silence_and_the_speech_of_a_clip(vad):
    silence = vad.probabilities([np.zeros(48_000, np.float32)])
    assert len(speech_regions(silence, 48_000)) == 0
    wave = load_audio(DATA / "speaker_a_1.flac")
    padded = np.concatenate([np.zeros(16_000, np.float32), wave, np.zeros(16_000, np.float32)])
    probabilities = vad.probabilities([padded[i : i + 7_000] for i in range(0, len(padded), 7_000)])
    assert np.array_equal(probabilities, vad.probabilities([padded]))  # any block size
    regions = speech_regions(probabilities, len(padded))
    speech = float(np.sum(regions[:, 1] - regions[:, 0]))
    assert regions[0, 0] >= 0.9 and regions[-1, 1] <= 1.1 + len(wave) / 16_000
    assert speech >= 0.7 * len(wave) / 16_000


def test_the_energy_gate_drops_a_quiet_background_voice(vad):
    """Speaker A, then speaker B 30 dB quieter (a voice in the background): Silero calls
    both speech; the 15 dB gate keeps A's speech only."""
    loud, quiet = load_audio(DATA / "speaker_a_1.flac"), load_audio(DATA / "speaker_b_1.flac")
    wave = np.concatenate([loud, np.zeros(8_000, np.float32), 0.03 * quiet])
    probabilities, levels = vad.scan([wave[i : i + 7_000] for i in range(0, len(wave), 7_000)])
    assert np.array_equal(probabilities, vad.probabilities([wave])) and len(levels) == len(
        probabilities
    )
    ungated = speech_regions(probabilities, len(wave), VADOptions(), levels)
    gated = speech_regions(probabilities, len(wave), VADOptions(energy_gate=15.0), levels)
    quiet_start = (len(loud) + 8_000) / 16_000
    assert ungated[-1, 1] > quiet_start + 1.0  # the background voice is found without a gate
    assert gated[-1, 1] < quiet_start and gated[0, 0] < 0.5  # and dropped with it
    with pytest.raises(ConfigError, match="energy_gate"):
        VADOptions(energy_gate=0.0)


def _seconds_inside(regions: np.ndarray, start: float, end: float) -> float:
    return float(sum(max(0.0, min(b, end) - max(a, start)) for a, b in regions))


def test_the_floor_gate_drops_babble_that_the_energy_gate_keeps(vad):
    """Speaker A, a 4 s pause, A again, over a babble of six copies of speaker B 14 dB
    under A: Silero calls the babble speech, and it is too loud for the 15 dB energy gate;
    the floor gate (0.3 of the way from the background level up to A's loud speech)
    drops the pause and keeps A's speech."""
    first, second = load_audio(DATA / "speaker_a_1.flac"), load_audio(DATA / "speaker_a_2.flac")
    pause = 64_000
    voice = np.concatenate([first, np.zeros(pause, np.float32), second])
    other = np.concatenate([load_audio(DATA / f"speaker_b_{i}.flac") for i in (1, 2)])
    babble = sum(np.roll(np.resize(other, len(voice)), k * 11_000) for k in range(6))
    rms = lambda x: float(np.sqrt(np.mean(np.square(x))))  # noqa: E731
    wave = voice + babble * (rms(first) / rms(other) * 10 ** (-14 / 20))
    probabilities, levels = vad.scan([wave])
    alone, alone_levels = vad.scan([voice])
    start, end = len(first) / 16_000, (len(first) + pause) / 16_000
    energy = VADOptions(energy_gate=15.0)
    both = VADOptions(energy_gate=15.0, floor_gate=0.3)
    ungated = speech_regions(probabilities, len(wave), energy, levels)
    gated = speech_regions(probabilities, len(wave), both, levels)
    clean = speech_regions(alone, len(voice), energy, alone_levels)
    assert _seconds_inside(ungated, start, end) > 3.5  # the babble in the pause is speech
    assert _seconds_inside(gated, start, end) < 1.0  # not with the floor gate
    speech = _seconds_inside(clean, 0.0, start) + _seconds_inside(clean, end, len(wave) / 16_000)
    kept = _seconds_inside(gated, 0.0, start) + _seconds_inside(gated, end, len(wave) / 16_000)
    assert kept > 0.75 * speech
    assert np.array_equal(speech_regions(alone, len(voice), both, alone_levels), clean)
    with pytest.raises(ConfigError, match="floor_gate"):
        VADOptions(floor_gate=1.0)


def test_the_vad_reads_a_quiet_recording_at_full_scale(vad, conversation):
    """Silero misses quiet speech, so a recording is amplified (at most max_gain dB) until
    its loud frames reach 0 dBFS: its speech regions do not depend on its level, and
    faint noise stays no speech."""
    path, _ = conversation
    wave = load_audio(path)
    quiet = wave * np.float32(0.1)  # 20 dB down
    levels = recording_levels([quiet[i : i + 7_000] for i in range(0, len(quiet), 7_000)])
    assert np.allclose(levels, recording_levels([quiet]))  # any block size
    gain = input_gain(levels, 40.0)
    assert 20 * np.log10(gain) == pytest.approx(-np.percentile(levels, 95))
    assert input_gain(levels, 20.0) == pytest.approx(10.0) and input_gain(levels, 0.0) == 1.0
    assert np.array_equal(vad.scan([quiet], gain=gain)[0], vad.probabilities([quiet * gain]))
    options = VADOptions(max_gain=40.0)
    _, loud_regions, _ = find_speech(wave, sample_rate=16_000, vad=vad, options=options)
    _, quiet_regions, _ = find_speech(quiet, sample_rate=16_000, vad=vad, options=options)
    assert loud_regions.shape == quiet_regions.shape
    assert np.allclose(loud_regions, quiet_regions, atol=0.04)
    hiss = (1e-3 * np.random.default_rng(0).normal(size=160_000)).astype(np.float32)
    with pytest.raises(AudioError, match="no speech"):
        find_speech(hiss, sample_rate=16_000, vad=vad, options=VADOptions(max_gain=20.0))
    with pytest.raises(ConfigError, match="max_gain"):
        VADOptions(max_gain=-1.0)


def test_the_recording_mean_removes_what_all_its_windows_share(ge2e):
    """Voices unlike the training data share an offset that swamps their differences
    (every cosine near 1); the recording's own mean takes it away, the training mean
    (none, for GE2E) does not."""
    x, truth = _speakers(3, 20, seed=4, noise=0.2)
    offset = 12.0 * np.random.default_rng(1).normal(size=32)
    windows = np.c_[np.arange(60) * 2.0, np.arange(60) * 2.0 + 1.5]
    options = DiarizeOptions(clustering="ahc", threshold=0.5)
    segments, _ = label_windows(ge2e, x + offset, windows, options)
    labels = np.array([int(s.speaker.split("_")[1]) for s in segments])
    assert len(segments) == 60 and _same_partition(labels, truth)
    training = dataclasses.replace(options, centring="training")
    assert {s.speaker for s in label_windows(ge2e, x + offset, windows, training)[0]} == {
        "SPEAKER_00"
    }


def test_windows_span_short_pauses_and_segments_keep_to_the_speech(ge2e):
    """Two words 0.3 s apart share windows (the bridge is 0.5 s), a 1.5 s pause does not;
    the segments are cut back to the speech, so no pause is anyone's turn."""
    regions = np.array([[0.0, 0.6], [0.9, 1.6], [3.1, 4.0], [4.3, 6.0]])
    options = DiarizeOptions(clustering="ahc", threshold=0.5, long_windows=())
    windows = diarization_windows(regions, options, duration=7.0).windows
    assert windows.tolist() == [[0.0, 1.5], [0.1, 1.6], [3.1, 4.6], [3.85, 5.35], [4.5, 6.0]]
    apart = diarization_windows(regions, dataclasses.replace(options, window_bridge=0.0), 7.0)
    apart = apart.windows
    assert apart[:3].tolist() == regions[:3].tolist()  # each word alone
    x, _ = _speakers(2, 3, seed=5, noise=0.05)
    segments, _ = label_windows(ge2e, x[[0, 1, 3, 4, 5]], windows, options, speech=regions)
    spans = [(s.start, s.end) for s in segments]
    assert spans == [(0.0, 0.6), (0.9, 1.6), (3.1, 4.0), (4.3, 6.0)]
    speakers = [s.speaker for s in segments]
    assert speakers[0] == speakers[1] != speakers[2] == speakers[3]
    with pytest.raises(ConfigError, match="window_bridge"):
        DiarizeOptions(window_bridge=-1.0)


def test_smoothing_stays_inside_a_speech_region():
    x = np.eye(4)[[0, 1, 2, 3]]
    windows = np.array([[0.0, 1.5], [0.75, 2.25], [1.5, 3.0], [9.0, 10.5]])
    smoothed = smooth_windows(x, windows, width=1)
    assert np.allclose(smoothed[3], x[3])  # alone in its region
    assert np.allclose(smoothed[1], np.array([1, 1, 1, 0]) / np.sqrt(3))
    assert np.allclose(smoothed[0], np.array([1, 1, 0, 0]) / np.sqrt(2))
    assert smooth_windows(x, windows, width=0) is x
    assert np.allclose(smooth_windows(x, windows, width=5)[0], np.array([1, 1, 1, 0]) / 3**0.5)


def _run_of_windows(n: int, start: float = 0.0) -> np.ndarray:
    """(n, 2) touching 1.5 s windows at a 0.75 s hop: one speech region."""
    return start + np.stack([np.arange(n) * 0.75, np.arange(n) * 0.75 + 1.5], axis=1)


def test_resegmentation_pays_for_a_change_of_speaker_only_inside_a_region():
    rng = np.random.default_rng(0)
    voices = np.eye(8)[:2]
    truth = np.repeat([0, 1, 1], [14, 10, 1])  # two turns in one region, then a lone window
    x = voices[truth] + 0.1 * rng.normal(size=(25, 8))
    x[5] = 0.45 * voices[0] + 0.55 * voices[1]  # one ambiguous window inside speaker 0's turn
    windows = np.r_[_run_of_windows(24), [[30.0, 31.5]]]
    nearest = viterbi_resegmentation(x, windows, truth, switch_penalty=0.0)
    assert nearest[5] == 1 and (np.delete(nearest, 5) == np.delete(truth, 5)).all()
    decoded = viterbi_resegmentation(x, windows, truth, switch_penalty=0.2)
    assert (decoded == truth).all()  # the flip costs two changes; the real turn change stays
    one_turn = viterbi_resegmentation(x, windows, truth, switch_penalty=100.0)
    assert (one_turn[:24] == 0).all() and one_turn[24] == 1  # a pause costs nothing


def test_resegmentation_keeps_a_fixed_speaker_count():
    rng = np.random.default_rng(1)
    truth = np.repeat([0, 1, 2], [15, 15, 2])
    x = np.eye(8)[truth] + 0.3 * rng.normal(size=(32, 8))
    x[30:] = 0.7 * np.eye(8)[1] + 0.3 * np.eye(8)[2]  # the third voice: two windows, near #2
    windows = _run_of_windows(32)
    dropped = viterbi_resegmentation(x, windows, truth, switch_penalty=0.5)
    assert dropped.max() == 1  # decoding alone absorbs the third speaker
    for options, found in (
        (DiarizeOptions(switch_penalty=0.5), 2),
        (DiarizeOptions(switch_penalty=0.5, num_speakers=3), 3),
    ):
        labels = _cluster(None, x, windows, options)
        assert labels.max() + 1 == found


def test_longer_windows_find_the_voices_that_short_windows_blur():
    """Multi-scale: 1.5 s windows too noisy to separate three voices, and the steadier
    longer windows around them; their averaged cosines recover the speakers. (The bundled
    conversation's test below fails when overlapping longer windows vote: each turn
    becomes a speaker.)"""
    rng = np.random.default_rng(2)
    truth = np.repeat(np.tile([0, 1, 2], 4), 8)  # 12 turns of 8 windows
    voices = rng.normal(size=(3, 32))
    short = voices[truth] + 1.2 * rng.normal(size=(96, 32))
    steady = voices[truth] + 0.3 * rng.normal(size=(96, 32))
    windows = np.concatenate([_run_of_windows(8, start=10.0 * turn) for turn in range(12)])
    options = DiarizeOptions(resegment=False)
    alone = _cluster(None, short, windows, options)
    assert not _same_partition(alone, truth)
    wider = windows + np.array([-0.75, 0.75])
    both = _cluster(None, short, windows, options, [(wider, steady)])
    assert _same_partition(both, truth)
    with pytest.raises(ConfigError, match="long_windows"):
        DiarizeOptions(long_windows=(2.0, 0.0))


# --- the pipeline -----------------------------------------------------------------------------


def test_a_two_speaker_conversation_is_diarized(ge2e, vad, conversation):
    """The DER bound fails when clustering is broken (one speaker: ~50 % confusion). The
    reference holds whole clips, their pauses of 0.25 s or more included, which the VAD
    leaves out (7 % missed speech)."""
    path, reference = conversation
    result = diarize(ge2e, path, vad=vad)
    assert result.file_id == "talk" and len(result.speakers) == 2
    overall, _ = score_diarization({"talk": reference}, {"talk": list(result.segments)})
    assert overall.der < 10.0 and overall.confusion < 0.01 * overall.speech, overall.to_json()
    fixed = diarize(
        ge2e, path, vad=vad, options=DiarizeOptions(num_speakers=2, clustering="ahc", threshold=0.5)
    )
    assert score_diarization({"talk": reference}, {"talk": list(fixed.segments)})[0].der < 10.0
    one = diarize(ge2e, path, vad=vad, options=DiarizeOptions(num_speakers=1))
    broken, _ = score_diarization({"talk": reference}, {"talk": list(one.segments)})
    assert broken.der > 40.0  # the bound above is not met by one speaker
    samples = soundfile.read(path, dtype="float32")[0]
    same = diarize(lapsv.load_model("ge2e"), samples, sample_rate=16_000, file_id="talk", vad=vad)
    assert same.segments == result.segments  # an array and its file give the same answer


def test_a_recording_shorter_than_a_window_is_one_speaker(ge2e, vad, tmp_path):
    path = tmp_path / "short.wav"
    soundfile.write(path, load_audio(DATA / "speaker_b_1.flac")[:16_000], 16_000)
    result = diarize(ge2e, path, vad=vad)
    assert len(result.speakers) == 1 and len(result.segments) == 1


def test_no_speech_is_an_audio_error(ge2e, vad, tmp_path):
    path = tmp_path / "quiet.wav"
    soundfile.write(path, 0.01 * np.random.default_rng(0).normal(size=32_000), 16_000)
    with pytest.raises(AudioError, match=r"quiet\.wav: no speech found"):
        diarize(ge2e, path, vad=vad)


def test_the_shared_pass_pools_windows_from_one_frontend_pass(vad, conversation):
    """A trained-style model (GE2E frontend + LAP + ASTP, random backend): the shared pass
    gives one embedding per window, the same shape as each window alone, and a window across
    a block edge is embedded alone, exactly."""
    config = ModelConfig(frontend=FrontendConfig(name="ge2e"), backend=BackendConfig(embed_dim=16))
    model = lapsv.Speaker(lapsv.SpeakerModel.build(config).eval())
    wave = load_audio(conversation[0])
    spans = np.array([[0, 24_000], [12_000, 36_000], [30_000, 54_000]])
    blocks = [wave[:40_000], wave[40_000:80_000]]
    shared = shared_pass_embeddings(model.encoder, blocks, spans)
    alone = window_embeddings(model, blocks, spans)
    assert shared.shape == alone.shape == (3, 16)
    np.testing.assert_allclose(shared[2], alone[2], rtol=1e-5, atol=1e-6)  # straddles blocks
    assert not np.allclose(shared[1], alone[1])  # pooled with the block's context


# --- the CLI -----------------------------------------------------------------------------------


def test_cli_writes_rttm_segments_and_scores(conversation, tmp_path, capsys):
    path, reference = conversation
    ref = write_rttm(tmp_path / "ref.rttm", {"talk": reference})
    out = tmp_path / "out"
    code = main(["diarize", "ge2e", str(path), "--out", str(out), "--reference", str(ref)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "talk: 2 speaker(s)" in printed and "DER" in printed and "JER" in printed
    assert read_rttm(out / "talk.rttm") == read_rttm(out / "all.rttm")
    body = json.loads((out / "segments.json").read_text())
    assert body["recordings"][0]["num_speakers"] == 2
    scores = json.loads((out / "scores.json").read_text())
    overall = scores["collar 0.5"]["overall"]
    assert overall["DER %"] < 10.0 and overall["confusion %"] < 1.0, overall
    code = main(
        ["diarize", "ge2e", str(path), "--out", str(out), "--reference", str(ref), "--oracle_vad"]
    )
    assert code == 0 and "DER" in capsys.readouterr().out


def test_cli_bad_inputs_get_one_line_and_the_right_exit_code(conversation, tmp_path, capsys):
    path, _ = conversation
    silent, corrupt = tmp_path / "silent.wav", tmp_path / "corrupt.wav"
    soundfile.write(silent, np.zeros(32_000), 16_000)
    corrupt.write_bytes(b"RIFF not audio")
    out = tmp_path / "out"
    code = main(["diarize", "ge2e", str(silent), str(corrupt), str(path), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "talk: 2 speaker(s)" in captured.out
    assert "silent.wav" in captured.err and "corrupt.wav" in captured.err
    assert (out / "talk.rttm").exists() and not (out / "silent.rttm").exists()
    for argv, words in (
        (["--num_speakers", "500"], "only"),
        (["--min_speakers", "3", "--max_speakers", "2"], "larger than max_speakers"),
        (["--reference", str(tmp_path / "none.rttm")], "no such reference"),
        (["--oracle_vad"], "--reference"),
    ):
        code = main(["diarize", "ge2e", str(path), "--out", str(out), *argv])
        err = capsys.readouterr().err
        assert code == 2 and words in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) == 1
    for argv in (["--centring", "global"], ["--smoothing", "-1"]):  # argparse: usage + reason
        code = main(["diarize", "ge2e", str(path), "--out", str(out), *argv])
        err = capsys.readouterr().err
        assert code == 2 and argv[0] in err.strip().splitlines()[-1] and "Traceback" not in err
