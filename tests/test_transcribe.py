"""`lapsv transcribe`: Whisper's words and a lapsv model's voices, from one encoder pass
per 30 s window. Runs the real whisper-base weights (installed by `make install`)."""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

import lapsv
from lapsv import SpeakerModel, build_backend
from lapsv.audio import load_audio
from lapsv.cli import main
from lapsv.config import FrontendConfig
from lapsv.diarization import DiarizeOptions, SileroVAD, read_rttm
from lapsv.diarization.segments import Segment
from lapsv.errors import AudioError, ConfigError, ModelLoadError
from lapsv.frontends import build_frontend
from lapsv.frontends.whisper_sources import builtin_parts, resolve_whisper_source
from lapsv.transcription import TranscribeOptions, Transcriber
from lapsv.transcription.attribution import SpeakerTimeline, attribute
from lapsv.transcription.decoder import split_window
from lapsv.transcription.score import speaker_error
from lapsv.transcription.transcript import Transcript, TranscriptSegment, Word

HERE = Path(__file__).parent
CONVERSATION = HERE / "conversation" / "conversation.flac"  # a_1, b_1, a_2, b_2; 0.5 s gaps
A1_WORDS = "Please enter your phone number, starting with the area code."
WINDOW, HOP = 1.5, 0.5  # training crops of the fixture's model


@pytest.fixture(scope="module")
def whisper_base() -> str:
    try:
        builtin_parts("whisper-base")
    except ModelLoadError as error:
        pytest.skip(str(error))
    return resolve_whisper_source("whisper-base")


@pytest.fixture(scope="module")
def model_dir(whisper_base, tmp_path_factory) -> Path:
    """LAP + ASTP on whisper-base, its backend fitted in a few steps to tell the two
    voices of tests/data apart (1.5 s crops of their clips, cross-entropy): a model that
    knows these voices, so the test checks the pipeline's attribution, not the model."""
    torch.manual_seed(0)
    frontend = build_frontend(FrontendConfig(name="whisper", source="whisper-base"))
    backend = build_backend(
        "lap", "astp", in_dim=512, n_layers=7, lap_heads=4, lap_out_dim=64, embed_dim=32
    )
    model = SpeakerModel(frontend, backend)
    crops, labels = [], []
    for path in sorted((HERE / "data").glob("speaker_*.flac")):
        wave = load_audio(path)
        step, size = int(HOP * 16_000), int(WINDOW * 16_000)
        for start in range(0, len(wave) - size + 1, step):
            crops.append(wave[start : start + size])
            labels.append(int(path.stem.startswith("speaker_b")))
    with torch.no_grad():
        batch = torch.from_numpy(np.stack(crops))
        hidden, frames = frontend(batch, torch.full((len(crops),), batch.shape[1]))
    head = torch.nn.Linear(32, 2)
    optimizer = torch.optim.Adam([*backend.parameters(), *head.parameters()], lr=1e-3)
    target = torch.tensor(labels)
    backend.train()
    for _ in range(40):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(backend(hidden, frames)), target)
        loss.backward()
        optimizer.step()
    return model.eval().save(tmp_path_factory.mktemp("whisper-lap") / "model")


@pytest.fixture(scope="module")
def transcriber(model_dir) -> Transcriber:
    return Transcriber(lapsv.load_model(model_dir))


@pytest.fixture(scope="module")
def vad() -> SileroVAD:
    return SileroVAD()


def test_a_two_speaker_conversation_gives_two_speakers_and_the_words(transcriber, vad):
    transcript = transcriber.transcribe(CONVERSATION, vad=vad)
    assert transcriber.shares_encoder  # the decoder reads the model's own encoder pass
    assert transcript.file_id == "conversation" and len(transcript.speakers) == 2
    reference = read_rttm(HERE / "conversation" / "conversation.rttm")["conversation"]
    turns = [(s.start, s.end, s.speaker) for s in reference]  # allison, june, allison, june
    words = [w for s in transcript.segments for w in s.words]
    first = [w for w in words if w.start < turns[0][1]]
    assert "".join(w.text for w in first).strip() == A1_WORDS
    labels = {}
    for start, end, who in turns:
        said = {w.speaker for w in words if start <= w.start < end}
        assert len(said) == 1, (who, said)  # every word of a turn: one speaker
        labels.setdefault(who, said.pop())
    assert len(set(labels.values())) == 2  # and the two voices: two speakers
    by_segment = [(s.speaker, s.text) for s in transcript.segments]
    assert by_segment[0] == (labels["allison"], " " + A1_WORDS)
    assert transcript.seconds.keys() == {"vad", "transcription", "speakers"}


