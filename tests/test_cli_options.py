"""Every option is checked before any work (lapsv.cli.options): one line and the verb's own
usage, never a traceback; and a fuzz test over every verb's options and paths."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lapsv.cli import main

DATA = Path(__file__).resolve().parent / "data"
A, B = str(DATA / "speaker_a_1.flac"), str(DATA / "speaker_a_2.flac")


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

NUMBERS = st.sampled_from(
    ["1", "2", "3", "16", "60", "0.5", "0", "-1", "1e309", "nan", "-inf", "abc", "", "99999999999"]
)
CHOICES = st.sampled_from(["cpu", "cuda", "cuda:7", "mps", "foo", "none", "asnorm", "onnx", "x"])
PATHS = st.sampled_from(
    [A, B, A, B, "{tmp}/out.npz", "{tmp}/out.png", "{tmp}/out.onnx", "{tmp}/new/out.npz",
     "{tmp}/out", "{file}", "{file}/x", "{folder}", "{tmp}/p.txt", "/proc/x", "missing.wav"]
)  # fmt: skip
PATH_FLAGS = {"--out", "--db", "--plot", "--trials", "--audio_root", "--cohort", "--scores",
              "--embeddings"}  # fmt: skip
CHOICE_FLAGS = {"--device", "--norm", "--format"}
VERBS = {
    "embed": (["ge2e", A], ["--out", "--batch_size", "--max_seconds", "--show", "--device"]),
    "verify": (["ge2e"], ["--threshold", "--max_seconds", "--device"]),
    "identify": (["ge2e", A], ["--db", "--top_k", "--threshold", "--batch_size"]),
    "enroll": (["ge2e"], ["--db", "--batch_size", "--max_seconds"]),
    "eval": (["ge2e"], ["--trials", "--audio_root", "--out", "--top_n", "--norm", "--cohort"]),
    "score": ([], ["--scores", "--embeddings", "--trials", "--out"]),
    "export": (["ge2e"], ["--out", "--format"]),
    "inspect": (["ge2e", A], ["--plot"]),
    "info": ([], []),
    "speakers": ([], ["--db"]),
    "data": (["validate"], ["--crop_seconds", "--min_utterances", "--sample_rate"]),
}


def _value(flag: str):
    if flag in PATH_FLAGS:
        return PATHS
    return CHOICES if flag in CHOICE_FLAGS else NUMBERS


@st.composite
def command(draw):
    verb = draw(st.sampled_from(sorted(VERBS)))
    fixed, flags = VERBS[verb]
    argv = [verb, *fixed]
    if verb in ("verify", "info", "data"):
        argv += [draw(PATHS) for _ in range({"verify": 2, "info": 1, "data": 1}[verb])]
    if verb == "enroll":
        argv += [draw(st.sampled_from(["bob", "", A])), draw(PATHS)]
    if verb == "speakers":
        argv += [draw(st.sampled_from(["list", "delete"]))] + ["bob"] * draw(st.integers(0, 1))
    for flag in draw(st.lists(st.sampled_from(flags), unique=True, max_size=3)) if flags else []:
        argv += [flag, draw(_value(flag))]
    return argv


def _fuzz(argv: list[str], tmp_path: Path, capsys) -> None:
    work = tmp_path / "work"
    os.chdir(tmp_path)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    os.chdir(work)  # defaults such as embeddings.npz land in the work folder
    blocker = work / "text.wav"
    blocker.write_text("not audio")
    argv = [a.format(tmp=work, file=blocker, folder=work) for a in argv]
    before = sorted(os.listdir(tmp_path))
    code, printed = run(argv, capsys)
    assert "Traceback" not in printed, (argv, printed)
    assert code in (0, 1, 2), (argv, code, printed)
    assert sorted(os.listdir(tmp_path)) == before  # nothing written beside the work folder


def _fuzz_many(examples: int, tmp_path: Path, capsys) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize="LAPSV_FUZZ_EXAMPLES" not in os.environ,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(command())
    def check(argv):
        _fuzz(argv, tmp_path, capsys)

    check()


def test_fuzz_every_verb(tmp_path, capsys, monkeypatch):
    """A fixed budget of random commands (LAPSV_FUZZ_EXAMPLES for more, as the audio fuzz)."""
    monkeypatch.chdir(tmp_path)
    _fuzz_many(int(os.environ.get("LAPSV_FUZZ_EXAMPLES", "40")), tmp_path, capsys)


@pytest.mark.slow
def test_fuzz_every_verb_longer(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _fuzz_many(1000, tmp_path, capsys)


def test_a_file_given_twice_is_embedded_twice(tmp_path, capsys):
    out = tmp_path / "e.npz"
    code, printed = run(["embed", "ge2e", A, B, A, "--out", str(out)], capsys)
    assert code == 0 and "embedded 3 of 3 files" in printed
    assert [Path(i).name for i in np.load(out)["ids"]] == ["speaker_a_1.flac"] * 2 + [
        "speaker_a_2.flac"
    ]
