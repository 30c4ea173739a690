"""`lapsv serve`: every endpoint through httpx against the app (no network: the ASGI app is
called in process), keys and roles, limits, hostile audio, the CLI verbs."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

import httpx
from fastapi.testclient import TestClient

import lapsv
from lapsv.audio import load_audio
from lapsv.cli import main
from lapsv.errors import AudioError
from lapsv.serve.app import create_app
from lapsv.serve.batching import EmbeddingBatcher
from lapsv.serve.keys import KeyStore, parse_keys
from lapsv.serve.limits import Limits
from lapsv.serve.service import Service, ServiceError, check_speaker_name
from lapsv.speakers import SpeakerDB
from test_api import add_calibration, tiny_model
from test_fuzz_audio import VALID_WAV, voice, wav_bytes

DATA = Path(__file__).parent / "data"
CLIPS = {p.name: p for p in sorted(DATA.glob("*.flac"))}
A1, A2, B1, B2 = (str(CLIPS[f"speaker_{s}.flac"]) for s in ("a_1", "a_2", "b_1", "b_2"))
THRESHOLD = 0.8


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """One torch thread: on 2 cores shared with other work, two OpenMP threads that wait
    for each other make GE2E up to 100x slower (benchmarks/run.py measured the same)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ge2e():
    return lapsv.load_model("ge2e")


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """A keys file with an admin and a verify key: (store, admin key, verify key)."""
    store = KeyStore(tmp_path_factory.mktemp("keys") / "keys.toml")
    return store, store.add("root", role="admin"), store.add("ops", role="verify")


@contextlib.contextmanager
def serving(ge2e, keys, db: Path, *, cors_origins=(), threshold=None, **limits):
    """A TestClient (httpx) on a fresh app; the lifespan starts and stops the service."""
    service = Service(ge2e, db, model_name="ge2e", limits=Limits(**limits), threshold=threshold)
    with TestClient(create_app(service, keys=keys[0], cors_origins=cors_origins)) as client:
        client.service = service
        yield client


@pytest.fixture(scope="module")
def client(ge2e, keys, tmp_path_factory):
    with serving(ge2e, keys, tmp_path_factory.mktemp("db") / "speakers.db") as test_client:
        yield test_client


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def upload(field: str, path: str) -> tuple[str, tuple[str, bytes]]:
    return field, (Path(path).name, Path(path).read_bytes())


def cli(capsys, *argv: str) -> list[str]:
    """What `lapsv ARGV` prints (run in process), as lines; it must succeed."""
    capsys.readouterr()
    assert main(list(argv)) == 0
    return capsys.readouterr().out.splitlines()


def verify_lines(answer: dict) -> list[str]:
    """A /v1/verify answer, printed the way `lapsv verify` prints it."""
    kind = "cosine (mean-subtracted)" if answer["mean_subtracted"] else "cosine"
    lines = [f"{kind}: {answer['cosine']:.4f}"]
    if answer["asnorm"] is not None:
        lines.append(f"AS-norm: {answer['asnorm']:.4f}")
    if answer["llr"] is not None:
        lines.append(f"calibrated LLR: {answer['llr']:+.3f}")
    if answer["same"] is None:
        return [*lines, "decision: none"]
    verdict = "SAME speaker" if answer["same"] else "DIFFERENT speakers"
    return [
        *lines,
        f"decision: {verdict} (score {answer['decision_score']:+.4f} vs threshold "
        f"{answer['threshold']:+.4f} from {answer['threshold_source']})",
    ]


def identify_lines(result: dict, source: str) -> list[str]:
    """One /v1/identify result, printed the way `lapsv identify` prints it."""
    best, name = result["candidates"][0], result["score_name"]
    known = result["answer"] != "unknown"
    unknown = "" if known else f"best {best['name']}: "
    verdict = (
        f"{result['answer']} ({unknown}{name} {best['score']:+.3f} {'>=' if known else '<'} "
        f"threshold {result['threshold']:+.3f}, {result['threshold_source']})"
    )
    rows = []
    for rank, c in enumerate(result["candidates"], start=1):
        parts = [f"{rank:>4}. {c['name']:<24} {name} {c['score']:+8.3f}"]
        if name != "cosine":
            parts.append(f"cosine {c['cosine']:+.3f}")
        if c["asnorm"] is not None and name != "AS-norm":
            parts.append(f"AS-norm {c['asnorm']:+.3f}")
        rows.append("   ".join(parts))
    return [f"{source} -> {verdict}", *rows]


