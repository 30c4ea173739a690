"""`POST /v1/diarize`: who spoke when in an uploaded conversation, through the library's
`diarize` (the CLI's function), with enrolled names, its errors, limits and keys."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx

import test_serve
from lapsv.audio import load_audio
from lapsv.diarization import SileroVAD, diarize
from lapsv.serve.app import create_app
from lapsv.serve.service import Service
from lapsv.speakers import SpeakerDB
from test_fuzz_audio import wav_bytes
from test_serve import A1, A2, B1, B2, THRESHOLD, auth, serving, upload

# test_serve's fixtures (module scope: one model, keys file and server for this module)
_one_torch_thread, ge2e, keys, client = (
    test_serve._one_torch_thread,  # autouse: one torch thread here too
    test_serve.ge2e,
    test_serve.keys,
    test_serve.client,
)

GAP = 0.5  # seconds of silence between turns
TURNS = ((A1, "a"), (B1, "b"), (A2, "a"), (B2, "b"))


def write_conversation(path: Path) -> list[tuple[float, float, str]]:
    """speaker_a_1, b_1, a_2, b_2 with 0.5 s silences, as a 16 kHz 16-bit WAV at ``path``:
    the turns as (start, end, speaker letter)."""
    parts, turns, at = [], [], 0.0
    for clip, speaker in TURNS:
        wave = load_audio(clip)
        if parts:
            parts.append(np.zeros(int(GAP * 16000), np.float32))
            at += GAP
        parts.append(wave)
        turns.append((at, at + len(wave) / 16000, speaker))
        at += len(wave) / 16000
    soundfile.write(path, np.concatenate(parts), 16000, subtype="PCM_16")
    return turns


@pytest.fixture(scope="module")
def conversation(tmp_path_factory) -> tuple[Path, list[tuple[float, float, str]]]:
    path = tmp_path_factory.mktemp("conversation") / "conversation.wav"
    return path, write_conversation(path)


def labels_of_turns(segments: list[dict], turns: list[tuple[float, float, str]]) -> list[str]:
    """The label that covers most of each turn; each turn must be >= 70 % covered (a
    turn is a whole clip; its pauses are not speech)."""
    found = []
    for start, end, _ in turns:
        cover: dict[str, float] = {}
        for s in segments:
            overlap = min(end, s["end"]) - max(start, s["start"])
            if overlap > 0:
                cover[s["speaker"]] = cover.get(s["speaker"], 0.0) + overlap
        assert sum(cover.values()) >= 0.7 * (end - start), (start, end, segments)
        found.append(max(cover, key=cover.get))
    return found


def test_two_speakers_and_the_enrolled_ones_name(ge2e, keys, conversation, tmp_path):
    path, turns = conversation
    _, admin, verify = keys
    files = [upload("audio", str(path))]
    with serving(ge2e, keys, tmp_path / "speakers.db") as client:
        answer = client.post("/v1/diarize", headers=auth(verify), files=files)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["file"] == "conversation" and body["num_speakers"] == 2
        assert body["speakers"] == ["SPEAKER_00", "SPEAKER_01"] and body["names"] == {}
        assert body["duration"] == pytest.approx(turns[-1][1], abs=1e-3)
        assert labels_of_turns(body["segments"], turns) == ["SPEAKER_00", "SPEAKER_01"] * 2
        library = diarize(ge2e, path)  # what `lapsv diarize` runs on the file
        assert body["segments"] == [s.to_json() for s in library.segments]

        enrolled = client.post(
            "/v1/speakers/alice", headers=auth(admin), files=[upload("audio", A1)]
        )
        assert enrolled.status_code == 201
        unnamed = client.post("/v1/diarize", headers=auth(verify), files=files).json()
        assert unnamed["names"] == {}  # ge2e is not calibrated: no threshold, no names
        named = client.post(
            "/v1/diarize",
            headers=auth(verify),
            files=files,
            data={"name_threshold": str(THRESHOLD), "num_speakers": "2"},
        ).json()
        assert named["names"] == {"SPEAKER_00": "alice"}
        assert named["speakers"] == ["alice", "SPEAKER_01"]
        assert labels_of_turns(named["segments"], turns) == ["alice", "SPEAKER_01"] * 2
        with SpeakerDB(tmp_path / "speakers.db") as db:
            library = diarize(ge2e, path, speakers=db, name_threshold=THRESHOLD)
        assert named["segments"] == [s.to_json() for s in library.segments]
        metrics = client.get("/metrics", headers=auth(verify)).text
        assert 'lapsv_requests_total{route="/v1/diarize",method="POST",status="200"} 3' in metrics


def test_no_speech_and_bad_audio_are_422(client, keys):
    verify = auth(keys[2])
    noise = 0.01 * np.random.default_rng(0).normal(size=3 * 16000)
    answer = client.post(
        "/v1/diarize", headers=verify, files=[("audio", ("n.wav", wav_bytes(noise)))]
    )
    assert answer.status_code == 422
    error = answer.json()["error"]
    assert error.startswith("audio: no speech found") and "`vad_threshold`" in error, error
    for data in (wav_bytes(np.zeros(16000)), bytes(range(256)) * 8, b""):
        files = [("audio", ("x.wav", data))]
        answer = client.post("/v1/diarize", headers=verify, files=files)
        embedded = client.post("/v1/embed", headers=verify, files=files)
        assert answer.status_code == 422 and answer.json() == embedded.json()  # same message
    assert list(client.service.upload_dir.iterdir()) == []  # decoded, then deleted


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"num_speakers": "0"}, "num_speakers must be at least 1, got 0"),
        ({"num_speakers": "two"}, "num_speakers: Input should be a valid integer"),
        ({"min_speakers": "0"}, "min_speakers must be at least 1, got 0"),
        ({"min_speakers": "3", "max_speakers": "2"}, "min_speakers (3) is larger than max_"),
        ({"vad_threshold": "1"}, "vad_threshold must lie in (0, 1), got 1.0"),
        ({"name_threshold": "nan"}, "name_threshold must be a finite number, got nan"),
        ({"num_speakers": "1000"}, "audio: num_speakers is 1000 but there are only"),
    ],
)
def test_bad_options_are_422(client, keys, conversation, data, message):
    files = [upload("audio", str(conversation[0]))]
    answer = client.post("/v1/diarize", headers=auth(keys[2]), files=files, data=data)
    assert answer.status_code == 422 and message in answer.json()["error"], answer.text


def test_the_limits_keys_and_roles_apply(ge2e, keys, conversation, tmp_path):
    files = [upload("audio", str(conversation[0]))]  # 19.6 s, 627 kB
    _, admin, verify = keys
    with serving(ge2e, keys, tmp_path / "db.db", max_audio_seconds=10.0) as client:
        long = client.post("/v1/diarize", headers=auth(verify), files=files)
        assert long.status_code == 413 and "max_audio_seconds" in long.json()["error"]
    with serving(ge2e, keys, tmp_path / "db.db", max_body_mb=0.5) as client:
        big = client.post("/v1/diarize", headers=auth(verify), files=files)
        assert big.status_code == 413 and "max_body_mb" in big.json()["error"]
        for headers in ({}, auth("lapsv_000000000000_x")):
            refused = client.post("/v1/diarize", headers=headers, files=files)
            assert refused.status_code == 401 and refused.json()["error"]
        short = [upload("audio", B2)]
        assert client.post("/v1/diarize", headers=auth(admin), files=short).is_success


def test_diarizing_shares_the_model_thread_with_embeddings(
    ge2e, keys, conversation, tmp_path, monkeypatch
):
    """Diarizations and embeddings at once: the model runs in the batcher's one thread,
    every answer is the one it gets alone, and one Silero VAD serves every request."""
    loaded, threads = [], set()
    monkeypatch.setattr("lapsv.serve.diarize.SileroVAD", lambda: loaded.append(1) or SileroVAD())
    embed_batch = ge2e.embed_batch

    def recorded(waveforms, lengths):
        threads.add(threading.current_thread().name)
        return embed_batch(waveforms, lengths)

    monkeypatch.setattr(ge2e, "embed_batch", recorded)
    service = Service(ge2e, tmp_path / "db.db")
    app = create_app(service, keys=keys[0])
    headers = auth(keys[2])

    async def together() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            calls = [
                client.post("/v1/diarize", headers=headers, files=[upload("audio", path)])
                for path in (str(conversation[0]), str(conversation[0]))
            ]
            calls += [
                client.post("/v1/embed", headers=headers, files=[upload("audio", p)])
                for p in (A1, B1, A2)
            ]
            answers = await asyncio.gather(*calls)
        await service.close()
        return answers

    first, second, *embedded = asyncio.run(together())
    assert [name.startswith("lapsv-embed") for name in threads] == [True]  # one thread
    assert first.status_code == second.status_code == 200
    assert first.json()["segments"] == second.json()["segments"]
    for answer, clip in zip(embedded, (A1, B1, A2), strict=True):
        assert answer.status_code == 200
        assert np.abs(np.array(answer.json()["embedding"]) - ge2e.embed(clip)).max() < 1e-5
    assert len(loaded) == 1
