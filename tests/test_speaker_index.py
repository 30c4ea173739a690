"""The speaker index: exact search equals brute force, it is never behind the database,
the stored base is reused, HNSW keeps its recall, bulk import, schema upgrade, stored
AS-norm statistics, and enrol/identify from concurrent processes."""

from __future__ import annotations

import dataclasses
import multiprocessing
import sqlite3
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import lapsv.speakers.index as index_module
from lapsv import identification
from lapsv.cli import main
from lapsv.embeddings import EmbeddingSet
from lapsv.identification import cohort_statistics_of, identify_embeddings, import_embeddings
from lapsv.scoring.norm import cosine_scores
from lapsv.scoring.state import ScoringState, fit_scoring_state, verify_embeddings
from lapsv.speakers import SpeakerDB, SpeakerDBError, Utterance
from lapsv.speakers.index import SpeakerIndex

DIM = 16


def speaker_vectors(n: int, seed: int = 0, rank: int = 8) -> np.ndarray:
    """Unit vectors with the structure of speaker embeddings: a low-rank speaker subspace
    plus noise (PLDA's model), not uniform on the sphere."""
    rng = np.random.default_rng(seed)
    basis = rng.normal(size=(rank, DIM))
    x = rng.normal(size=(n, rank)) @ basis + 0.3 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def import_vectors(db: SpeakerDB, vectors: np.ndarray, prefix: str = "s") -> list[str]:
    names = [f"{prefix}{i:06d}" for i in range(len(vectors))]
    groups = {name: [Utterance(name, name, 2.0, v)] for name, v in zip(names, vectors, strict=True)}
    db.import_speakers(groups, model_id="m")
    return names


def brute_force(db: SpeakerDB, queries: np.ndarray, k: int, mean=None) -> list[list[str]]:
    models = db.models()
    n, s = len(queries), len(models.names)
    scores = cosine_scores(
        models.vectors, queries, np.tile(np.arange(s), n), np.repeat(np.arange(n), s), mean=mean
    ).reshape(n, s)
    return [[models.names[j] for j in np.argsort(-row, kind="stable")[:k]] for row in scores]


def names_of(db: SpeakerDB, ids: np.ndarray) -> list[list[str]]:
    found = db.models(np.unique(ids[ids >= 0]))
    name = dict(zip(found.ids.tolist(), found.names, strict=True))
    return [[name[i] for i in row if i >= 0] for row in ids.tolist()]


@pytest.fixture
def db(tmp_path):
    with SpeakerDB(tmp_path / "speakers.db", create=True) as database:
        yield database


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_exact_search_equals_brute_force(db, backend):
    import_vectors(db, speaker_vectors(3000))
    queries = speaker_vectors(50, seed=1)
    mean = speaker_vectors(100, seed=2).mean(axis=0)
    index = SpeakerIndex(db, mean=mean, backend=backend)
    ids, scores = index.search(queries, 5)
    assert index.kind == ("faiss-flat" if backend == "faiss" else "numpy")
    assert names_of(db, ids) == brute_force(db, queries, 5, mean=mean)
    assert np.all(np.diff(scores, axis=1) <= 0)


@pytest.mark.parametrize("backend", ["faiss", "numpy"])
def test_the_index_is_never_behind_the_database(db, backend):
    """Enrol, identify, enrol again, identify; also delete and re-enrol, with one index
    kept open and with a fresh one that starts from the stored base."""
    vectors = speaker_vectors(200)
    import_vectors(db, vectors[:100])
    kept = SpeakerIndex(db, backend=backend)
    query = vectors[150:151]
    assert names_of(db, kept.search(query, 1)[0]) != [["s000150"]]
    import_vectors(db, vectors[100:], prefix="t")  # the query's own speaker arrives
    for index in (kept, SpeakerIndex(db, backend=backend)):
        assert names_of(db, index.search(query, 1)[0]) == [["t000050"]]
    db.delete("t000050")
    for index in (kept, SpeakerIndex(db, backend=backend)):
        best = names_of(db, index.search(query, 3)[0])[0]
        assert "t000050" not in best and best == brute_force(db, query, 3)[0]
    utterance = Utterance("x", "x", 1.0, vectors[150])
    db.enroll("s000003", [utterance], model_id="m", replace=True)  # an update moves a speaker
    for index in (kept, SpeakerIndex(db, backend=backend)):
        assert names_of(db, index.search(query, 1)[0]) == [["s000003"]]
        assert len(index) == 199


