"""The SQLite speaker database: enrol, identify, list, delete; concurrency and crashes."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys

import numpy as np
import pytest

import lapsv
from lapsv.cli import main
from lapsv.identification import identify_embeddings
from lapsv.scoring.norm import length_normalize
from lapsv.scoring.state import ScoringState
from lapsv.speakers import SpeakerDB, SpeakerDBError, Utterance
from test_api import add_calibration, tiny_model

DIM = 8


def utt(key: str, seed: int, seconds: float = 2.0) -> Utterance:
    vector = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
    return Utterance(key, f"/audio/{key}.wav", seconds, vector)


class FakeModel:
    """What identify needs from a model: its id and scoring state."""

    def __init__(self, model_id: str = "m1", scoring: ScoringState | None = None) -> None:
        self.model_id = model_id
        self.scoring = scoring or ScoringState()


@pytest.fixture
def db(tmp_path):
    with SpeakerDB(tmp_path / "speakers.db", create=True) as database:
        yield database


def test_enroll_list_delete(db):
    result = db.enroll("alice", [utt("a1", 1), utt("a2", 2)], model_id="m1", model_name="demo")
    assert (result.new_speaker, result.added, result.updated, result.total) == (True, 2, 0, 2)
    db.enroll("bob", [utt("b1", 3, 3.5)], model_id="m1")
    speakers = db.speakers()
    assert [(s.name, s.utterances, s.seconds) for s in speakers] == [
        ("alice", 2, 4.0),
        ("bob", 1, 3.5),
    ]
    assert db.model_id == "m1" and db.embed_dim == DIM and db.meta()["model_name"] == "demo"
    assert db.delete("alice") == 2
    assert [s.name for s in db.speakers()] == ["bob"]
    with pytest.raises(SpeakerDBError, match="no speaker named 'alice'"):
        db.delete("alice")
    rows = sqlite3.connect(db.path).execute("SELECT COUNT(*) FROM utterances").fetchone()
    assert rows == (1,)


def test_embeddings_are_float32_blobs(db):
    db.enroll("alice", [utt("a1", 1)], model_id="m1")
    kind, size, blob = (
        sqlite3.connect(db.path)
        .execute("SELECT typeof(embedding), length(embedding), embedding FROM utterances")
        .fetchone()
    )
    assert (kind, size) == ("blob", 4 * DIM)
    assert np.array_equal(np.frombuffer(blob, "<f4"), utt("a1", 1).embedding)


def test_reenrolling_adds_and_updates_deterministically(tmp_path):
    one = SpeakerDB(tmp_path / "one.db", create=True)
    one.enroll("alice", [utt("a1", 1), utt("a2", 2)], model_id="m1")
    again = one.enroll("alice", [utt("a3", 3), utt("a1", 1)], model_id="m1")
    assert (again.new_speaker, again.added, again.updated, again.total) == (False, 1, 1, 3)
    two = SpeakerDB(tmp_path / "two.db", create=True)
    two.enroll("alice", [utt("a3", 3), utt("a2", 2), utt("a1", 1)], model_id="m1")
    assert np.array_equal(one.models().vectors, two.models().vectors)  # order-free model
    assert [u.key for u in one.utterances("alice")] == ["a1", "a2", "a3"]
    # a changed recording under the same key replaces the stored embedding
    one.enroll("alice", [utt("a1", 99)], model_id="m1")
    stored = {u.key: u.embedding for u in one.utterances("alice")}
    assert np.array_equal(stored["a1"], utt("a1", 99).embedding)
    replaced = one.enroll("alice", [utt("a4", 4)], model_id="m1", replace=True)
    assert (replaced.added, replaced.removed, replaced.total) == (1, 3, 1)


def test_speaker_model_is_the_mean_of_normalised_utterances(db):
    utterances = [utt("a1", 1), utt("a2", 2), utt("a3", 3)]
    db.enroll("alice", utterances, model_id="m1")
    models = db.models()
    unit = length_normalize(np.stack([u.embedding for u in utterances])).mean(0)
    assert np.allclose(models.vectors[0], unit / np.linalg.norm(unit), atol=1e-6)
    assert np.allclose(models.raw[0], np.stack([u.embedding for u in utterances]).mean(0))
    assert models.seconds[0] == pytest.approx(6.0)


def test_mixing_models_is_refused_and_changes_nothing(db):
    db.enroll("alice", [utt("a1", 1)], model_id="m1", model_name="demo")
    with pytest.raises(SpeakerDBError, match=r"model m1 \(demo\), not of model other \(m2\)"):
        db.enroll("bob", [utt("b1", 2)], model_id="m2", model_name="other")
    with pytest.raises(SpeakerDBError, match="holds embeddings of model m1"):
        identify_embeddings(db, FakeModel("m2"), np.ones((1, DIM)), [2.0], ["x"])
    assert [s.name for s in db.speakers()] == ["alice"]
    wider = Utterance("b1", "b.wav", 1.0, np.ones(DIM + 1, np.float32))
    with pytest.raises(SpeakerDBError, match="8-d embeddings"):
        db.enroll("bob", [wider], model_id="m1")


def test_missing_or_foreign_files_are_clear_errors(tmp_path):
    with pytest.raises(SpeakerDBError, match="no such speaker database"):
        SpeakerDB(tmp_path / "missing.db")
    (tmp_path / "text.db").write_text("hello, not sqlite " * 100)
    with pytest.raises(SpeakerDBError, match="not a lapsv speaker database"):
        SpeakerDB(tmp_path / "text.db")
    other = sqlite3.connect(tmp_path / "other.db")
    other.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    other.commit()
    other.close()
    with pytest.raises(SpeakerDBError, match="not a lapsv speaker database"):
        SpeakerDB(tmp_path / "other.db")


def test_identify_ranks_speakers_and_answers_unknown_below_the_threshold(db):
    for name, seed in (("alice", 1), ("bob", 2), ("carol", 3)):
        db.enroll(name, [utt(f"{name}1", seed), utt(f"{name}2", seed + 10)], model_id="m1")
    alice = db.models().vectors[0]
    stranger = np.random.default_rng(50).normal(size=DIM)
    tests = np.stack([alice + 0.01, stranger]).astype(np.float32)
    results = identify_embeddings(
        db, FakeModel(), tests, [3.0, 3.0], ["a.wav", "x.wav"], top_k=2, threshold=0.9
    )
    first, second = results
    assert first.answer == "alice" and first.candidates[0].cosine > 0.99
    assert len(first.candidates) == 2 and first.score_name == "cosine"
    assert second.answer == "unknown" and second.candidates[0].score < 0.9
    no_threshold = identify_embeddings(db, FakeModel(), tests, [3.0, 3.0], ["a", "x"])
    assert no_threshold[0].answer is None and no_threshold[0].threshold is None
    assert len(no_threshold[0].candidates) == 3


def test_identify_uses_llr_0_when_the_model_is_calibrated(tmp_path, db):
    add_calibration(tmp_path, DIM)
    state = ScoringState.load(tmp_path)
    db.enroll("alice", [utt("a1", 1), utt("a2", 2)], model_id="m1")
    db.enroll("bob", [utt("b1", 3)], model_id="m1")
    (result,) = identify_embeddings(
        db, FakeModel(scoring=state), utt("t", 1).embedding[None], [2.0], ["t.wav"]
    )
    assert result.score_name == "LLR" and result.threshold == 0.0
    assert "QMF" in result.threshold_source
    best = result.candidates[0]
    assert best.llr == best.score and best.asnorm is not None
    assert result.answer == (best.name if best.llr >= 0 else "unknown")


# --- several processes, and a process killed mid-write -----------------------------------


def _enroll_many(path: str, worker: int, count: int, start) -> None:
    start.wait()
    with SpeakerDB(path, create=True) as db:
        for i in range(count):
            name = f"w{worker}-s{i}"
            db.enroll(
                name,
                [utt(f"{name}-{j}", worker * 1000 + i * 10 + j) for j in range(3)],
                model_id="m1",
            )


def test_concurrent_enroll_processes_lose_no_speaker(tmp_path):
    """6 processes start together on a fresh file, each enrolling 15 speakers."""
    context = multiprocessing.get_context("fork")
    path = str(tmp_path / "speakers.db")
    start = context.Event()
    workers = [context.Process(target=_enroll_many, args=(path, w, 15, start)) for w in range(6)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0] * 6
    with SpeakerDB(path) as db:
        speakers = db.speakers()
        assert len(speakers) == 90 and all(s.utterances == 3 for s in speakers)
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert check.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def _killed_mid_write(path: str, name: str, replace: bool) -> None:
    """Enrol ``name`` and SIGKILL this process after its 2nd utterance row is written."""
    import lapsv.speakers.writes as speakerdb

    store, written = speakerdb.store_utterance, []

    def store_then_die(*args):
        store(*args)
        written.append(1)
        if len(written) == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    speakerdb.store_utterance = store_then_die
    with SpeakerDB(path) as db:
        db.enroll(
            name, [utt(f"{name}-new{j}", 500 + j) for j in range(4)], model_id="m1", replace=replace
        )


@pytest.mark.parametrize(("name", "replace"), [("carol", False), ("alice", True)])
def test_a_process_killed_mid_write_leaves_the_database_as_before(tmp_path, name, replace):
    path = tmp_path / "speakers.db"
    with SpeakerDB(path, create=True) as db:
        db.enroll("alice", [utt("a1", 1), utt("a2", 2)], model_id="m1")
        db.enroll("bob", [utt("b1", 3)], model_id="m1")
        before = db.models()
    process = multiprocessing.get_context("fork").Process(
        target=_killed_mid_write, args=(str(path), name, replace)
    )
    process.start()
    process.join(60)
    assert process.exitcode == -signal.SIGKILL
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
    with SpeakerDB(path) as db:
        assert [(s.name, s.utterances) for s in db.speakers()] == [("alice", 2), ("bob", 1)]
        after = db.models()
        assert np.array_equal(after.vectors, before.vectors) and after.names == before.names
        db.enroll("carol", [utt("c1", 4)], model_id="m1")  # and it takes writes again
        assert len(db.speakers()) == 3


@pytest.mark.slow
def test_six_lapsv_enroll_commands_at_once(tmp_path, clips):
    """The real thing: six `lapsv enroll` processes started together on one new file."""
    model_dir = tiny_model().save(tmp_path / "model")
    db = tmp_path / "speakers.db"
    audio = [str(p) for p in clips.values()]
    commands = [
        [
            sys.executable,
            "-m",
            "lapsv.cli",
            "enroll",
            str(model_dir),
            "--db",
            str(db),
            f"speaker{i}",
            audio[i % 4],
            audio[(i + 1) % 4],
        ]
        for i in range(6)
    ]
    processes = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for c in commands
    ]
    outputs = [p.communicate(timeout=600) for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, [e[-500:] for _, e in outputs]
    with SpeakerDB(db) as database:
        assert [(s.name, s.utterances) for s in database.speakers()] == [
            (f"speaker{i}", 2) for i in range(6)
        ]


# --- the command line, as a user runs it ---------------------------------------------------


def test_enroll_identify_list_delete_on_the_command_line(tmp_path, clips, capsys):
    model_dir = tiny_model().save(tmp_path / "model")
    add_calibration(model_dir, 16)
    db = str(tmp_path / "speakers.db")
    a1, a2, b1, b2 = (str(clips[k]) for k in sorted(clips))
    assert main(["enroll", str(model_dir), "--db", db, "alice", a1]) == 0
    assert "enrolled new speaker alice: 1 recording(s) added" in capsys.readouterr().out
    assert main(["enroll", str(model_dir), "--db", db, "bob", b1, a1]) == 0
    assert main(["enroll", str(model_dir), "--db", db, "bob", b1, "--replace"]) == 0
    assert "updated speaker bob: 0 recording(s) added, 1 updated, 1 removed" in (
        capsys.readouterr().out
    )
    assert main(["identify", str(model_dir), "--db", db, a2, b2, "--top-k", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{a2} -> " in out and f"{b2} -> " in out
    assert "threshold +0.000, QMF calibration (LLR 0)" in out
    assert out.count("   1. ") == 2 and out.count("   2. ") == 2
    model = lapsv.load_model(model_dir)
    with SpeakerDB(db) as database:
        expected = identify_embeddings(
            database, model, model.embed(a2)[None], [3.5], [a2], top_k=2
        )[0]
    assert f"{a2} -> {expected.answer} (" in out
    assert main(["speakers", "--db", db, "list"]) == 0
    listing = capsys.readouterr().out
    assert "2 speaker(s); model lapsv-" in listing and "alice" in listing
    assert main(["speakers", "delete", "--db", db, "bob"]) == 0
    assert "deleted bob (1 recording(s))" in capsys.readouterr().out
    assert main(["identify", "ge2e", "--db", db, a2]) == 2
    assert "not of model ge2e (ge2e-" in capsys.readouterr().err


def test_identify_without_calibration_explains_the_threshold(tmp_path, clips, capsys):
    model_dir = tiny_model().save(tmp_path / "model")
    db = str(tmp_path / "speakers.db")
    assert main(["enroll", str(model_dir), "--db", db, "alice", str(clips["speaker_a_1"])]) == 0
    assert main(["identify", str(model_dir), "--db", db, str(clips["speaker_a_2"])]) == 0
    out = capsys.readouterr().out
    assert "best match alice (no threshold: no decision)" in out
    assert "pass --threshold" in out
    args = ["identify", str(model_dir), "--db", db, str(clips["speaker_a_2"])]
    assert main([*args, "--threshold", "1.01"]) == 0
    assert "-> unknown (best alice: cosine" in capsys.readouterr().out


def test_enroll_reports_bad_files_and_keeps_the_good_ones(tmp_path, clips, capsys):
    model_dir = tiny_model().save(tmp_path / "model")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF garbage" * 10)
    db = str(tmp_path / "speakers.db")
    code = main(
        ["enroll", str(model_dir), "--db", db, "alice", str(clips["speaker_a_1"]), str(broken)]
    )
    captured = capsys.readouterr()
    assert code == 1 and "1 recording(s) added" in captured.out
    assert "broken.wav: cannot decode" in captured.err


@pytest.mark.parametrize("verb", ["enroll", "identify", "speakers", "export"])
def test_every_new_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert "--db" in capsys.readouterr().out or verb == "export"
