"""Trial lists (VoxCeleb, Kaldi, unlabeled, CSV), score files and enrolment maps."""

from __future__ import annotations

import numpy as np
import pytest

from lapsv.data.prepare import OFFICIAL_VOXCELEB_LISTS
from lapsv.errors import ScoringError
from lapsv.scoring import Trials, read_enrollment_map, read_scores, read_trials, write_scores

VOXCELEB_LINES = [
    "1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav",
    "0 id10270/x6uYqmx31kE/00001.wav id10300/ize_eiCFEg0/00003.wav",
    "1 id10273/0OCW1HUxZyg/00001.wav id10273/8cfyJEV7hP8/00004.wav",
    "0 id10273/0OCW1HUxZyg/00001.wav id10270/5r0dWxy17C8/00026.wav",
]


@pytest.mark.parametrize(
    "name",
    OFFICIAL_VOXCELEB_LISTS,
)
def test_voxceleb_lists(tmp_path, name):
    path = tmp_path / name
    # CRLF, trailing whitespace and blank lines, as in some downloaded copies
    path.write_bytes(
        ("\r\n".join([*VOXCELEB_LINES[:2], "", *VOXCELEB_LINES[2:]]) + "  \r\n\r\n").encode()
    )
    trials = read_trials(path)
    assert len(trials) == 4
    assert trials.enroll[0] == "id10270/x6uYqmx31kE/00001.wav"
    assert trials.test[3] == "id10270/5r0dWxy17C8/00026.wav"
    assert trials.labels.tolist() == [1, 0, 1, 0]
    assert trials.labels.dtype == np.int8


def test_kaldi_and_unlabeled(tmp_path):
    kaldi = tmp_path / "trials"
    kaldi.write_text("spk1-utt1 spk1-utt2 target\nspk1-utt1 spk2-utt1 nontarget\n")
    trials = read_trials(kaldi)
    assert trials.test == ("spk1-utt2", "spk2-utt1")
    assert trials.labels.tolist() == [1, 0]
    unlabeled = tmp_path / "pairs.txt"
    unlabeled.write_text("a.wav b.wav\nc.wav d.wav\n")
    trials = read_trials(unlabeled)
    assert trials.labels is None
    assert trials.enroll == ("a.wav", "c.wav")


@pytest.mark.parametrize(
    ("header", "rows", "labels"),
    [
        ("enroll,test,label", ["a,b,1", "a,c,0"], [1, 0]),
        ("Enrollment, Test ,Target", ["a,b,true", "a,c,FALSE"], [1, 0]),
        ("is_target,utt1,utt2", ["target,a,b", "nontarget,a,c"], [1, 0]),
        ("audio1,audio2,extra", ["a,b,x", "a,c,y"], None),
        ("enrol,test", ["a,b", "a,c"], None),
    ],
)
def test_csv(tmp_path, header, rows, labels):
    path = tmp_path / "trials.csv"
    path.write_text("\r\n".join([header, *rows, ""]))
    trials = read_trials(path)
    assert trials.enroll == ("a", "a")
    assert trials.test == ("b", "c")
    assert (trials.labels.tolist() if trials.labels is not None else None) == labels


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 a b\n0 a c d\n", ":2: expected '1|0 enroll test'"),
        ("1 a b\n\n2 a c\n", ":3: label '2'"),
        ("a b target\na c maybe\n", ":2: label 'maybe'"),
        ("a b c d\n", ":1: not a trial line"),
        ("enroll,label\na,1\n", ":1: no column named one of \\['test'"),
        ("enroll,test,label\na,b,yes\n", ":2: label 'yes'"),
        ("enroll,test\na,b,c\n", ":2: 3 fields"),
        ("\n\n", "empty"),
    ],
)
def test_errors_name_file_and_line(tmp_path, text, message):
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(ScoringError, match=message) as error:
        read_trials(path)
    assert str(path) in str(error.value)


def test_scores_round_trip(tmp_path):
    trials = Trials(("a", "a", "b"), ("b", "c", "c"), np.array([1, 0, 0]))
    scores = np.array([0.5, -0.1234567, 0.25])
    path = write_scores(tmp_path / "scores.txt", trials, scores)
    assert path.read_text().splitlines() == ["a b 0.500000 1", "a c -0.123457 0", "b c 0.250000 0"]
    back, back_scores = read_scores(path)
    assert back.enroll == trials.enroll and back.test == trials.test
    assert back.labels.tolist() == [1, 0, 0]
    np.testing.assert_allclose(back_scores, scores, atol=5e-7)

    unlabeled = Trials(("a",), ("b",), None)
    path = write_scores(tmp_path / "unlabeled.txt", unlabeled, np.array([1.0]))
    assert path.read_text() == "a b 1.000000\n"
    assert read_scores(path)[0].labels is None


def test_read_scores_words_and_errors(tmp_path):
    path = tmp_path / "scores.txt"
    path.write_text("a b 0.5 target\r\na c -0.5 nontarget\r\n")
    trials, scores = read_scores(path)
    assert trials.labels.tolist() == [1, 0]
    assert scores.tolist() == [0.5, -0.5]
    path.write_text("a b 0.5 1\na c 0.1\n")
    with pytest.raises(ScoringError, match=":2: 3 fields"):
        read_scores(path)
    path.write_text("a b high\n")
    with pytest.raises(ScoringError, match=":1: score 'high'"):
        read_scores(path)
    with pytest.raises(ScoringError, match="2 trials but scores"):
        write_scores(path, Trials(("a", "b"), ("c", "d")), np.zeros(3))


def test_enrollment_map(tmp_path):
    path = tmp_path / "spk2utt"
    path.write_text("spk1 a.wav b.wav c.wav\r\n\nspk2 d.wav  \n")
    assert read_enrollment_map(path) == {"spk1": ("a.wav", "b.wav", "c.wav"), "spk2": ("d.wav",)}
    path.write_text("spk1 a.wav\nspk1 b.wav\n")
    with pytest.raises(ScoringError, match=":2: model 'spk1' is listed twice"):
        read_enrollment_map(path)
    path.write_text("spk1\n")
    with pytest.raises(ScoringError, match=":1: expected 'model_id utt1"):
        read_enrollment_map(path)


def test_trials_validation():
    with pytest.raises(ScoringError, match="2 enrolment ids but 1 test"):
        Trials(("a", "b"), ("c",))
    with pytest.raises(ScoringError, match="labels"):
        Trials(("a",), ("c",), np.array([3]))
    trials = Trials(("a",), ("c",), np.array([True]))
    with pytest.raises(ValueError, match="read-only"):
        trials.labels[0] = 0
