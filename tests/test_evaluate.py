"""`lapsv eval` / `lapsv score`: cached embeddings, AS-norm, QMF, files a user reads."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import lapsv
from lapsv import SpeakerModel
from lapsv.cli import main
from lapsv.config import ModelConfig
from lapsv.embeddings import EmbeddingSet
from lapsv.errors import ConfigError, ScoringError
from lapsv.modeldir import QMF_FILE, SCORING_FILE
from lapsv.scoring.evaluate import evaluate, score_trials
from lapsv.scoring.trials import Trials
from synthetic import make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval-corpus")
    return make_corpus(root, speakers=8, utterances=5, val_speakers=4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return SpeakerModel.build(ModelConfig()).save(tmp_path_factory.mktemp("m") / "model")


def test_second_run_reuses_cached_embeddings_and_prints_the_same(tmp_path, corpus, capsys):
    args = ["eval", "ge2e", "--trials", str(corpus["val_trials"])]
    args += ["--audio_root", str(corpus["audio"]), "--out", str(tmp_path)]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "embedded 20 utterances" in first
    assert main(args) == 0
    second = capsys.readouterr().out
    assert "reused cached embeddings" in second
    table = lambda text: text[text.index("system") :]  # noqa: E731
    assert table(first) == table(second)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"eer", "min_dcf_0.01", "min_dcf_0.05", "n_target", "n_nontarget"} <= set(metrics)
    assert (tmp_path / "det.png").stat().st_size > 10_000
    lines = (tmp_path / "scores.txt").read_text().splitlines()
    assert len(lines) == metrics["n_target"] + metrics["n_nontarget"] == 190
    assert len(lines[0].split()) == 4


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, corpus, model_dir):
    """The QMF evaluation, run once: it also saves the calibration beside the model."""
    return evaluate(
        model_dir,
        corpus["val_trials"],
        corpus["audio"],
        out=tmp_path_factory.mktemp("qmf"),
        cohort=corpus["train"],
        norm="asnorm",
        calibrate="qmf",
        top_n=5,
        calibration_pairs=400,
        save_scoring=True,
    )


def test_asnorm_and_qmf_write_calibration_beside_the_model(calibrated, model_dir):
    result = calibrated
    assert {"cllr", "act_dcf_0.01"} <= set(result.metrics)
    assert result.metrics["mean_subtraction"]
    assert (model_dir / QMF_FILE).is_file()
    state = np.load(model_dir / SCORING_FILE)
    assert state["cohort"].shape == (8, 192)
    assert int(state["top_n"]) == 5


def test_norm_without_cohort_is_a_clear_error(tmp_path, corpus):
    with pytest.raises(ConfigError, match="need a cohort"):
        evaluate("ge2e", corpus["val_trials"], corpus["audio"], out=tmp_path, norm="asnorm")


def test_wrong_audio_root_names_a_file_and_the_option(tmp_path, corpus, capsys):
    args = ["eval", "ge2e", "--trials", str(corpus["val_trials"])]
    args += ["--audio_root", str(tmp_path / "elsewhere"), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "none of the 20 audio files" in error and "no such file" in error
    assert f"--audio_root {tmp_path / 'elsewhere'}?" in error
    assert "Traceback" not in error
    args[args.index("--audio_root") + 1] = str(corpus["audio"])  # fixed: the same folder works
    assert main(args) == 0
    assert "embedded 20 utterances" in capsys.readouterr().out


def test_a_missing_file_skips_its_trials_and_is_named(tmp_path, corpus, capsys):
    audio = tmp_path / "audio"
    shutil.copytree(corpus["audio"], audio)
    first = corpus["val_trials"].read_text().split()[1]  # "1 enroll test" lines
    (audio / first).unlink()
    args = ["eval", "ge2e", "--trials", str(corpus["val_trials"])]
    assert main([*args, "--audio_root", str(audio), "--out", str(tmp_path / "out")]) == 1
    captured = capsys.readouterr()
    assert "embedded 19 utterances" in captured.out and "skipped 19 trials" in captured.out
    assert f"{first}: no such file" in captured.err
    assert len((tmp_path / "out" / "scores.txt").read_text().splitlines()) == 190 - 19


def test_scoring_with_no_embedded_trial_is_a_clear_error(tmp_path):
    embedded = EmbeddingSet(["a"], np.ones((1, 4), np.float32), np.ones(1, np.float32))
    embedded.failures.append(("b", "no such file"))
    with pytest.raises(ScoringError, match=r"none of the 2 trials .* \('b', 'no such file'\)"):
        score_trials(embedded, Trials(("a", "b"), ("b", "c"), np.array([1, 0])), out=tmp_path)


def test_score_file_metrics_as_json(tmp_path, capsys):
    path = tmp_path / "scores.txt"
    path.write_text("a b 0.9 target\na c 0.1 nontarget\nb c 0.3 nontarget\nc d 0.8 1\n")
    assert main(["score", "--scores", str(path)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["eer"] == 0.0
    assert (metrics["n_target"], metrics["n_nontarget"]) == (2, 2)


def test_score_cached_embeddings_with_multi_utterance_enrolment(tmp_path, corpus, capsys):
    emb = tmp_path / "emb.npz"
    assert main(["embed", "ge2e", str(corpus["audio"]), "--out", str(emb)]) == 0
    capsys.readouterr()
    ids = [str(i) for i in np.load(emb)["ids"]]
    spk = {i: i.split("/")[1] for i in ids}
    enroll = tmp_path / "spk2utt"
    speakers = sorted(set(spk.values()))
    enroll.write_text(
        "".join(f"{s} " + " ".join(i for i in ids if spk[i] == s)[:1000] + "\n" for s in speakers)
    )
    trials = tmp_path / "trials.txt"
    first_of = {s: next(i for i in ids if spk[i] == s) for s in speakers}
    lines = [
        f"{s} {first_of[t]} {'target' if s == t else 'nontarget'}"
        for s in speakers
        for t in speakers
    ]
    trials.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.txt"
    args = ["score", "--embeddings", str(emb), "--trials", str(trials), "--enroll", str(enroll)]
    assert main([*args, "--out", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n_target"] == len(speakers)
    assert len(out.read_text().splitlines()) == len(speakers) ** 2


def test_verify_uses_the_calibrated_threshold_after_qmf(calibrated, corpus, model_dir, capsys):
    a, b = sorted(corpus["audio"].glob("spk08/*.flac"))[:2]
    assert main(["verify", str(model_dir), str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "cosine (mean-subtracted):" in out
    assert "calibrated LLR:" in out
    assert "threshold +0.0000 from QMF calibration (LLR 0)" in out
    result = lapsv.load_model(model_dir).verify(a, b)
    assert result.same == (result.llr >= 0)


def test_eval_changes_the_model_directory_only_when_asked(tmp_path, corpus, capsys):
    model = SpeakerModel.build(ModelConfig(), pretrained=False).save(tmp_path / "model")
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    args = ["eval", str(model), "--trials", str(corpus["val_trials"])]
    args += ["--audio_root", str(corpus["audio"]), "--cohort", str(corpus["train"])]
    args += ["--norm", "asnorm", "--calibrate", "qmf", "--top_n", "5", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before
    assert (tmp_path / "o" / SCORING_FILE).is_file() and (tmp_path / "o" / QMF_FILE).is_file()
    assert main([*args, "--save-scoring"]) == 0
    assert "reused cached embeddings" in capsys.readouterr().out
    for name in (SCORING_FILE, QMF_FILE):
        assert (model / name).read_bytes() == (tmp_path / "o" / name).read_bytes()
    assert lapsv.load_model(model).scoring.calibrated