def test_the_decoder_reads_the_shared_pass_as_transformers_reads_its_own(transcriber, whisper_base):
    """The encoder output of lapsv's pass (padded to 30 s, all hidden states) decodes to
    the tokens of transformers' own Whisper on the same audio and weights."""
    wave = load_audio(HERE / "data" / "speaker_a_1.flac")
    model = transformers.WhisperForConditionalGeneration.from_pretrained(whisper_base).eval()
    features = transformers.WhisperFeatureExtractor.from_pretrained(whisper_base)(
        wave, sampling_rate=16_000, return_tensors="pt"
    ).input_features
    with torch.no_grad():
        plain = model.generate(features, return_timestamps=True, language="en", task="transcribe")
    transcript = transcriber.transcribe(
        wave, sample_rate=16_000, options=TranscribeOptions(language="en")
    )
    tokens = [t for t in plain[0].tolist() if t < model.generation_config.eos_token_id]
    decoder = transcriber.decoder
    assert decoder.text(tokens).strip() == transcript.text == A1_WORDS


def test_a_fine_tuned_encoder_gets_the_words_from_the_pre_trained_one(model_dir, vad):
    model = lapsv.load_model(model_dir)
    with torch.no_grad():
        model.encoder.frontend.encoder.layers[0].fc1.weight.mul_(1.5)
    with pytest.warns(UserWarning, match="fine-tuned"):
        fine_tuned = Transcriber(model)
    assert not fine_tuned.shares_encoder
    wave = load_audio(HERE / "data" / "speaker_a_1.flac")
    transcript = fine_tuned.transcribe(wave, sample_rate=16_000, vad=vad)
    assert transcript.text == A1_WORDS  # the pre-trained encoder's words


