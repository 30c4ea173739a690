"""Output safety: an output folder that cannot be written fails before any work starts, and
results, embeddings and score files are written atomically (a failure mid-write leaves the
previous file intact, never a truncated one)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lapsv.cli import main
from lapsv.errors import LapsvError
from lapsv.files import OutputError, check_writable_folder


def forbid(monkeypatch, module: str, name: str) -> None:
    """Make ``module.name`` fail the test if called: the work that must not start."""

    def work(*args, **kwargs):
        raise AssertionError(f"{module}.{name} ran although the output is not writable")

    monkeypatch.setattr(f"{module}.{name}", work)


@pytest.fixture
def unwritable(tmp_path) -> Path:
    """A folder that cannot be created by anyone, root included: its parent is a file."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    return blocker / "out"


@pytest.mark.parametrize(
    ("argv", "work"),
    [
        (
            ["embed", "ge2e", "x.wav", "--out", "{out}/e.npz"],
            ("lapsv.cli.model_verbs", "load_model"),
        ),
        (
            ["eval", "ge2e", "--trials", "{trials}", "--audio-root", ".", "--out", "{out}"],
            ("lapsv.cli.model_verbs", "evaluate"),
        ),
        (
            ["score", "--scores", "{trials}", "--out", "{out}/scores.txt"],
            ("lapsv.cli.model_verbs", "read_scores"),
        ),
        (["demo", "--out", "{out}"], ("lapsv.cli.project_verbs", "run_demo")),
        (["train", "{recipe}", "--out", "{out}"], ("lapsv.training.loop", "validate_manifest")),
    ],
    ids=["embed", "eval", "score", "demo", "train"],
)
def test_unwritable_output_fails_before_any_work(
    tmp_path, unwritable, monkeypatch, capsys, argv, work
):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"data: {{train_manifest: {tmp_path / 'train.tsv'}}}\n")
    trials = tmp_path / "trials.txt"  # inputs exist: the output is what is wrong
    trials.write_text("1 a.wav b.wav 0.5\n")
    forbid(monkeypatch, *work)
    args = [a.format(out=unwritable, recipe=recipe, trials=trials) for a in argv]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "not writable" in error and str(unwritable) in error


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_writable_folder(folder)
    finally:
        folder.chmod(0o700)


def test_output_error_is_a_lapsv_error():
    assert issubclass(OutputError, LapsvError)


def test_embeddings_file_survives_a_failed_rewrite(tmp_path, monkeypatch):
    from lapsv.embeddings import EmbeddingSet

    path = tmp_path / "emb.npz"
    first = EmbeddingSet(["a"], np.ones((1, 4), np.float32), np.ones(1, np.float32))
    first.save(path)
    before = path.read_bytes()

    def failing_savez(handle, **arrays):
        handle.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(OSError, match="disk full"):
        first.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["emb.npz"]  # no temporary left behind


def test_score_and_results_files_survive_a_failed_rewrite(tmp_path, monkeypatch):
    from lapsv.scoring.trials import Trials, write_scores

    trials = Trials(("a", "b"), ("c", "d"), np.array([1, 0]))
    path = tmp_path / "scores.txt"
    write_scores(path, trials, np.array([0.5, -0.5]))
    before = path.read_text()
    original = Path.write_text

    def failing_write_text(self, text, *args, **kwargs):
        original(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(Path, "write_text", failing_write_text)
    with pytest.raises(OSError, match="disk full"):
        write_scores(path, trials, np.array([0.25, -0.25]))
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["scores.txt"]
