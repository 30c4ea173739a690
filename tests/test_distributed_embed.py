"""Distributed extraction: ``accelerate launch`` with 2 CPU processes (gloo) runs
``lapsv embed`` / ``lapsv eval`` and gives what one process gives; a job whose process 1
is killed (``LAPSV_FAILPOINT=after-chunk-rank1:1``) finishes on a rerun without redoing
the chunk parts already written; one plain process resumes the same way and never uses
another model's parts. ``--batch_size 1`` makes chunks of 16 utterances, so that both
processes get several."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from conftest import DATA
from lapsv.cli import main
from lapsv.distributed import extract_sharded, parts_folder
from lapsv.inference import expand_audio_inputs
from lapsv.speaker import load_model
from synthetic import make_corpus, voice
from test_distributed import free_port

CLIPS, CHUNK = 70, 16  # 5 chunk parts with --batch_size 1: 2 or 3 for each process
MARKER = 0.25  # written into a finished part: a rerun that reuses it keeps it


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """The 4 real clips, generated voices of 0.5-1.5 s, and two files that cannot be read."""
    folder = tmp_path_factory.mktemp("audio") / "audio"
    folder.mkdir()
    real = sorted(DATA.glob("*.flac"))
    for path in real:
        shutil.copy(path, folder / path.name)
    rng = np.random.default_rng(0)
    for index in range(CLIPS - len(real)):
        wave = voice(rng.uniform(90, 260), rng.uniform(500, 2500), rng.uniform(0.5, 1.5), rng)
        soundfile.write(folder / f"voice_{index:03d}.flac", wave, 16000)
    (folder / "corrupt.wav").write_bytes(b"not audio at all" * 100)
    (folder / "empty.wav").write_bytes(b"")
    return folder


def launch(args: list[str], *, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``accelerate launch`` 2 CPU processes of ``python -m lapsv ARGS`` (free port)."""
    command = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(free_port()), "-m", "lapsv", *args,
    ]  # fmt: skip
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def lapsv_lines(text: str, out: Path) -> list[str]:
    """What lapsv printed about the files (``out`` written as OUT), without progress bars
    and the launcher's own report."""
    keep = ("embedded", "error:", "resumed:", "  audio/")
    lines = [line for line in text.splitlines() if line.startswith(keep) or "failed:" in line]
    return [line.replace(str(out), "OUT") for line in lines]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, audio) -> tuple[Path, list[str], list[str]]:
    """One plain process, default batch size (one chunk): the file, stdout and stderr."""
    out = tmp_path_factory.mktemp("one") / "e.npz"
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main(["embed", "ge2e", str(audio), "--out", str(out)])
    assert code == 1, stderr.getvalue()  # two files failed
    return out, lapsv_lines(stdout.getvalue(), out), lapsv_lines(stderr.getvalue(), out)


def assert_same_embeddings(path: Path, reference: Path, *, skip: set[str] = frozenset()) -> None:
    got, want = np.load(path), np.load(reference)
    assert got["ids"].tolist() == want["ids"].tolist()  # same keys, same order
    assert str(got["model_id"]) == str(want["model_id"])
    rows = [i for i, utt in enumerate(want["ids"]) if utt not in skip]
    assert np.abs(got["embeddings"][rows] - want["embeddings"][rows]).max() < 1e-5


def test_two_processes_embed_what_one_does_and_report_every_failure(tmp_path, audio, reference):
    out = tmp_path / "e.npz"
    result = launch(["embed", "ge2e", str(audio), "--out", str(out), "--batch_size", "1"])
    assert result.returncode == 1, result.stderr[-3000:]  # some files failed, as one process
    one, printed, errors = reference
    assert lapsv_lines(result.stdout, out) == printed  # printed once, by process 0
    assert printed[0].startswith(f"embedded {CLIPS} of {CLIPS + 2} files")
    assert lapsv_lines(result.stderr, out) == errors  # the failures of both processes
    assert errors[0] == "2 file(s) failed:" and "corrupt.wav: cannot decode" in errors[1]
    assert "Traceback" not in result.stderr.split("failed (exitcode")[0]  # lapsv's own part
    assert_same_embeddings(out, one)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz"]  # parts removed