def test_a_model_on_another_frontend_gets_a_clear_error(tmp_path, capsys):
    with pytest.raises(ConfigError, match="Whisper frontend"):
        Transcriber(lapsv.load_model("ge2e"))
    code = main(["transcribe", "ge2e", str(CONVERSATION), "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert "transcribe needs a lapsv model directory on a Whisper frontend" in err
    assert not (tmp_path / "out").exists()  # nothing made before the model is checked


SRT_TIME = r"\d\d:\d\d:\d\d,\d\d\d --> \d\d:\d\d:\d\d,\d\d\d"
VTT_TIME = r"\d\d:\d\d:\d\d\.\d\d\d --> \d\d:\d\d:\d\d\.\d\d\d"


def test_cli_writes_every_format_and_a_bad_file_does_not_stop_the_others(
    model_dir, tmp_path, capsys
):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF not audio")
    out = tmp_path / "out"
    code = main(["transcribe", str(model_dir), str(corrupt), str(CONVERSATION), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 1 and "corrupt.wav" in captured.err
    assert re.search(r"conversation: 2 speaker\(s\) \(SPEAKER_00, SPEAKER_01\)", captured.out)
    assert sorted(p.name for p in out.iterdir()) == [
        f"conversation.{ext}" for ext in ("json", "srt", "txt", "vtt")
    ]
    srt = (out / "conversation.srt").read_text(encoding="utf-8").strip().split("\n\n")
    for number, cue in enumerate(srt, 1):
        index, timing, text = cue.split("\n")
        assert int(index) == number and re.fullmatch(SRT_TIME, timing)
        assert re.match(r"\[SPEAKER_0[01]\] \S", text)
    vtt = (out / "conversation.vtt").read_text(encoding="utf-8")
    assert vtt.startswith("WEBVTT\n\n") and len(re.findall(VTT_TIME, vtt)) == len(srt)
    body = json.loads((out / "conversation.json").read_text(encoding="utf-8"))
    assert body["segments"][0]["text"] == A1_WORDS and body["segments"][0]["words"]
    paragraphs = (out / "conversation.txt").read_text(encoding="utf-8").strip().split("\n\n")
    assert paragraphs[0] == f"SPEAKER_00: {A1_WORDS}" and len(paragraphs) == 4


def test_cli_options_exit_2_before_any_work(model_dir, tmp_path, capsys):
    out = str(tmp_path / "out")
    for extra, message in (
        (["--format", "doc"], "unknown transcript format(s) doc"),
        (["--min_speakers", "3", "--max_speakers", "2"], "larger than max_speakers"),
        (["--language", "xx"], "unknown language 'xx'"),
    ):
        code = main(["transcribe", str(model_dir), str(CONVERSATION), "--out", out, *extra])
        assert code == 2 and message in capsys.readouterr().err
    assert not Path(out).exists()


def test_silence_is_an_audio_error(transcriber, vad):
    quiet = (0.01 * np.random.default_rng(0).normal(size=32_000)).astype(np.float32)
    with pytest.raises(AudioError, match="no speech found"):
        transcriber.transcribe(quiet, sample_rate=16_000, vad=vad)


# --- the pieces ---------------------------------------------------------------------------


def test_split_window_follows_whisper_seeking():
    begin = 50_364
    stamp = begin.__add__
    # two complete segments, the window read to its end (a single timestamp at the end)
    segments, seek = split_window([stamp(0), 1, 2, stamp(50), stamp(50), 3, stamp(90)], None,
                                  begin, 20.0)  # fmt: skip
    assert [(s.start, s.end, s.tokens) for s in segments] == [(0.0, 1.0, (1, 2)), (1.0, 1.8, (3,))]
    assert seek == 20.0
    # the last segment unfinished (text after the last pair): seek to its start
    segments, seek = split_window([stamp(0), 1, stamp(100), stamp(100), 2, 3], None, begin, 30.0)
    assert len(segments) == 1 and seek == pytest.approx(2.0)
    # no timestamp pair: one segment up to the last timestamp, the whole window read
    segments, seek = split_window([stamp(0), 1, 2, stamp(75)], [0.0, 0.2, 0.5, 1.5], begin, 9.0)
    assert [(s.start, s.end, s.token_times) for s in segments] == [(0.0, 1.5, (0.2, 0.5))]
    assert seek == 9.0
    # a pair at 0 only: never a seek of 0 (no endless loop)
    assert split_window([stamp(0), stamp(0), 1], None, begin, 5.0)[1] == 5.0


def test_words_take_the_speaker_of_their_start_and_segments_split_at_changes():
    speakers = [Segment(0.0, 2.0, "A"), Segment(2.6, 5.0, "B")]
    timeline = SpeakerTimeline(speakers)
    assert timeline.speaker(1.0, 3.0) == "A"  # 1.0 s of A against 0.4 s of B
    assert timeline.speaker(2.1, 2.4) == "A"  # in the pause: the nearest
    assert timeline.speaker(2.4, 2.5) == "B"
    assert SpeakerTimeline([]).speaker(0.0, 1.0) is None
    words = (Word(0.2, 1.0, " one"), Word(1.0, 2.7, " two"), Word(2.7, 3.5, " three"))
    [a, b] = attribute([TranscriptSegment(0.2, 3.5, " one two three", None, words)], speakers)
    assert (a.speaker, a.text, a.start, a.end) == ("A", " one two", 0.2, 1.0 + 1.7)
    assert (b.speaker, b.text, b.start, b.end) == ("B", " three", 2.7, 3.5)
    [whole] = attribute([TranscriptSegment(2.0, 5.0, " x")], speakers)
    assert whole.speaker == "B"


def test_diarization_options_pass_through(transcriber, vad):
    one = transcriber.transcribe(
        CONVERSATION,
        vad=vad,
        options=TranscribeOptions(
            word_timestamps=False, diarization=DiarizeOptions(num_speakers=1)
        ),
    )
    assert len(one.speakers) == 1 and all(not s.words for s in one.segments)
    words_only = transcriber.transcribe(CONVERSATION, options=TranscribeOptions(speakers=False))
    assert words_only.speakers == [] and words_only.seconds.keys() == {"vad", "transcription"}
    assert [w.text for s in words_only.segments for w in s.words] == [
        w.text for s in transcriber.transcribe(CONVERSATION, vad=vad,
        options=TranscribeOptions()).segments for w in s.words
    ]  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        TranscribeOptions()  # no warning for the defaults
    assert TranscribeOptions(language="auto").language is None  # as the CLI's auto
    with pytest.raises(ConfigError, match="beam_size"):
        TranscribeOptions(beam_size=0)


# --- the service ----------------------------------------------------------------------------


def test_the_service_route_answers_as_the_cli(model_dir, transcriber, tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from lapsv.serve.keys import KeyStore
    from test_serve import auth, serving, upload

    store = KeyStore(tmp_path / "keys.toml")
    keys = (store, store.add("root", role="admin"), store.add("ops", role="verify"))
    files = [upload("audio", str(CONVERSATION))]
    with serving(lapsv.load_model(model_dir), keys, tmp_path / "speakers.db") as client:
        answer = client.post(
            "/v1/transcribe", headers=auth(keys[2]), files=files, data={"formats": "srt,txt"}
        )
        assert answer.status_code == 200, answer.text
        body = answer.json()
        library = transcriber.transcribe(CONVERSATION)  # what `lapsv transcribe` runs
        assert body["segments"] == library.to_json()["segments"]
        assert body["file"] == "conversation" and body["speakers"] == library.speakers
        assert body["text"].startswith(A1_WORDS)
        assert body["rendered"]["txt"].startswith(f"SPEAKER_00: {A1_WORDS}")
        assert re.search(SRT_TIME, body["rendered"]["srt"]) and "json" not in body["rendered"]
        bad = client.post(
            "/v1/transcribe", headers=auth(keys[2]), files=files, data={"language": "xx"}
        )
        assert bad.status_code == 422 and "unknown language 'xx'" in bad.json()["error"]
        no_key = client.post("/v1/transcribe", files=files)
        assert no_key.status_code == 401
    with serving(lapsv.load_model("ge2e"), keys, tmp_path / "ge2e.db") as client:
        answer = client.post("/v1/transcribe", headers=auth(keys[2]), files=files)
        assert answer.status_code == 501
        assert "cannot transcribe" in answer.json()["error"]


def test_speaker_error_maps_labels_to_speakers_and_counts_reference_time_only():
    words = (
        Word(0.0, 1.0, " a", "X"),  # ann 1.0 s
        Word(1.0, 3.0, " b", "X"),  # ann 1.0 s (to 2.0), then a pause
        Word(3.0, 4.0, " c", "Y"),  # bob 1.0 s
        Word(4.0, 5.0, " d", "X"),  # bob 1.0 s: wrong, X is ann
        Word(5.0, 6.0, " e", None),  # bob 0.5 s: unattributed, wrong
    )
    transcript = Transcript("c", 6.0, "en", (TranscriptSegment(0.0, 6.0, "", None, words),))
    reference = [Segment(0.0, 2.0, "ann"), Segment(3.0, 5.5, "bob")]
    overall, per_file = speaker_error({"c": transcript, "other": transcript}, {"c": reference})
    assert list(per_file) == ["c"]
    assert (overall.seconds, overall.wrong) == pytest.approx((4.5, 1.5))
    swapped = Transcript("c", 6.0, "en", (TranscriptSegment(0.0, 6.0, "", None, tuple(
        dataclasses.replace(w, speaker={"X": "Y", "Y": "X"}.get(w.speaker)) for w in words
    )),))  # fmt: skip
    assert speaker_error({"c": swapped}, {"c": reference})[0].wrong == pytest.approx(1.5)


def test_a_whisper_source_without_a_tokenizer_cannot_transcribe(tmp_path):
    """A faster-whisper folder without tokenizer.json (the tiny test model) converts for
    embeddings, but has no decoding settings: a clear error, not a traceback."""
    from ctranslate2_writer import ct2_variables, tiny_whisper, write_ct2

    folder = tmp_path / "ct2"
    folder.mkdir()
    write_ct2(folder / "model.bin", ct2_variables(tiny_whisper()))
    (folder / "config.json").write_text('{"suppress_ids": [], "lang_ids": []}')
    frontend = build_frontend(FrontendConfig(name="whisper", source=str(folder)))
    backend = build_backend("lap", "astp", in_dim=32, n_layers=3, lap_heads=4, lap_out_dim=32)
    model_dir = SpeakerModel(frontend, backend).eval().save(tmp_path / "model")
    with pytest.raises(ModelLoadError, match="has no decoding settings"):
        Transcriber(lapsv.load_model(model_dir))