# --- public routes, keys and roles --------------------------------------------------------


def test_the_page_health_and_docs_are_public(client):
    page = client.get("/")
    assert page.status_code == 200 and "MediaRecorder" not in page.text
    assert (
        'id="key"' in page.text and "default-src 'self'" in page.headers["content-security-policy"]
    )
    assert 'id="diarize-file"' in page.text and 'id="timeline"' in page.text
    assert 'id="transcribe"' in page.text  # who said what, in the same panel
    script = client.get("/app.js")
    assert "MediaRecorder" in script.text
    assert not any(
        store in script.text for store in ("localStorage.", "sessionStorage.", "cookie=")
    )
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["model_id"].startswith("ge2e-")
    paths = client.get("/openapi.json").json()["paths"]
    assert set(paths) == {
        "/v1/embed",
        "/v1/verify",
        "/v1/identify",
        "/v1/diarize",
        "/v1/transcribe",
        "/v1/speakers",
        "/v1/speakers/{name}",
        "/healthz",
        "/metrics",
    }
    assert client.get("/docs").status_code == 200


ROUTES = [
    ("POST", "/v1/embed"),
    ("POST", "/v1/verify"),
    ("POST", "/v1/identify"),
    ("POST", "/v1/diarize"),
    ("GET", "/v1/speakers"),
    ("POST", "/v1/speakers/alice"),
    ("DELETE", "/v1/speakers/alice"),
    ("GET", "/metrics"),
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_no_key_or_a_wrong_key_is_401(client, keys, method, path):
    _, admin, _ = keys
    wrong_secret = admin[:-4] + ("AAAA" if not admin.endswith("AAAA") else "BBBB")
    for headers in (
        {},
        auth("nonsense"),
        auth(wrong_secret),
        {"Authorization": f"Basic {admin}"},
        {"X-API-Key": "lapsv_000000000000_x"},
    ):
        answer = client.request(method, path, headers=headers, files=[upload("audio", A1)])
        assert answer.status_code == 401, (headers, answer.text)
        assert answer.json()["error"] and answer.headers["www-authenticate"].startswith("Bearer")


def test_the_verify_role_may_not_enrol_or_delete(client, keys):
    _, admin, verify = keys
    files = [upload("audio", A1)]
    for method in ("POST", "DELETE"):
        answer = client.request(method, "/v1/speakers/mallory", headers=auth(verify), files=files)
        assert answer.status_code == 403 and "admin role" in answer.json()["error"]
    assert client.get("/v1/speakers", headers={"X-API-Key": verify}).status_code == 200
    assert client.get("/metrics", headers=auth(verify)).status_code == 200
    answer = client.post("/v1/speakers/mallory", headers=auth(admin), files=files)
    assert answer.status_code == 201
    assert client.delete("/v1/speakers/mallory", headers=auth(admin)).status_code == 200


# --- the verbs, and the CLI's answers -----------------------------------------------------


def test_embed_is_the_librarys_embedding(client, keys, ge2e):
    for path in (A1, B2):
        answer = client.post("/v1/embed", headers=auth(keys[2]), files=[upload("audio", path)])
        assert answer.status_code == 200
        body = answer.json()
        vector, seconds = ge2e.embed_with_duration(path)
        assert body["embed_dim"] == 256 and body["seconds"] == pytest.approx(seconds)
        assert np.abs(np.array(body["embedding"]) - vector).max() < 1e-5


@pytest.mark.parametrize("threshold", [THRESHOLD, None])
def test_verify_answers_what_lapsv_verify_prints(client, keys, capsys, threshold):
    option = [] if threshold is None else ["--threshold", str(threshold)]
    for a, b in [(A1, A2), (A1, B1), (B2, B1)]:
        data = {} if threshold is None else {"threshold": str(threshold)}
        answer = client.post(
            "/v1/verify", headers=auth(keys[2]), files=[upload("a", a), upload("b", b)], data=data
        )
        assert answer.status_code == 200, answer.text
        printed = cli(capsys, "verify", "ge2e", a, b, *option)
        expected = verify_lines(answer.json())
        assert printed[:-1] == expected[:-1] and printed[-1].startswith(expected[-1])
        assert answer.json()["decision"] == (
            None if threshold is None else ("same" if a[-8] == b[-8] else "different")
        )


def test_enrol_identify_verify_by_name_list_delete(ge2e, keys, tmp_path, capsys):
    db = tmp_path / "speakers.db"
    _, admin, verify = keys
    with serving(ge2e, keys, db) as client:
        first = client.post("/v1/speakers/alice", headers=auth(admin), files=[upload("audio", A1)])
        assert first.status_code == 201 and first.json()["added"] == 1
        again = client.post("/v1/speakers/alice", headers=auth(admin), files=[upload("audio", A1)])
        assert again.status_code == 200 and (again.json()["added"], again.json()["updated"]) == (
            0,
            1,
        )
        assert (
            client.post(
                "/v1/speakers/bob", headers=auth(admin), files=[upload("audio", B1)]
            ).status_code
            == 201
        )
        listed = client.get("/v1/speakers", headers=auth(verify)).json()
        assert [s["name"] for s in listed["speakers"]] == ["alice", "bob"]
        assert listed["model_name"] == "ge2e"
        found = client.post(
            "/v1/identify",
            headers=auth(verify),
            files=[upload("audio", A2), upload("audio", B2)],
            data={"top_k": "2", "threshold": str(THRESHOLD)},
        ).json()["results"]
        printed = cli(
            capsys, "identify", "ge2e", "--db", str(db), A2, B2, "--top-k", "2",
            "--threshold", str(THRESHOLD),
        )  # fmt: skip
        expected = identify_lines(found[0], A2) + identify_lines(found[1], B2)
        assert printed == expected
        assert [r["answer"] for r in found] == ["alice", "bob"]
        by_name = client.post(
            "/v1/verify",
            headers=auth(verify),
            files=[upload("a", A2)],
            data={"name": "alice", "threshold": str(THRESHOLD)},
        ).json()
        assert by_name["decision"] == "same"
        assert by_name["cosine"] == pytest.approx(found[0]["candidates"][0]["cosine"], abs=1e-6)
        assert client.delete("/v1/speakers/bob", headers=auth(admin)).json()["utterances"] == 1
        assert client.delete("/v1/speakers/bob", headers=auth(admin)).status_code == 404
        missing = client.post(
            "/v1/verify", headers=auth(verify), files=[upload("a", A2)], data={"name": "bob"}
        )
        assert missing.status_code == 404
    assert "alice" in "\n".join(cli(capsys, "speakers", "--db", str(db), "list"))


def test_as_norm_and_calibrated_llr_as_the_cli_prints_them(keys, tmp_path, capsys):
    """A model with a training mean, AS-norm cohort and QMF: every score of verify and
    identify, and the decision at LLR 0, equal what the CLI prints."""
    model_dir = str(tiny_model().save(tmp_path / "tiny"))
    add_calibration(Path(model_dir), 16)
    model, db = lapsv.load_model(model_dir), tmp_path / "speakers.db"
    service = Service(model, db, model_name=model_dir)
    admin, verify = auth(keys[1]), auth(keys[2])
    with TestClient(create_app(service, keys=keys[0])) as client:
        for name, clip in (("alice", A1), ("bob", B1)):
            assert client.post(
                f"/v1/speakers/{name}", headers=admin, files=[upload("audio", clip)]
            ).is_success
        for a, b in [(A1, A2), (A1, B2)]:
            answer = client.post(
                "/v1/verify", headers=verify, files=[upload("a", a), upload("b", b)]
            ).json()
            assert answer["llr"] is not None and answer["asnorm"] is not None
            assert verify_lines(answer) == cli(capsys, "verify", model_dir, a, b)
        found = client.post(
            "/v1/identify", headers=verify, files=[upload("audio", A2)], data={"top_k": "2"}
        ).json()["results"][0]
        assert found["score_name"] == "LLR" and found["threshold_source"].startswith("QMF")
        printed = cli(capsys, "identify", model_dir, "--db", str(db), A2, "--top-k", "2")
        assert printed == identify_lines(found, A2)
        by_name = client.post(
            "/v1/verify", headers=verify, files=[upload("a", A2)], data={"name": "bob"}
        ).json()
        bob = next(c for c in found["candidates"] if c["name"] == "bob")
        assert (by_name["llr"], by_name["asnorm"]) == pytest.approx((bob["llr"], bob["asnorm"]))


def test_identify_with_nobody_enrolled_and_bad_requests(client, keys):
    verify = auth(keys[2])
    empty = client.post("/v1/identify", headers=verify, files=[upload("audio", A1)])
    assert empty.status_code == 409 and "no speaker is enrolled" in empty.json()["error"]
    both = client.post(
        "/v1/verify", headers=verify, files=[upload("a", A1), upload("b", A2)], data={"name": "x"}
    )
    neither = client.post("/v1/verify", headers=verify, files=[upload("a", A1)])
    assert both.status_code == neither.status_code == 422
    for data in ({"top_k": "0"}, {"top_k": "x"}, {"threshold": "nan"}):
        answer = client.post("/v1/identify", headers=verify, files=[upload("audio", A1)], data=data)
        assert answer.status_code == 422 and answer.json()["error"], data
    assert client.post("/v1/embed", headers=verify).status_code == 422  # no file


BAD_NAMES = ["x'; DROP TABLE speakers; --", " alice", "a" * 65, "bad\tname", "<script>", "ä\u200b"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_speaker_names_are_refused(client, keys, name):
    answer = client.post(
        f"/v1/speakers/{urllib.parse.quote(name, safe='')}",
        headers=auth(keys[1]),
        files=[upload("audio", A1)],
    )
    assert answer.status_code == 422 and "bad speaker name" in answer.json()["error"]
    with SpeakerDB(client.service.db_path) as db:
        assert name not in {s.name for s in db.speakers()}


def test_speaker_names_allow_letters_of_any_script():
    assert check_speaker_name("José Ortega-y_Gasset") == "José Ortega-y_Gasset"
    for name in ("", "-x", "a/b", "a\x00b"):
        with pytest.raises(ServiceError):
            check_speaker_name(name)


# --- hostile audio and limits -------------------------------------------------------------


HOSTILE = {
    "empty-file": b"",
    "header-only": VALID_WAV[:44],
    "truncated": VALID_WAV[:30],
    "random-bytes": bytes(range(256)) * 8,
    "zero-frames": wav_bytes(np.zeros((0, 1))),
    "silent": wav_bytes(np.zeros(16000)),
    "nan": wav_bytes(np.full(16000, np.nan, dtype=np.float32), subtype="FLOAT"),
    "inf": wav_bytes(np.full(16000, np.inf, dtype=np.float32), subtype="FLOAT"),
    "huge": wav_bytes(np.full(16000, 3e38, dtype=np.float32), subtype="FLOAT"),
    "too-short": wav_bytes(voice(0.1)),
    "bad-rate": VALID_WAV[:24] + (7).to_bytes(4, "little") + VALID_WAV[28:],
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_audio_gets_422_with_lapsvs_own_message(client, keys, tmp_path, name):
    path = tmp_path / "hostile.wav"
    path.write_bytes(HOSTILE[name])
    with pytest.raises(AudioError) as raised:
        load_audio(path)
    for route, field in (("/v1/embed", "audio"), ("/v1/identify", "audio[0]")):
        files = [("audio", ("x.wav", HOSTILE[name]))]
        answer = client.post(route, headers=auth(keys[2]), files=files)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error == f"{field}: {raised.value.reason.replace(str(path), field)}"
        assert "Traceback" not in error and "lapsv-serve-" not in error
    assert list(client.service.upload_dir.iterdir()) == []  # decoded, then deleted


def test_an_oversize_body_is_413(ge2e, keys, tmp_path):
    verify = auth(keys[2])
    with serving(ge2e, keys, tmp_path / "db.db", max_body_mb=0.02) as client:
        big = client.post("/v1/embed", headers=verify, files=[upload("audio", A1)])  # 50 kB
        assert big.status_code == 413 and "max_body_mb" in big.json()["error"]
        # without Content-Length (chunked): refused once the body passes the limit
        request = client.build_request("POST", "/v1/embed", files=[upload("audio", A1)])
        body = request.read()
        chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))
        headers = {**verify, "content-type": request.headers["content-type"]}
        streamed = client.post("/v1/embed", headers=headers, content=chunks)
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413 and "max_body_mb" in streamed.json()["error"]
        small = [("audio", ("small.wav", wav_bytes(voice(0.5))))]  # 16 kB
        assert client.post("/v1/embed", headers=verify, files=small).status_code == 200


def test_too_long_audio_is_413(ge2e, keys, tmp_path):
    with serving(ge2e, keys, tmp_path / "db.db", max_audio_seconds=4.0) as client:
        verify = auth(keys[2])
        assert client.post("/v1/embed", headers=verify, files=[upload("audio", A1)]).is_success
        long = client.post("/v1/embed", headers=verify, files=[upload("audio", A2)])  # 5.0 s
        assert long.status_code == 413 and "max_audio_seconds" in long.json()["error"]
        pair = client.post("/v1/verify", headers=verify, files=[upload("a", A1), upload("b", B1)])
        assert pair.status_code == 413  # 3.5 + 4.6 s in one request


def test_the_rate_limit_is_429_per_key(ge2e, keys, tmp_path):
    with serving(ge2e, keys, tmp_path / "db.db", rate_limit=3) as client:
        answers = [client.get("/v1/speakers", headers=auth(keys[2])) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert int(answers[-1].headers["retry-after"]) >= 1
        assert "rate limit" in answers[-1].json()["error"]
        assert client.get("/v1/speakers", headers=auth(keys[1])).status_code == 200  # other key


def test_concurrent_requests_per_key_are_limited(ge2e, keys, tmp_path):
    service = Service(ge2e, tmp_path / "db.db", limits=Limits(max_concurrent=1))
    app = create_app(service, keys=keys[0])

    async def burst() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            calls = [
                client.post("/v1/embed", headers=auth(keys[2]), files=[upload("audio", A2)])
                for _ in range(4)
            ]
            statuses = [answer.status_code for answer in await asyncio.gather(*calls)]
        await service.close()
        return statuses

    statuses = asyncio.run(burst())
    assert 200 in statuses and 429 in statuses and set(statuses) <= {200, 429}


def test_metrics_are_prometheus_text(client, keys):
    client.post("/v1/embed", headers=auth(keys[2]), files=[upload("audio", A1)])
    text = client.get("/metrics", headers=auth(keys[2])).text
    assert 'lapsv_requests_total{route="/v1/embed",method="POST",status="200"}' in text
    assert 'lapsv_request_seconds_bucket{route="/v1/embed",le="+Inf"}' in text
    assert "lapsv_batch_size_count" in text and "# TYPE lapsv_batch_size histogram" in text


def test_no_cors_unless_configured(ge2e, keys, client, tmp_path):
    preflight = {
        "Origin": "https://elsewhere.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    answer = client.options("/v1/verify", headers=preflight)
    assert "access-control-allow-origin" not in answer.headers
    origin = "https://app.example"
    with serving(ge2e, keys, tmp_path / "db.db", cors_origins=(origin,)) as allowed:
        answer = allowed.options("/v1/verify", headers={**preflight, "Origin": origin})
        assert answer.status_code == 200
        assert answer.headers["access-control-allow-origin"] == origin


def test_batched_embeddings_equal_one_at_a_time(ge2e):
    alone = {name: ge2e.embed(str(path)) for name, path in CLIPS.items()}
    waves = [load_audio(path) for path in CLIPS.values()]
    batcher = EmbeddingBatcher(ge2e, max_batch=6, max_wait_ms=20)
    sizes = []
    batcher.on_batch = lambda size, seconds: sizes.append(size)

    async def together() -> list[np.ndarray]:
        try:
            return await asyncio.gather(*(batcher.embed(w) for w in waves * 3))
        finally:
            await batcher.close()

    vectors = asyncio.run(together())
    assert max(sizes) > 1  # really batched
    for vector, name in zip(vectors, itertools.cycle(CLIPS), strict=False):
        assert np.abs(vector - alone[name]).max() < 1e-5


# --- keys ------------------------------------------------------------------------------


def test_the_keys_file_holds_only_salted_hashes_mode_0600(tmp_path):
    store = KeyStore(tmp_path / "keys.toml")
    first, second = store.add("a", role="admin"), store.add("b", role="verify")
    text = (tmp_path / "keys.toml").read_text()
    for key in (first, second):
        assert key.split("_", 2)[2] not in text
    assert (tmp_path / "keys.toml").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["keys.toml"]  # no temporary file left
    entries = parse_keys(text)
    assert len({e.salt for e in entries}) == 2 and len({e.hash for e in entries}) == 2
    server = KeyStore(tmp_path / "keys.toml")  # what a running server holds
    assert server.authenticate(first).name == "a" and server.authenticate(second).role == "verify"
    assert server.authenticate(first + "x") is None
    assert server.authenticate(first.replace("lapsv_", "lapsx_")) is None
    store.remove("a")
    assert server.authenticate(first) is None  # the server re-reads the changed file
    assert server.authenticate(second).name == "b"


def test_keys_on_the_command_line(tmp_path, capsys):
    path = str(tmp_path / "sub" / "keys.toml")
    assert main(["serve", "keys", "add", "ci", "--role", "verify", "--keys", path]) == 0
    captured = capsys.readouterr()
    key = captured.out.strip()
    assert key.startswith("lapsv_") and "shown only now" in captured.err
    assert KeyStore(path).authenticate(key).name == "ci"
    assert main(["serve", "keys", "add", "ci", "--role", "admin", "--keys", path]) == 2
    assert "already has a key named 'ci'" in capsys.readouterr().err
    assert main(["serve", "keys", "list", "--keys", path]) == 0
    assert "ci" in capsys.readouterr().out and key not in capsys.readouterr().out
    assert main(["serve", "keys", "add", "x", "--role", "root", "--keys", path]) == 2
    assert main(["serve", "keys", "remove", "ci", "--keys", path]) == 0
    assert KeyStore(path).keys() == []


def test_serve_refuses_to_start_without_keys_or_a_port(tmp_path, capsys):
    keys = tmp_path / "keys.toml"
    keys.write_text("# no keys yet\n")
    db = str(tmp_path / "speakers.db")
    assert main(["serve", "ge2e", "--db", db, "--keys", str(keys)]) == 2
    assert "holds no API key" in capsys.readouterr().err
    KeyStore(keys).add("a", role="admin")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", "ge2e", "--db", db, "--keys", str(keys), "--port", port]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: cannot listen on 127.0.0.1:") and error.count("\n") == 1


def test_the_cli_works_without_the_serve_extra(tmp_path):
    """`lapsv --help` and every verb import no FastAPI / uvicorn; `lapsv serve` without
    them says what to install, in one line."""
    keys = tmp_path / "keys.toml"
    KeyStore(keys).add("a", role="admin")
    script = f"""
import sys
from lapsv.cli import build_parser, main
build_parser()
assert not {{"fastapi", "uvicorn", "starlette"}} & set(sys.modules), sorted(sys.modules)
sys.modules["fastapi"] = sys.modules["uvicorn"] = None  # as if not installed
sys.exit(main(["serve", "ge2e", "--db", {str(tmp_path / "db.db")!r}, "--keys", {str(keys)!r}]))
"""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: lapsv serve needs fastapi, uvicorn: install lapsv[serve] "
        "(pip install 'lapsv[serve]')"
    ]
    assert json.dumps(done.stdout) == '""'
