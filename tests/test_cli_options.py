"""Every option is checked before any work (lapsv.cli.options): one line and the verb's own
usage, never a traceback; and a fuzz test over every verb's options and paths."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lapsv.cli import main

DATA = Path(__file__).resolve().parent / "data"
A, B = str(DATA / "speaker_a_1.flac"), str(DATA / "speaker_a_2.flac")
RAW_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # \t \n \r (tqdm) ok


def run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code (argparse's SystemExit included) and everything printed."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.fixture
def places(tmp_path) -> dict[str, str]:
    blocker = tmp_path / "text.wav"
    blocker.write_text("not audio")
    return {"file": str(blocker), "folder": str(tmp_path), "tmp": str(tmp_path)}


FOUND = [  # the commands of issue 15's "Found", each: argv, exit code, words of the message
    (
        ["export", "ge2e", "--format", "onnx", "--out", "{file}/a.onnx"],
        2,
        "is a file, not a folder",
    ),
    (["export", "ge2e", "--format", "onnx", "--out", "/proc/a.onnx"], 2, "/proc is not writable"),
    (["enroll", "ge2e", "--db", "{file}/x.db", "bob", A], 2, "is a file, not a folder"),
    (["embed", "ge2e", A, "--batch_size", "0", "--out", "{tmp}/e.npz"], 2, "at least 1, got 0"),
    (["embed", "ge2e", A, "--batch_size", "-2", "--out", "{tmp}/e.npz"], 2, "at least 1, got -2"),
    (["embed", "ge2e", A, "--device", "foo", "--out", "{tmp}/e.npz"], 2, "unknown device 'foo'"),
    (["verify", "ge2e", "{folder}", B], 2, "is a folder, not a file"),
    (["identify", "ge2e", "--db", "{folder}", A], 2, "is a folder, not a speaker database"),
    (["inspect", "ge2e", A, "--plot", "{file}/p.png"], 2, "is a file, not a folder"),
    (["inspect", "ge2e", A, "--plot", "{tmp}/p.txt"], 2, "must end with .png"),
    (["verify", "ge2e", A, B, "--threshhold", "0.5"], 2, "usage: lapsv verify"),
    (["verify", "ge2e", A, B, "--threshold", "nan"], 2, "finite number"),
    (["identify", "ge2e", "--db", "{file}", A, "--top_k", "0"], 2, "at least 1"),
    (["embed", "ge2e", "{file}", "--out", "{tmp}/e.npz"], 1, "nothing written"),
]


@pytest.mark.parametrize(("argv", "code", "words"), FOUND, ids=[" ".join(f[0][:3]) for f in FOUND])
def test_each_found_command_gives_one_clear_line(argv, code, words, places, capsys):
    argv = [a.format(**places) for a in argv]
    got, printed = run(argv, capsys)
    assert got == code, printed
    assert words in printed and "Traceback" not in printed
    assert not (Path(places["tmp"]) / "e.npz").exists()  # no empty output


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="this machine has CUDA: nothing to refuse"
)
@pytest.mark.parametrize("verb", ["embed", "verify"])
def test_cuda_on_a_cpu_torch_names_the_fix(verb, tmp_path, capsys):
    argv = ["embed", "ge2e", A, "--out", str(tmp_path / "e.npz")] if verb == "embed" else []
    argv = argv or ["verify", "ge2e", A, B]
    code, printed = run([*argv, "--device", "cuda"], capsys)
    assert code == 2 and "no usable CUDA GPU" in printed and "--device cpu" in printed


def test_embed_rows_follow_the_inputs_and_new_folders_are_said(tmp_path, capsys):
    out = tmp_path / "new" / "e.npz"
    code, printed = run(["embed", "ge2e", B, A, "--out", str(out)], capsys)
    assert code == 0 and f"created folder {out.parent}" in printed
    assert printed.index("speaker_a_2") < printed.index("speaker_a_1")
    assert (out.stat().st_mode & 0o777) == 0o644 or os.geteuid() != 0


# --- fuzzing: random values and paths for every verb ------------------------------------
# Each flag draws from values that work (listed first, repeated: about half the commands do
# real work) and hostile ones (wrong type, out of range, unusable paths, speaker names that
# break the rule). The database also holds names an older version let through: whatever
# a command prints, no control character reaches the terminal raw.

HOSTILE_NUMBERS = ["0", "-1", "1e309", "nan", "-inf", "abc", "", "99999999999"]
HOSTILE_CHOICES = ["cuda", "cuda:7", "mps", "foo", "x"]
HOSTILE_PATHS = ["{file}", "{file}/x", "{folder}", "{tmp}/p.txt", "/proc/x", "missing.wav"]
HOSTILE_NAMES = ["", " bob", "b" * 65, "b\x1b[31mob", "b\nob", "\x9b2J", "-b", "b\u202eob"]
HOSTILE = {"number": HOSTILE_NUMBERS, "choice": HOSTILE_CHOICES, "path": HOSTILE_PATHS,
           "name": HOSTILE_NAMES}  # fmt: skip
LEGACY_NAMES = ["mal\x1b]0;owned\x07lory", "e" * 70 + "\x1b[2J"]  # stored by an older lapsv
WORK_FILES = {"trials": "{tmp}/trials.txt", "db": "{tmp}/speakers.db"}
VERBS = {  # verb: (fixed arguments, positional values, {flag: (kind, working values)})
    "embed": (["ge2e"], [[A, B, "{tmp}/clips"]], {
        "--out": ("path", ["{tmp}/out.npz", "{tmp}/new/out.npz"]),
        "--batch_size": ("number", ["1", "2", "16"]), "--max_seconds": ("number", ["0.5", "60"]),
        "--show": ("number", ["0", "2"]), "--device": ("choice", ["cpu"])}),
    "verify": (["ge2e"], [[A, B], [B, A]], {
        "--threshold": ("number", ["0.5", "-1", "0"]), "--max_seconds": ("number", ["1", "60"]),
        "--device": ("choice", ["cpu"])}),
    "identify": (["ge2e"], [[A, B, "{tmp}/clips", "{tmp}/e.npz"]], {
        "--db": ("path", [WORK_FILES["db"]] * 3), "--top_k": ("number", ["1", "3"]),
        "--threshold": ("number", ["0.5"]), "--batch_size": ("number", ["1", "16"])}),
    "enroll": (["ge2e"], [("name", ["bob", "carol", "Zoë O'Neil", A]), [A, B, "{tmp}/clips"]], {
        "--db": ("path", ["{tmp}/speakers.db", "{tmp}/new.db"]),
        "--batch_size": ("number", ["2"]), "--max_seconds": ("number", ["1", "60"])}),
    "eval": (["ge2e"], [], {
        "--trials": ("path", [WORK_FILES["trials"]] * 3), "--audio_root": ("path", [str(DATA)] * 3),
        "--out": ("path", ["{tmp}/results"]), "--top_n": ("number", ["2", "600"]),
        "--norm": ("choice", ["none"])}),
    "score": ([], [], {
        "--embeddings": ("path", ["{tmp}/e.npz"] * 2), "--trials": ("path", ["{tmp}/e_trials.txt"]),
        "--out": ("path", ["{tmp}/scores.txt"])}),
    "export": (["ge2e"], [], {
        "--out": ("path", ["{tmp}/m.onnx", "{tmp}/m.pt"]), "--format": ("choice", ["onnx"])}),
    "inspect": (["ge2e"], [[A, B]], {"--plot": ("path", ["{tmp}/p.png"])}),
    "info": ([], [["ge2e", "{tmp}/e.npz"]], {}),
    "speakers": ([], [["list", "delete"]], {"--db": ("path", [WORK_FILES["db"]] * 3)}),
    "diarize": (["ge2e"], [[A, B, "{tmp}/clips"]], {
        "--out": ("path", ["{tmp}/dz", "{tmp}/new/dz"]), "--num_speakers": ("number", ["1", "2"]),
        "--min_speakers": ("number", ["1", "2"]), "--max_speakers": ("number", ["2", "5"]),
        "--window": ("number", ["1.5", "3"]), "--vad_threshold": ("number", ["0.5", "0.3"])}),
    "data": (["validate"], [["{tmp}/clips"]], {
        "--crop_seconds": ("number", ["1"]), "--min_utterances": ("number", ["1", "2"]),
        "--sample_rate": ("number", ["16000"])}),
}  # fmt: skip


REQUIRED = {"identify": ["--db"], "enroll": ["--db"], "eval": ["--trials", "--audio_root"],
            "speakers": ["--db"], "score": ["--embeddings", "--trials"],
            "diarize": ["--out"]}  # fmt: skip


@st.composite
def command(draw):
    """A verb with working values in every slot except zero to two hostile ones; a speaker
    name is drawn from working and hostile names alike (the rule is what names test)."""
    verb = draw(st.sampled_from(sorted(VERBS)))
    fixed, positionals, flags = VERBS[verb]
    optional = sorted(set(flags) - set(REQUIRED.get(verb, [])))
    chosen = REQUIRED.get(verb, []) + (
        draw(st.lists(st.sampled_from(optional), unique=True, max_size=3)) if optional else []
    )
    slots = [(None, *p) if isinstance(p, tuple) else (None, "path", p) for p in positionals]
    slots += [(flag, *flags[flag]) for flag in chosen]
    hostile = draw(st.sets(st.integers(0, len(slots) - 1), max_size=2)) if slots else set()
    argv = [verb, *fixed]
    for index, (flag, kind, working) in enumerate(slots):
        pool = HOSTILE[kind] if index in hostile else working
        value = draw(st.sampled_from(working + HOSTILE_NAMES if kind == "name" else pool))
        argv += [value] if flag is None else [flag, value]
        if verb == "speakers" and value == "delete":
            argv.append(draw(st.sampled_from(["alice", "nobody", *LEGACY_NAMES, *HOSTILE_NAMES])))
    return argv


@pytest.fixture(scope="module")
def fuzz_inputs(tmp_path_factory) -> Path:
    """Inputs that work, copied into every example's work folder: clips, a trial list, an
    embeddings file with its trials, and a speaker database with alice enrolled and two
    speakers named as an older version allowed (control characters, over 64 characters)."""
    inputs = tmp_path_factory.mktemp("fuzz_inputs")
    clips = inputs / "clips"
    clips.mkdir()
    for clip in DATA.glob("*.flac"):
        shutil.copy(clip, clips / clip.name)
    (inputs / "trials.txt").write_text(
        "1 speaker_a_1.flac speaker_a_2.flac\n0 speaker_a_1.flac speaker_b_1.flac\n"
    )
    db = str(inputs / "speakers.db")
    assert main(["enroll", "ge2e", "--db", db, "alice", A]) == 0
    renamed = zip(["mallory", "eve"], [B, A], LEGACY_NAMES, strict=True)
    for name, clip, legacy in renamed:
        assert main(["enroll", "ge2e", "--db", db, name, clip]) == 0
        with contextlib.closing(sqlite3.connect(db)) as connection, connection:
            connection.execute("UPDATE speakers SET name = ? WHERE name = ?", (legacy, name))
    assert main(["embed", "ge2e", A, B, "--out", str(inputs / "e.npz")]) == 0
    (inputs / "e_trials.txt").write_text(f"1 {A} {B}\n")
    return inputs


def _fuzz(argv: list[str], tmp_path: Path, inputs: Path, capsys) -> int:
    work = tmp_path / "work"
    os.chdir(tmp_path)
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(inputs, work)
    os.chdir(work)  # defaults such as embeddings.npz land in the work folder
    blocker = work / "text.wav"
    blocker.write_text("not audio")
    argv = [a.format(tmp=work, file=blocker, folder=work) for a in argv]
    before = sorted(os.listdir(tmp_path))
    code, printed = run(argv, capsys)
    assert "Traceback" not in printed, (argv, printed)
    assert not RAW_CONTROLS.search(printed), (argv, printed)  # names are printed escaped
    assert code in (0, 1, 2), (argv, code, printed)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written beside the work folder
    return code


def _fuzz_many(examples: int, tmp_path: Path, inputs: Path, capsys) -> None:
    codes = []

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize="LAPSV_FUZZ_EXAMPLES" not in os.environ,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(command())
    def check(argv):
        codes.append(_fuzz(argv, tmp_path, inputs, capsys))

    check()
    did_work = sum(code in (0, 1) for code in codes) / len(codes)
    assert did_work >= 0.25, f"only {did_work:.0%} of the commands got past the option checks"


def test_fuzz_every_verb(tmp_path, capsys, monkeypatch, fuzz_inputs):
    """A fixed budget of random commands (LAPSV_FUZZ_EXAMPLES for more, as the audio fuzz)."""
    monkeypatch.chdir(tmp_path)
    examples = int(os.environ.get("LAPSV_FUZZ_EXAMPLES", "100"))
    _fuzz_many(examples, tmp_path, fuzz_inputs, capsys)


@pytest.mark.slow
def test_fuzz_every_verb_longer(tmp_path, capsys, monkeypatch, fuzz_inputs):
    monkeypatch.chdir(tmp_path)
    _fuzz_many(1000, tmp_path, fuzz_inputs, capsys)


def test_a_file_given_twice_is_embedded_twice(tmp_path, capsys):
    out = tmp_path / "e.npz"
    code, printed = run(["embed", "ge2e", A, B, A, "--out", str(out)], capsys)
    assert code == 0 and "embedded 3 of 3 files" in printed
    assert [Path(i).name for i in np.load(out)["ids"]] == ["speaker_a_1.flac"] * 2 + [
        "speaker_a_2.flac"
    ]


def test_eval_reads_its_inputs_before_making_the_results_folder(tmp_path, capsys):
    out = tmp_path / "new" / "results"
    argv = ["eval", "ge2e", "--trials", str(tmp_path / "no.txt"), "--audio_root", str(DATA)]
    code, printed = run([*argv, "--out", str(out)], capsys)
    assert code == 2 and "no.txt: no such file" in printed
    assert not (tmp_path / "new").exists()
