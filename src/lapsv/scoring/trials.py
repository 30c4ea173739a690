"""Trial lists, score files and enrolment maps.

:func:`read_trials` recognises, from the first non-blank line of a file:

* VoxCeleb: ``1 id10270/x6uYqmx31kE/00001.wav id10273/8cfyJEV7hP8/00003.wav``
  (label first, 1 target / 0 non-target; all six official VoxCeleb1 lists use it);
* Kaldi: ``enroll test target`` (or ``nontarget``);
* unlabeled: ``enroll test``;
* CSV with a header line (comma-separated): enrolment column ``enroll``, ``enrollment``,
  ``enrol``, ``utt1`` or ``audio1``; test column ``test``, ``utt2`` or ``audio2``; optional
  label column ``label``, ``target`` or ``is_target`` with ``1/0``, ``true/false`` or
  ``target/nontarget``.

Every line of a file must have the format of its first line. CRLF line ends, trailing
whitespace and blank lines are accepted. Errors name the file and line.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lapsv.errors import ScoringError
from lapsv.files import atomic_write_text

__all__ = ["Trials", "read_enrollment_map", "read_scores", "read_trials", "write_scores"]

_ENROLL_COLUMNS = ("enroll", "enrollment", "enrol", "utt1", "audio1")
_TEST_COLUMNS = ("test", "utt2", "audio2")
_LABEL_COLUMNS = ("label", "target", "is_target")
_LABEL_WORDS = {"1": 1, "0": 0, "true": 1, "false": 0, "target": 1, "nontarget": 0}


@dataclasses.dataclass(frozen=True, eq=False)
class Trials:
    """A list of (enroll, test) trials with optional labels.

    Attributes:
        enroll: (n,) enrolment utterance or model ids.
        test: (n,) test utterance ids.
        labels: (n,) read-only int8 array, 1 target / 0 non-target; ``None`` if unlabeled.

    >>> trials = Trials(("a", "a"), ("b", "c"), np.array([1, 0]))
    >>> len(trials), trials.labels.dtype.name
    (2, 'int8')
    """

    enroll: tuple[str, ...]
    test: tuple[str, ...]
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "enroll", tuple(self.enroll))
        object.__setattr__(self, "test", tuple(self.test))
        if len(self.enroll) != len(self.test):
            raise ScoringError(
                f"{len(self.enroll)} enrolment ids but {len(self.test)} test ids in the trials"
            )
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (len(self.enroll),) or not np.isin(labels, (0, 1)).all():
                raise ScoringError(
                    f"trial labels must be {len(self.enroll)} values of 1 (target) or 0 "
                    f"(non-target), got shape {labels.shape}"
                )
            labels = labels.astype(np.int8)
            labels.setflags(write=False)
            object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.enroll)


def _lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a UTF-8 text file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise ScoringError(f"{path}: cannot read ({error})") from error
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), 1)]
    lines = [(number, line) for number, line in lines if line]
    if not lines:
        raise ScoringError(f"{path}: the file is empty")
    return lines


def _label(path: Path, number: int, word: str) -> int:
    value = _LABEL_WORDS.get(word.strip().lower())
    if value is None:
        raise ScoringError(
            f"{path}:{number}: label {word!r} is not 1/0, true/false or target/nontarget"
        )
    return value


def _column(path: Path, header: list[str], names: Sequence[str], *, required: bool) -> int | None:
    found = [i for i, name in enumerate(header) if name in names]
    if len(found) > 1:
        raise ScoringError(f"{path}:1: several columns could be {names[0]!r}: {header}")
    if not found:
        if required:
            raise ScoringError(f"{path}:1: no column named one of {list(names)} in {header}")
        return None
    return found[0]


def _read_csv(path: Path, lines: list[tuple[int, str]]) -> Trials:
    header = [name.strip().lower() for name in next(csv.reader([lines[0][1]]))]
    enroll_col = _column(path, header, _ENROLL_COLUMNS, required=True)
    test_col = _column(path, header, _TEST_COLUMNS, required=True)
    label_col = _column(path, header, _LABEL_COLUMNS, required=False)
    enroll, test, labels = [], [], []
    for number, line in lines[1:]:
        row = next(csv.reader([line]))
        if len(row) != len(header):
            raise ScoringError(
                f"{path}:{number}: {len(row)} fields, but the header has {len(header)}"
            )
        enroll.append(row[enroll_col].strip())
        test.append(row[test_col].strip())
        if label_col is not None:
            labels.append(_label(path, number, row[label_col]))
    if not enroll:
        raise ScoringError(f"{path}: the CSV file has a header but no trials")
    return Trials(tuple(enroll), tuple(test), np.array(labels) if label_col is not None else None)


def _whitespace_format(path: Path, number: int, fields: list[str]) -> str:
    if len(fields) == 3 and fields[2].lower() in ("target", "nontarget"):
        return "kaldi"
    if len(fields) == 3 and fields[0] in ("0", "1"):
        return "voxceleb"
    if len(fields) == 2:
        return "unlabeled"
    raise ScoringError(
        f"{path}:{number}: not a trial line; expected 'label enroll test' (VoxCeleb), "
        f"'enroll test target|nontarget' (Kaldi), 'enroll test', or a CSV header"
    )


_EXPECTED = {
    "voxceleb": "'1|0 enroll test' (VoxCeleb format, as on line {first})",
    "kaldi": "'enroll test target|nontarget' (Kaldi format, as on line {first})",
    "unlabeled": "'enroll test' (unlabeled, as on line {first})",
}


def read_trials(path: str | Path) -> Trials:
    """Read a VoxCeleb, Kaldi, unlabeled or CSV trial list (format detected from line 1).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "veri_test2.txt"
    >>> _ = path.write_text("1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav\\r\\n")
    >>> trials = read_trials(path)
    >>> trials.enroll, trials.labels.tolist()
    (('id10270/x6uYqmx31kE/00001.wav',), [1])
    """
    path = Path(path)
    lines = _lines(path)
    first_number, first = lines[0]
    if "," in first:
        return _read_csv(path, lines)
    kind = _whitespace_format(path, first_number, first.split())
    enroll, test, labels = [], [], []
    for number, line in lines:
        fields = line.split()
        if len(fields) != (2 if kind == "unlabeled" else 3):
            expected = _EXPECTED[kind].format(first=first_number)
            raise ScoringError(f"{path}:{number}: expected {expected}, got {line!r}")
        if kind == "voxceleb":
            if fields[0] not in ("0", "1"):
                raise ScoringError(f"{path}:{number}: label {fields[0]!r} is not 1 or 0")
            labels.append(int(fields[0]))
            fields = fields[1:]
        elif kind == "kaldi":
            if fields[2].lower() not in ("target", "nontarget"):
                raise ScoringError(
                    f"{path}:{number}: label {fields[2]!r} is not 'target' or 'nontarget'"
                )
            labels.append(_LABEL_WORDS[fields[2].lower()])
        enroll.append(fields[0])
        test.append(fields[1])
    return Trials(tuple(enroll), tuple(test), None if kind == "unlabeled" else np.array(labels))


def write_scores(path: str | Path, trials: Trials, scores: np.ndarray) -> Path:
    """Write ``enroll test score [label]`` lines atomically (score with 6 decimals).

    The label (1/0) is written only when the trials are labeled.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(trials),):
        raise ScoringError(f"{len(trials)} trials but scores of shape {scores.shape}")
    if trials.labels is None:
        lines = [
            f"{e} {t} {s:.6f}\n" for e, t, s in zip(trials.enroll, trials.test, scores, strict=True)
        ]
    else:
        lines = [
            f"{e} {t} {s:.6f} {int(label)}\n"
            for e, t, s, label in zip(
                trials.enroll, trials.test, scores, trials.labels, strict=True
            )
        ]
    path = Path(path)
    atomic_write_text(path, "".join(lines))
    return path