def test_a_stored_base_is_reused_and_a_stale_one_is_caught_up(db, monkeypatch):
    import_vectors(db, speaker_vectors(500))
    first = SpeakerIndex(db)
    import_vectors(db, speaker_vectors(20, seed=5), prefix="late")
    monkeypatch.setattr(SpeakerIndex, "rebuild", lambda self: pytest.fail("rebuilt"))
    second = SpeakerIndex(db)  # the stored base, plus the 20 newer speakers
    queries = speaker_vectors(30, seed=6)
    assert second.generation == db.generation and len(second) == 520
    assert names_of(db, second.search(queries, 5)[0]) == brute_force(db, queries, 5)
    assert first.generation < db.generation  # caught up at its next search
    assert names_of(db, first.search(queries, 5)[0]) == brute_force(db, queries, 5)


@pytest.mark.parametrize(("backend", "exact_limit"), [("faiss", 0), ("faiss", 10**6), ("numpy", 0)])
def test_many_new_speakers_join_the_base_without_a_rebuild(db, monkeypatch, backend, exact_limit):
    import_vectors(db, speaker_vectors(300))
    index = SpeakerIndex(db, overlay_limit=10, backend=backend, exact_limit=exact_limit)
    kind = index.kind
    import_vectors(db, speaker_vectors(30, seed=3), prefix="new")
    monkeypatch.setattr(SpeakerIndex, "rebuild", lambda self: pytest.fail("rebuilt"))
    queries = speaker_vectors(20, seed=6)
    ids, _ = index.search(queries, 5)
    assert index.kind == kind and index._overlay == {} and index._base.count == 330
    assert names_of(db, ids) == brute_force(db, queries, 5)
    stored = SpeakerIndex(db, backend=backend)  # the grown base was stored
    assert stored.generation == db.generation and stored._base.count == 330


def test_many_replaced_speakers_rebuild_the_base(db):
    import_vectors(db, speaker_vectors(50))
    index = SpeakerIndex(db, overlay_limit=10)
    db.import_speakers(  # 8 speakers get a second recording: 8 base rows hidden > 10 // 2
        {f"s{i:06d}": [Utterance("extra", "-", 1.0, v)] for i, v in enumerate(speaker_vectors(8))},
        model_id="m",
    )
    index.refresh()
    assert index._overlay == {} and not index._masked and len(index) == 50


def test_hnsw_keeps_recall_against_exact_search(db):
    import_vectors(db, speaker_vectors(20_000))
    queries = speaker_vectors(200, seed=9)
    exact_ids, _ = SpeakerIndex(db, store=False).search(queries, 5)
    approximate = SpeakerIndex(db, exact_limit=1000, store=False)
    ids, _ = approximate.search(queries, 5)
    assert approximate.kind == "faiss-hnsw"
    recall = np.mean([len(set(a) & set(e)) / 5 for a, e in zip(ids, exact_ids, strict=True)])
    assert recall >= 0.99 and np.mean(ids[:, 0] == exact_ids[:, 0]) >= 0.99


def test_without_faiss_numpy_search_says_so_once(db, monkeypatch):
    monkeypatch.setattr(index_module, "faiss_module", lambda: None)
    monkeypatch.setattr(index_module, "NOTICE_LIMIT", 100)
    import_vectors(db, speaker_vectors(300))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        for _ in range(3):
            index = SpeakerIndex(db, store=False)
    assert index.kind == "numpy"
    assert [str(w.message) for w in caught if w.category is index_module.NoFaissWarning] == [
        "faiss is not installed: exact numpy search over 300 speakers; pip install "
        "'lapsv[index]' (faiss-cpu) for fast search"
    ]


