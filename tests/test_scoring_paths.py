"""One scoring path: `lapsv verify`, `lapsv identify`, `lapsv eval` and training's
validation give the same scores for the same pairs with the same scoring state."""

from __future__ import annotations

import numpy as np
import pytest

import lapsv
from lapsv.data.manifest import read_manifest
from lapsv.identification import enroll_files, identify_files
from lapsv.modeldir import QMF_FILE, SCORING_FILE
from lapsv.scoring.evaluate import evaluate
from lapsv.scoring.trials import read_trials
from lapsv.speakers import SpeakerDB
from lapsv.training.validation import Validator
from synthetic import make_corpus
from test_api import tiny_model

TOLERANCE = 1e-5  # float32 embeddings, scored in float32 (see lapsv.scoring.norm)
RELATIVE = 1e-5  # LLRs reach +-25: float32 rounding of ~1e-6 relative


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A small corpus, a tiny model, and `lapsv eval` run three ways on its trials; the
    calibrated run attaches its scoring state to the model (``save_scoring``)."""
    root = tmp_path_factory.mktemp("paths")
    corpus = make_corpus(root, speakers=6, utterances=4, val_speakers=3)
    model_dir = tiny_model().save(root / "model")
    options = {"cohort": corpus["train"], "top_n": 5, "calibration_pairs": 300}
    runs = {
        "cosine": evaluate(
            model_dir, corpus["val_trials"], corpus["audio"], out=root / "c", **options
        ),
        "asnorm": evaluate(
            model_dir,
            corpus["val_trials"],
            corpus["audio"],
            out=root / "a",
            norm="asnorm",
            **options,
        ),
    }
    assert not (model_dir / SCORING_FILE).exists()  # evaluating changes no model
    runs["llr"] = evaluate(
        model_dir,
        corpus["val_trials"],
        corpus["audio"],
        out=root / "q",
        norm="asnorm",
        calibrate="qmf",
        save_scoring=True,
        **options,
    )
    assert (model_dir / SCORING_FILE).is_file() and (model_dir / QMF_FILE).is_file()
    trials = read_trials(corpus["val_trials"])
    assert len(runs["llr"].trials) == len(trials) and runs["llr"].skipped_trials == 0
    return corpus, model_dir, trials, {kind: run.scores for kind, run in runs.items()}


def test_verify_gives_the_eval_scores(setup):
    corpus, model_dir, trials, expected = setup
    model = lapsv.load_model(model_dir)
    assert model.scoring.calibrated
    rows = range(0, len(trials), 7)
    results = [
        model.verify(corpus["audio"] / trials.enroll[i], corpus["audio"] / trials.test[i])
        for i in rows
    ]
    for kind in ("cosine", "asnorm", "llr"):
        got = np.array([getattr(result, kind) for result in results])
        np.testing.assert_allclose(got, expected[kind][list(rows)], rtol=RELATIVE, atol=TOLERANCE)


def test_identify_gives_the_eval_scores(setup, tmp_path):
    """Every enrolment utterance of the trials is its own speaker (named by its id, '/'
    made '_': a name holds no '/'); identifying a test utterance scores it against all of
    them, as the trials with that test side do."""
    corpus, model_dir, trials, expected = setup
    model = lapsv.load_model(model_dir)
    audio = corpus["audio"]
    test = trials.test[0]
    rows = [i for i, t in enumerate(trials.test) if t == test]
    with SpeakerDB(tmp_path / "speakers.db", create=True) as db:
        for utt in {trials.enroll[i] for i in rows}:
            enroll_files(db, model, utt.replace("/", "_"), [audio / utt])
        (answer,), failures = identify_files(db, model, [audio / test], top_k=len(rows))
    assert not failures and answer.score_name == "LLR"
    by_name = {candidate.name: candidate for candidate in answer.candidates}
    for kind in ("cosine", "asnorm", "llr"):
        got = np.array([getattr(by_name[trials.enroll[i].replace("/", "_")], kind) for i in rows])
        np.testing.assert_allclose(got, expected[kind][rows], rtol=RELATIVE, atol=TOLERANCE)


def test_validation_gives_the_eval_cosines(setup):
    """Validation subtracts the mean of its training subset; with the whole training set
    (the eval cohort) its scores are eval's mean-subtracted cosines."""
    corpus, model_dir, _, expected = setup
    model = lapsv.SpeakerModel.load(model_dir)
    validator = Validator(
        read_manifest(corpus["val"]), str(corpus["val_trials"]), read_manifest(corpus["train"])
    )
    ((scores, labels),) = validator.scores(model.frontend, {"m": model.backend}, "cpu").values()
    assert len(scores) == len(expected["cosine"]) and labels.sum() > 0
    np.testing.assert_allclose(scores, expected["cosine"], rtol=RELATIVE, atol=TOLERANCE)
