"""One rule for speaker names at every entry point (library, CLI, bulk import, service),
and names stored by older versions printed with their control characters escaped."""

from __future__ import annotations

import contextlib
import re
import sqlite3
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lapsv.cli import main
from lapsv.cli.conversation_verbs import _summary
from lapsv.diarization import Diarization
from lapsv.diarization.segments import Segment
from lapsv.identification import enroll_files
from lapsv.serve.service import ServiceError
from lapsv.serve.service import check_speaker_name as service_check
from lapsv.speakers import (
    NAME_RULE,
    SpeakerDB,
    SpeakerDBError,
    SpeakerNameError,
    Utterance,
    check_speaker_name,
    printable_name,
)

DATA = Path(__file__).resolve().parent / "data"
A, B = str(DATA / "speaker_a_1.flac"), str(DATA / "speaker_b_1.flac")
NFD = unicodedata.normalize("NFD", "José Núñez")
GOOD = ["Ana María", "李小龙", "O'Brien-Smith Jr.", "a" * 64, NFD, "अमित शर्मा", "Zoë_2"]
BAD = ["", " a", "a ", "a" * 65, "a\x1b[31mb", "a\nb", "x'; DROP TABLE speakers; --", "-a"]
BAD += ["a/b", "ä\u200b", "\u0301a", "bob\x9b2J", "a\u202eb"]
LEGACY = ["evil\x1b]0;pwned\x07\x1b[2J", "b" * 70 + "\n\x9b"]  # as an older version stored
RAW_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # printed raw: never (\t \n ok)


def utt(key: str, seed: int) -> Utterance:
    vector = np.random.default_rng(seed).normal(size=8).astype(np.float32)
    return Utterance(key, f"/audio/{key}.wav", 2.0, vector)


def rows(path: Path) -> list[tuple]:
    """Every speaker row and the generation: what a refused write must leave alone."""
    with contextlib.closing(sqlite3.connect(path)) as connection:
        speakers = connection.execute("SELECT * FROM speakers ORDER BY id").fetchall()
        generation = connection.execute("SELECT value FROM meta WHERE key = 'generation'")
        return [*speakers, generation.fetchone()]


# --- the rule -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD)
def test_the_rule_accepts_names_of_any_script_in_nfc(name):
    checked = check_speaker_name(name)
    assert checked == unicodedata.normalize("NFC", name)
    assert unicodedata.is_normalized("NFC", checked)
    assert check_speaker_name(checked) == checked  # idempotent


def test_nfd_input_is_stored_and_found_in_nfc(tmp_path):
    with SpeakerDB(tmp_path / "s.db", create=True) as db:
        assert db.enroll(NFD, [utt("k", 1)], model_id="m").name == "José Núñez" != NFD
        assert [s.name for s in db.speakers()] == ["José Núñez"]
        assert db.speaker_id(NFD) == db.speaker_id("José Núñez") is not None
        assert len(db.utterances(NFD)) == 1
        assert db.enroll("José Núñez", [utt("k2", 2)], model_id="m").new_speaker is False
        assert db.delete(NFD) == 2 and db.count() == 0


@pytest.mark.parametrize("name", BAD)
def test_the_rule_refuses_with_the_name_and_the_rule(name):
    with pytest.raises(SpeakerNameError) as refused:
        check_speaker_name(name)
    message = str(refused.value)
    assert message.startswith("bad speaker name ") and message.endswith(NAME_RULE)
    assert message.isprintable()  # the name is quoted with its controls escaped
    assert isinstance(refused.value, SpeakerDBError)  # the CLI's exit 2, the layer's error


def test_a_long_refused_name_is_shortened_in_its_message():
    with pytest.raises(SpeakerNameError) as refused:
        check_speaker_name("x" * 1000)
    message = str(refused.value)
    assert "'" + "x" * 40 + "...'" in message and len(message) < 200