@dataclasses.dataclass
class FakeSpeaker:
    """What identification needs of a model: its id and scoring state."""

    scoring: ScoringState
    model_id: str = "m"


def test_stored_cohort_statistics_give_the_scores_of_verify(db, monkeypatch):
    cohort_raw = speaker_vectors(400, seed=4)
    labels = [f"c{i // 4}" for i in range(400)]
    state = fit_scoring_state(cohort_raw, np.full(400, 3.0), labels, top_n=20, calibrate=True)
    model = FakeSpeaker(state)
    vectors = speaker_vectors(60)
    for i, vector in enumerate(vectors):
        utterance = Utterance(f"u{i}", "-", 2.0, vector)
        db.enroll(f"s{i:02d}", [utterance], model_id="m", stats=cohort_statistics_of(model))
    queries = speaker_vectors(3, seed=8)
    monkeypatch.setattr(  # every enrolled speaker's statistics are stored: none is computed
        identification, "cohort_statistics", lambda *a, **k: pytest.fail("computed again")
    )
    answers = identify_embeddings(db, model, queries, [2.0] * 3, list("abc"), top_k=60)
    for query, answer in zip(queries, answers, strict=True):
        assert len(answer.candidates) == 60 and answer.score_name == "LLR"
        for candidate in answer.candidates:
            enrolled = vectors[int(candidate.name[1:])]
            verified = verify_embeddings(state, enrolled, query, (2.0, 2.0))
            assert candidate.asnorm == pytest.approx(verified.asnorm, abs=1e-5)
            assert candidate.llr == pytest.approx(verified.llr, abs=1e-5)


def test_bulk_import_from_an_embeddings_file(db, tmp_path):
    vectors = speaker_vectors(6)
    embeddings = EmbeddingSet([f"u{i}" for i in range(6)], vectors, np.full(6, 2.5))
    spk2utt = {"ann": ("u0", "u1"), "bob": ("u2",)}
    assert import_embeddings(db, embeddings, "m", speakers=spk2utt) == (2, 0)
    assert import_embeddings(db, embeddings, "m", speakers={"bob": ("u3",), "cy": ("u4",)}) == (
        1,
        1,
    )
    assert [(s.name, s.utterances) for s in db.speakers()] == [("ann", 2), ("bob", 2), ("cy", 1)]
    ann = db.models(db.models().ids[:1])
    expected = vectors[0] / np.linalg.norm(vectors[0]) + vectors[1] / np.linalg.norm(vectors[1])
    np.testing.assert_allclose(ann.vectors[0], expected / np.linalg.norm(expected), atol=1e-6)
    generation = db.generation
    with pytest.raises(SpeakerDBError, match="not of model"):
        import_embeddings(db, embeddings, "another-model")
    assert db.generation == generation and len(db.speakers()) == 3  # nothing changed


def test_a_schema_1_database_is_upgraded_on_open(tmp_path):
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
        "CREATE TABLE speakers (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE,"
        " created TEXT NOT NULL, updated TEXT NOT NULL);"
        "CREATE TABLE utterances (speaker_id INTEGER NOT NULL, key TEXT NOT NULL, source TEXT"
        " NOT NULL, seconds REAL NOT NULL, embedding BLOB NOT NULL, added TEXT NOT NULL,"
        " PRIMARY KEY (speaker_id, key));"
        "INSERT INTO meta VALUES ('format', 'lapsv-speakers'), ('version', '1'),"
        " ('model_id', 'm'), ('model_name', ''), ('embed_dim', '16');"
        "INSERT INTO speakers VALUES (1, 'ann', 't', 't'), (2, 'bob', 't', 't');"
    )
    vectors = speaker_vectors(3)
    for speaker, key, vector in ((1, "a", vectors[0]), (1, "b", vectors[1]), (2, "c", vectors[2])):
        old.execute(
            "INSERT INTO utterances VALUES (?, ?, 'x', 1.5, ?, 't')",
            (speaker, key, vector.astype("<f4").tobytes()),
        )
    old.commit()
    old.close()
    with SpeakerDB(path) as db:
        assert db.meta()["version"] == "2"
        assert [(s.name, s.utterances, s.seconds) for s in db.speakers()] == [
            ("ann", 2, 3.0),
            ("bob", 1, 1.5),
        ]
        assert names_of(db, SpeakerIndex(db).search(vectors[2:], 1)[0]) == [["bob"]]