def test_a_killed_job_reruns_only_its_unfinished_chunks(tmp_path, audio, reference):
    out = tmp_path / "e.npz"
    args = ["embed", "ge2e", str(audio), "--out", str(out), "--batch_size", "1", "--show", "0"]
    killed = launch(args, env={"LAPSV_FAILPOINT": "after-chunk-rank1:1"})
    assert killed.returncode != 0 and not out.exists()
    (work,) = parts_folder(out).iterdir()
    parts = sorted(work.glob("chunk-*.npz"))
    assert work / "chunk-000001.npz" in parts  # process 1's first chunk, written before it died
    assert len(parts) < -(-(CLIPS + 2) // CHUNK)  # and not every chunk
    done = {p.name: dict(np.load(p)) for p in parts}
    reused = sum(len(d["ids"]) + len(d["failed_ids"]) for d in done.values())
    embedded = sum(len(d["ids"]) for d in done.values())
    tampered = done["chunk-000001.npz"]
    tampered["embeddings"] = np.full_like(tampered["embeddings"], MARKER)
    np.savez(work / "chunk-000001.npz", **tampered)  # as if the run had embedded this

    rerun = launch(args)
    assert rerun.returncode == 1, rerun.stderr[-3000:]  # the two bad files, as before
    (resumed,) = [line for line in lapsv_lines(rerun.stderr, out) if line.startswith("resumed:")]
    assert resumed.startswith(f"resumed: {reused} files done in {len(parts)} of 5 chunk parts")
    assert resumed.endswith(f", {CLIPS - embedded} embedded now")
    marked = set(tampered["ids"].tolist())
    data = np.load(out)
    rows = [i for i, utt in enumerate(data["ids"]) if utt in marked]
    assert len(rows) == CHUNK and (data["embeddings"][rows] == MARKER).all()  # not redone
    assert_same_embeddings(out, reference[0], skip=marked)
    assert not parts_folder(out).exists()


def test_one_process_resumes_and_never_uses_another_models_parts(tmp_path, audio, reference):
    out = tmp_path / "e.npz"
    model = load_model("ge2e")
    items = expand_audio_inputs([str(audio)])
    for model_id in (model.model_id, "another-model"):  # two interrupted jobs, parts kept
        extract_sharded(model, items, out, model_id=model_id, batch_size=1)
    jobs = {
        json.loads((w / "job.json").read_text())["model_id"]: w for w in parts_folder(out).iterdir()
    }
    (jobs[model.model_id] / "chunk-000004.npz").unlink()  # the chunk in flight when killed
    for job in jobs.values():
        for part in job.glob("chunk-*.npz"):
            data = dict(np.load(part))
            data["embeddings"] = np.full_like(data["embeddings"], MARKER)
            np.savez(part, **data)

    code = main(["embed", "ge2e", str(audio), "--out", str(out), "--batch_size", "1"])
    assert code == 1  # the two bad files
    data = np.load(out)
    kept = {
        u for u, row in zip(data["ids"], data["embeddings"], strict=True) if (row == MARKER).all()
    }
    assert len(data["ids"]) - len(kept) == (CLIPS + 2) - 4 * CHUNK - 2  # chunk 4, but failures
    assert_same_embeddings(out, reference[0], skip=kept)
    assert not jobs[model.model_id].exists()
    assert jobs["another-model"].is_dir()  # left alone


def test_two_processes_evaluate_as_one(tmp_path):
    corpus = make_corpus(tmp_path / "corpus", speakers=4, utterances=6, val_speakers=4)
    args = ["eval", "ge2e", "--trials", str(corpus["val_trials"])]
    args += ["--audio_root", str(corpus["audio"]), "--cohort", str(corpus["train"])]
    args += ["--norm", "asnorm", "--top_n", "3", "--batch_size", "1"]
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    result = launch([*args, "--out", str(tmp_path / "two")])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "276 trials, embedded 48 utterances" in result.stdout  # 24 trial + 24 cohort
    assert result.stdout.count("trials, embedded") == 1  # only process 0 reports
    one, two = tmp_path / "one", tmp_path / "two"
    assert (two / "scores.txt").read_bytes() == (one / "scores.txt").read_bytes()
    metrics = [json.loads((d / "metrics.json").read_text()) for d in (one, two)]
    assert metrics[0] == metrics[1] and metrics[0]["eer"] > 0
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())


def test_a_damaged_part_is_an_error_then_redone(tmp_path, audio, capsys):
    out = tmp_path / "e.npz"
    model = load_model("ge2e")
    extract_sharded(model, expand_audio_inputs([str(audio)]), out, model_id=model.model_id)
    (part,) = next(parts_folder(out).iterdir()).glob("chunk-*.npz")  # 72 items: one chunk
    part.write_bytes(b"PK\x03\x04 not a whole archive")
    args = ["embed", "ge2e", str(audio), "--out", str(out)]
    assert main(args) == 2
    assert "is missing or unreadable" in capsys.readouterr().err and not part.exists()
    assert main(args) == 1 and out.is_file()  # redone; the two bad files fail as always