def _unescape(shown: str) -> str:
    escapes = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    return re.sub(
        r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8}|[ntr\\])",
        lambda m: escapes.get(m[1]) or chr(int(m[1][1:], 16)),
        shown,
    )


@given(st.text())
def test_printable_name_escapes_every_control_and_can_be_read_back(name):
    shown = printable_name(name)
    assert shown.isprintable() and not RAW_CONTROLS.search(shown)
    assert _unescape(shown) == name  # unambiguous: two names never print alike
    if name.isprintable() and "\\" not in name:
        assert shown == name  # letters of any script as they are


def test_printable_name_examples():
    assert printable_name("evil\x1b[31m\x9b") == "evil\\x1b[31m\\x9b"
    assert printable_name("Ана\u202eX") == "Ана\\u202eX"
    assert printable_name("李小龙") == "李小龙"


# --- the library ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a\x1b[31mb", "a" * 65, " alice", ""])
def test_the_database_refuses_bad_names_and_writes_nothing(tmp_path, name):
    path = tmp_path / "s.db"
    with SpeakerDB(path, create=True) as db:
        db.enroll("alice", [utt("a", 1)], model_id="m")
        before = rows(path)
        with pytest.raises(SpeakerNameError, match="bad speaker name"):
            db.enroll(name, [utt("b", 2)], model_id="m")
        with pytest.raises(SpeakerNameError, match="bad speaker name"):
            db.import_speakers({"carol": [utt("c", 3)], name: [utt("d", 4)]}, model_id="m")
    assert rows(path) == before


def test_an_import_naming_one_speaker_in_two_unicode_forms_is_refused(tmp_path):
    with SpeakerDB(tmp_path / "s.db", create=True) as db:
        groups = {NFD: [utt("a", 1)], "José Núñez": [utt("b", 2)]}
        with pytest.raises(SpeakerDBError, match="named twice"):
            db.import_speakers(groups, model_id="m")
        assert db.count() == 0


def test_enroll_files_refuses_a_bad_name_before_touching_the_model(tmp_path):
    with SpeakerDB(tmp_path / "s.db", create=True) as db:
        with pytest.raises(SpeakerNameError):
            enroll_files(db, object(), "a\nb", [A])  # the model would fail if used
        assert db.count() == 0


@pytest.mark.parametrize("name", BAD)
def test_the_service_answers_422_with_the_same_message(name):
    with pytest.raises(ServiceError) as refused:
        service_check(name)
    with pytest.raises(SpeakerNameError) as library:
        check_speaker_name(name)
    assert refused.value.status == 422 and refused.value.message == str(library.value)


# --- the command line ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory) -> Path:
    """A database with alice and bob (ge2e), and an embeddings file of A and B."""
    folder = tmp_path_factory.mktemp("names")
    db = folder / "speakers.db"
    assert main(["enroll", "ge2e", "--db", str(db), "alice", A]) == 0
    assert main(["enroll", "ge2e", "--db", str(db), "bob", B]) == 0
    assert main(["embed", "ge2e", A, B, "--out", str(folder / "e.npz")]) == 0
    return folder


def _copy(enrolled: Path, tmp_path: Path) -> Path:
    for name in ("speakers.db", "e.npz"):
        (tmp_path / name).write_bytes((enrolled / name).read_bytes())
    return tmp_path / "speakers.db"


@pytest.mark.parametrize("name", ["a\x1b[31mb", "a" * 65, "x'; DROP TABLE speakers; --"])
def test_cli_enroll_refuses_a_bad_name_with_exit_2_and_writes_nothing(
    name, enrolled, tmp_path, capsys
):
    db = _copy(enrolled, tmp_path)
    before = rows(db)
    assert main(["enroll", "ge2e", "--db", str(db), name, A]) == 2
    new = tmp_path / "new" / "x.db"
    assert main(["enroll", "ge2e", "--db", str(new), name, A]) == 2
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert lines == [lines[0]] * 2 and lines[0].startswith("error: bad speaker name ")
    assert lines[0].endswith(NAME_RULE) and "Traceback" not in captured.err
    assert not RAW_CONTROLS.search(captured.err) and captured.out == ""
    assert rows(db) == before and not new.parent.exists()