def _enroll_worker(path: str, worker: int, count: int, start) -> None:
    start.wait()
    vectors = speaker_vectors(count, seed=100 + worker)
    with SpeakerDB(path, timeout=120) as db:
        for i, vector in enumerate(vectors):
            utterances = [Utterance(f"{worker}-{i}-{j}", "-", 1.0, vector) for j in range(3)]
            db.enroll(f"w{worker}-{i:03d}", utterances, model_id="m")


def _identify_worker(path: str, start, stop, result) -> None:
    """Search while others enrol; every speaker found must be whole (3 utterances)."""
    start.wait()
    searches, partial = 0, 0
    with SpeakerDB(path, timeout=120) as db:
        # numpy: FAISS's OpenMP threads do not survive fork() (a separate `lapsv identify`
        # process has no such problem)
        index = SpeakerIndex(db, store=False, backend="numpy")
        queries = speaker_vectors(4, seed=7)
        while not stop.is_set() or searches == 0:
            ids, _ = index.search(queries, 5)
            found = db.models(np.unique(ids[ids >= 0]))
            partial += sum(count != 3 for count in _counts(db, found.names))
            searches += 1
    result.put((searches, partial))


def _counts(db: SpeakerDB, names: tuple[str, ...]) -> list[int]:
    counts = {s.name: s.utterances for s in db.speakers()}
    return [counts.get(name, 3) for name in names]


def test_two_enrolling_processes_and_an_identify_loop(tmp_path):
    path = str(tmp_path / "speakers.db")
    with SpeakerDB(path, create=True) as db:
        seed = [Utterance(f"k{j}", "-", 1.0, speaker_vectors(1)[0]) for j in range(3)]
        db.enroll("seed", seed, model_id="m")
    context = multiprocessing.get_context("fork")
    start, stop, result = context.Event(), context.Event(), context.Queue()
    writers = [context.Process(target=_enroll_worker, args=(path, w, 150, start)) for w in (0, 1)]
    reader = context.Process(target=_identify_worker, args=(path, start, stop, result))
    for process in [*writers, reader]:
        process.start()
    start.set()
    for writer in writers:
        writer.join(120)
    stop.set()
    searches, partial = result.get(timeout=120)
    reader.join(60)
    assert [w.exitcode for w in writers] == [0, 0] and reader.exitcode == 0
    assert searches > 0 and partial == 0
    with SpeakerDB(path) as db:
        assert len(db.speakers()) == 301 and all(s.utterances == 3 for s in db.speakers())
        assert len(SpeakerIndex(db, backend="numpy")) == 301


def test_speakers_import_on_the_command_line(tmp_path, capsys):
    data = Path(__file__).resolve().parent / "data"
    embeddings, db = tmp_path / "e.npz", tmp_path / "s.db"
    assert main(["embed", "ge2e", str(data), "--out", str(embeddings)]) == 0
    spk2utt = tmp_path / "spk2utt"
    ids = sorted(np.load(embeddings)["ids"])
    spk2utt.write_text(f"a {ids[0]} {ids[1]}\nb {ids[2]} {ids[3]}\n")
    capsys.readouterr()
    argv = ["speakers", "import", "--db", str(db), str(embeddings), "--spk2utt", str(spk2utt)]
    assert main([*argv, "--model", "ge2e"]) == 0
    assert "imported 2 speaker(s)" in capsys.readouterr().out
    assert main(["identify", "ge2e", "--db", str(db), str(data / "speaker_b_1.flac")]) == 0
    assert "best match b" in capsys.readouterr().out
    other = EmbeddingSet.load(embeddings)[0]
    other.save(tmp_path / "other.npz", model_id="another-model")
    assert main(["speakers", "import", "--db", str(db), str(tmp_path / "other.npz")]) == 2
    assert "not of model" in capsys.readouterr().err