def read_scores(path: str | Path) -> tuple[Trials, np.ndarray]:
    """Read a score file ``enroll test score [label]`` -> (trials, (n,) float64 scores).

    Labels may be 1/0 or target/nontarget; either every line has one or none does.

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "scores.txt"
    >>> trials = Trials(("a", "a"), ("b", "c"), np.array([1, 0]))
    >>> _ = write_scores(path, trials, np.array([0.75, -0.125]))
    >>> path.read_text().splitlines()[0]
    'a b 0.750000 1'
    >>> read_scores(path)[1].tolist()
    [0.75, -0.125]
    """
    path = Path(path)
    lines = _lines(path)
    n_fields = len(lines[0][1].split())
    if n_fields not in (3, 4):
        raise ScoringError(
            f"{path}:{lines[0][0]}: expected 'enroll test score [label]', got {lines[0][1]!r}"
        )
    enroll, test, scores, labels = [], [], [], []
    for number, line in lines:
        fields = line.split()
        if len(fields) != n_fields:
            raise ScoringError(
                f"{path}:{number}: {len(fields)} fields, but line {lines[0][0]} has {n_fields}"
            )
        try:
            scores.append(float(fields[2]))
        except ValueError:
            raise ScoringError(f"{path}:{number}: score {fields[2]!r} is not a number") from None
        enroll.append(fields[0])
        test.append(fields[1])
        if n_fields == 4:
            labels.append(_label(path, number, fields[3]))
    trials = Trials(tuple(enroll), tuple(test), np.array(labels) if n_fields == 4 else None)
    return trials, np.array(scores, dtype=np.float64)


def read_enrollment_map(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read Kaldi ``spk2utt``-style lines ``model_id utt1 utt2 ...`` (file order kept).

    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "enroll.map"
    >>> _ = path.write_text("spk1 a.wav b.wav\\nspk2 c.wav\\n")
    >>> read_enrollment_map(path)
    {'spk1': ('a.wav', 'b.wav'), 'spk2': ('c.wav',)}
    """
    path = Path(path)
    models: dict[str, tuple[str, ...]] = {}
    for number, line in _lines(path):
        fields = line.split()
        if len(fields) < 2:
            raise ScoringError(f"{path}:{number}: expected 'model_id utt1 [utt2 ...]'")
        if fields[0] in models:
            raise ScoringError(f"{path}:{number}: model {fields[0]!r} is listed twice")
        models[fields[0]] = tuple(fields[1:])
    return models