def test_speakers_import_refuses_the_whole_map_at_a_bad_name(enrolled, tmp_path, capsys):
    db = _copy(enrolled, tmp_path)
    before = rows(db)
    spk2utt = tmp_path / "spk2utt"
    spk2utt.write_text(f"carol {A}\ndave\x1b[2J {B}\n")
    new = tmp_path / "new.db"
    for target in (db, new):
        argv = ["speakers", "import", "--db", str(target), str(tmp_path / "e.npz")]
        assert main([*argv, "--spk2utt", str(spk2utt)]) == 2
        err = capsys.readouterr().err
        assert err == f"error: {spk2utt}:2: bad speaker name 'dave\\x1b[2J': {NAME_RULE}\n"
    assert rows(db) == before and not new.exists()  # carol was not imported either


def test_speakers_import_without_a_map_names_the_fix_for_path_ids(enrolled, tmp_path, capsys):
    db = _copy(enrolled, tmp_path)
    before = rows(db)
    assert main(["speakers", "import", "--db", str(db), str(tmp_path / "e.npz")]) == 2
    err = capsys.readouterr().err
    assert "e.npz: bad speaker name " in err and "name the speakers with --spk2utt" in err
    assert rows(db) == before


def test_names_of_an_older_version_are_printed_escaped(enrolled, tmp_path, capsys):
    db = _copy(enrolled, tmp_path)
    with contextlib.closing(sqlite3.connect(db)) as connection, connection:  # an older lapsv
        for old, new in zip(["alice", "bob"], LEGACY, strict=True):
            connection.execute("UPDATE speakers SET name = ? WHERE name = ?", (new, old))
    assert main(["speakers", "--db", str(db), "list", "--utterances"]) == 0
    listing = capsys.readouterr().out
    assert main(["identify", "ge2e", "--db", str(db), A, B, "--top_k", "2"]) == 0
    identified = capsys.readouterr().out
    assert main(["identify", "ge2e", "--db", str(db), A, "--threshold", "-1"]) == 0
    answered = capsys.readouterr().out
    for out in (listing, identified, answered):
        assert not RAW_CONTROLS.search(out), out
        assert "\n\x9b" not in out
    for name in LEGACY:
        assert printable_name(name) in listing and printable_name(name) in identified
    assert listing.count(A) == 1 and listing.count(B) == 1  # their recordings are found
    assert f"{A} -> {printable_name(LEGACY[0])} (" in answered
    assert main(["speakers", "delete", "--db", str(db), LEGACY[0]]) == 0  # still removable
    assert capsys.readouterr().out.startswith(f"deleted {printable_name(LEGACY[0])} (1 ")
    with SpeakerDB(db) as database:
        assert [s.name for s in database.speakers()] == [LEGACY[1]]


def test_cli_delete_finds_a_name_typed_in_another_unicode_form(enrolled, tmp_path, capsys):
    db = _copy(enrolled, tmp_path)
    assert main(["enroll", "ge2e", "--db", str(db), "José Núñez", A]) == 0
    assert main(["speakers", "delete", "--db", str(db), NFD]) == 0
    assert "(1 recording(s))" in capsys.readouterr().out
    with SpeakerDB(db) as database:
        assert [s.name for s in database.speakers()] == ["alice", "bob"]


def test_diarize_prints_enrolled_names_escaped():
    segments = (Segment(0.0, 1.0, LEGACY[0]), Segment(1.0, 2.0, "SPEAKER_01"))
    result = Diarization("talk", 2.0, 2.0, segments, names={"SPEAKER_00": LEGACY[0]})
    summary = _summary(result)
    assert printable_name(LEGACY[0]) in summary and not RAW_CONTROLS.search(summary)