def test_identify_stored_embeddings_on_the_command_line(tmp_path, capsys):
    """`lapsv identify MODEL --db DB E.npz`: the answers it gives for the audio itself."""
    data = Path(__file__).resolve().parent / "data"
    embeddings, db = tmp_path / "e.npz", tmp_path / "s.db"
    clips = [str(data / f"speaker_{s}_{i}.flac") for s in "ab" for i in (1, 2)]
    assert main(["embed", "ge2e", *clips, "--out", str(embeddings)]) == 0
    for name, clip in (("ann", clips[0]), ("bob", clips[2])):
        assert main(["enroll", "ge2e", "--db", str(db), name, clip]) == 0
    capsys.readouterr()
    identify = ["identify", "ge2e", "--db", str(db), "--top_k", "2"]
    assert main([*identify, *clips]) == 0
    from_audio = capsys.readouterr().out
    assert main([*identify, str(embeddings)]) == 0
    from_embeddings = capsys.readouterr().out
    assert from_embeddings == from_audio and from_audio.count("best match") == 4
    assert main([*identify, clips[0], str(embeddings)]) == 2
    assert "not both" in capsys.readouterr().err
    EmbeddingSet.load(embeddings)[0].save(tmp_path / "other.npz", model_id="another-model")
    assert main([*identify, str(tmp_path / "other.npz")]) == 2
    assert "not of the given model" in capsys.readouterr().err
    assert main([*identify, str(tmp_path / "missing.npz")]) == 2
    assert "missing.npz" in capsys.readouterr().err


CLI_LOOP = """
import subprocess, sys
lapsv, db, names, clips = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4:]
for name in names:
    subprocess.run([lapsv, "enroll", "ge2e", "--db", db, name, *clips], check=True,
                   capture_output=True)
"""


@pytest.mark.slow
def test_two_lapsv_enroll_loops_and_an_identify_loop(tmp_path):
    """Acceptance 3 with the commands themselves: two `lapsv enroll` loops (2 recordings
    per speaker, one transaction each) while `lapsv identify` and `lapsv speakers list`
    run in a loop; every listing shows whole speakers, and none is lost."""
    lapsv = str(Path(sys.executable).with_name("lapsv"))
    data = Path(__file__).resolve().parent / "data"
    db = str(tmp_path / "speakers.db")
    clips = [str(data / "speaker_a_1.flac"), str(data / "speaker_b_1.flac")]
    assert subprocess.run([lapsv, "enroll", "ge2e", "--db", db, "seed", *clips]).returncode == 0
    loops = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                CLI_LOOP,
                lapsv,
                db,
                ",".join(f"w{w}-{i}" for i in range(4)),
                *clips,
            ]
        )
        for w in (0, 1)
    ]
    listings = 0
    while any(loop.poll() is None for loop in loops) or listings == 0:
        found = subprocess.run(
            [lapsv, "identify", "ge2e", "--db", db, str(data / "speaker_a_2.flac")],
            capture_output=True,
            text=True,
        )
        assert found.returncode == 0 and "Traceback" not in found.stderr
        listed = subprocess.run(
            [lapsv, "speakers", "list", "--db", db], capture_output=True, text=True
        ).stdout
        rows = [line.split() for line in listed.splitlines()[2:]]
        assert rows and all(row[1] == "2" for row in rows), listed  # never a half speaker
        listings += 1
    assert [loop.wait() for loop in loops] == [0, 0]
    with SpeakerDB(db) as final:
        assert len(final.speakers()) == 9 and all(s.utterances == 2 for s in final.speakers())
