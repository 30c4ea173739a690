"""The one scoring path: cosine -> AS-norm -> QMF LLR, with the state a model carries.

:class:`ScoringState` (training mean, AS-norm cohort, QMF calibration) is fitted from
training (cohort) embeddings by :func:`fit_scoring_state`, saved beside a model only when
asked (``lapsv eval ... --save-scoring``), or travels inside an exported model's metadata.
:func:`score_pairs` is the only function that turns embeddings into scores: ``verify``,
``identify`` (:mod:`lapsv.identification`), ``eval`` (:mod:`lapsv.scoring.evaluate`),
``lapsv score`` and training's validation all call it.

Decisions need a threshold: an explicit one, or LLR 0 of a QMF calibration (the Bayes
decision at p_target 0.5). There is no hidden default threshold.
"""

from __future__ import annotations

import base64
import dataclasses
import functools
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lapsv.files import atomic_path
from lapsv.modeldir import QMF_FILE, SCORING_FILE
from lapsv.scoring.calibrate import QMFCalibrator, quality_features, sample_calibration_pairs
from lapsv.scoring.norm import as_norm, cosine_scores, embedding_mean, speaker_cohort

QMF_SOURCE = "QMF calibration (LLR 0)"


@dataclasses.dataclass(frozen=True)
class ScoringState:
    """What a model may carry for scoring beyond cosine.

    mean: (E,) mean of length-normalised training embeddings, subtracted before cosine;
    cohort: (C, E) AS-norm cohort; top_n: AS-norm's top-n; calibrator: QMF (needs the
    cohort). Every field is None / 0 for a model evaluated without ``--cohort``.
    """

    mean: np.ndarray | None = None
    cohort: np.ndarray | None = None
    top_n: int = 0
    calibrator: QMFCalibrator | None = None

    @property
    def calibrated(self) -> bool:
        return self.calibrator is not None

    @functools.cached_property
    def key(self) -> str:
        """Fingerprint of what AS-norm statistics depend on (mean, cohort, top-n): stored
        statistics are reused only under the same key."""
        digest = hashlib.sha256(str(self.top_n).encode())
        for array in (self.mean, self.cohort):
            if array is not None:
                digest.update(np.ascontiguousarray(array, dtype="<f4").tobytes())
            digest.update(b"|")
        return digest.hexdigest()[:16]

    @classmethod
    def load(cls, folder: str | Path) -> ScoringState:
        """The state saved beside a model by ``lapsv eval ... --save-scoring`` (or empty)."""
        folder = Path(folder)
        if not (folder / SCORING_FILE).is_file():
            return cls()
        calibrator = None
        if (folder / QMF_FILE).is_file():
            calibrator = QMFCalibrator.load(folder / QMF_FILE)
        return cls._from_arrays(folder / SCORING_FILE, calibrator)

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write ``scoring.npz`` (and ``qmf.json`` when calibrated) into ``folder``,
        each atomically; a stale ``qmf.json`` of an uncalibrated state is removed."""
        if self.cohort is None:
            raise ValueError("an empty scoring state has nothing to save")
        folder = Path(folder)
        files = {"scoring": folder / SCORING_FILE}
        with atomic_path(files["scoring"]) as tmp, open(tmp, "wb") as handle:
            self._write_arrays(handle)
        if self.calibrator is not None:
            files["qmf"] = self.calibrator.save(folder / QMF_FILE)
        else:
            (folder / QMF_FILE).unlink(missing_ok=True)
        return files

    def to_metadata(self) -> dict[str, str]:
        """Plain strings (for ONNX metadata / TorchScript extra files); {} when empty."""
        if self.cohort is None:
            return {}
        buffer = io.BytesIO()
        self._write_arrays(buffer)
        metadata = {"lapsv.scoring": base64.b64encode(buffer.getvalue()).decode("ascii")}
        if self.calibrator is not None:
            metadata["lapsv.qmf"] = json.dumps(self.calibrator.to_dict())
        return metadata

    @classmethod
    def from_metadata(cls, metadata: dict[str, str]) -> ScoringState:
        """Inverse of :meth:`to_metadata`."""
        if "lapsv.scoring" not in metadata:
            return cls()
        data = base64.b64decode(metadata["lapsv.scoring"])
        calibrator = None
        if "lapsv.qmf" in metadata:
            calibrator = QMFCalibrator.from_dict(json.loads(metadata["lapsv.qmf"]))
        return cls._from_arrays(io.BytesIO(data), calibrator)

    def _write_arrays(self, handle: Any) -> None:
        """The mean, cohort and top-n as one .npz (a model's scoring.npz, or metadata)."""
        np.savez(handle, mean=self.mean, cohort=self.cohort, top_n=np.array(self.top_n))

    @classmethod
    def _from_arrays(cls, source: Any, calibrator: QMFCalibrator | None) -> ScoringState:
        """Inverse of :meth:`_write_arrays` (a path or a file object), no pickles."""
        with np.load(source, allow_pickle=False) as state:
            return cls(state["mean"], state["cohort"], int(state["top_n"]), calibrator)


@dataclasses.dataclass(frozen=True)
class Scores:
    """(n,) cosine scores; AS-norm, QMF quality features (n, F) and LLR, or None when the
    state has no cohort / calibration."""

    cosine: np.ndarray
    asnorm: np.ndarray | None
    llr: np.ndarray | None
    features: np.ndarray | None = None

    @property
    def decision(self) -> np.ndarray:
        """The scores a threshold applies to: LLR, else AS-norm, else cosine."""
        for values in (self.llr, self.asnorm):
            if values is not None:
                return values
        return self.cosine

    @property
    def decision_name(self) -> str:
        if self.llr is not None:
            return "LLR"
        return "AS-norm" if self.asnorm is not None else "cosine"


def score_pairs(
    state: ScoringState,
    enroll_vectors: np.ndarray,
    test_vectors: np.ndarray,
    pairs_e: np.ndarray,
    pairs_t: np.ndarray,
    *,
    enroll_seconds: np.ndarray,
    test_seconds: np.ndarray,
    enroll_raw: np.ndarray | None = None,
    enroll_stats: tuple[np.ndarray, np.ndarray] | None = None,
) -> Scores:
    """Score trials with everything ``state`` has: cosine, AS-norm, QMF LLR.

    Args:
        enroll_vectors, test_vectors: (M, E), (N, E) raw embeddings or enrolled unit-vector
            models (:func:`~lapsv.scoring.norm.enroll_models`); the same object for both
            sides shares the work.
        pairs_e, pairs_t: (n,) rows of each trial's sides.
        enroll_seconds, test_seconds: (M,), (N,) durations (QMF features).
        enroll_raw: (M, E) raw embeddings for the QMF features, when ``enroll_vectors`` are
            enrolled models (a model's raw vector is the mean of its utterances').
        enroll_stats: (M,) AS-norm mean and standard deviation of each enrolment vector
            computed earlier for this state (:func:`~lapsv.scoring.norm.cohort_statistics`),
            or None to compute them here.
    """
    cosine = cosine_scores(enroll_vectors, test_vectors, pairs_e, pairs_t, mean=state.mean)
    if state.cohort is None:
        return Scores(cosine, None, None)
    asnorm = as_norm(
        cosine,
        enroll_vectors,
        test_vectors,
        pairs_e,
        pairs_t,
        state.cohort,
        top_n=state.top_n,
        mean=state.mean,
        enroll_stats=enroll_stats,
    )
    features = quality_features(
        asnorm,
        enroll_vectors if enroll_raw is None else enroll_raw,
        test_vectors,
        enroll_seconds,
        test_seconds,
        pairs_e=pairs_e,
        pairs_t=pairs_t,
    )
    llr = None if state.calibrator is None else state.calibrator.llr(features)
    return Scores(cosine, asnorm, llr, features)


def fit_scoring_state(
    embeddings: np.ndarray,
    seconds: np.ndarray,
    speakers: Sequence[str],
    *,
    top_n: int = 600,
    calibrate: bool = False,
    calibration_pairs: int = 30_000,
) -> ScoringState:
    """The scoring state of (n, E) raw TRAINING embeddings of ``speakers`` lasting ``seconds``.

    Their mean (length-normalised) is subtracted before cosine, their per-speaker means
    form the AS-norm cohort (top ``top_n``, clipped to the cohort size), and with
    ``calibrate`` QMF is fitted on ``calibration_pairs`` pairs of them, scored by
    :func:`score_pairs` exactly like trials.
    """
    mean = embedding_mean(embeddings)
    cohort = speaker_cohort(embeddings, speakers, mean=mean)
    state = ScoringState(mean, cohort, min(top_n, len(cohort)))
    if not calibrate:
        return state
    idx_a, idx_b, labels = sample_calibration_pairs(speakers, n_pairs=calibration_pairs, seed=0)
    scores = score_pairs(
        state, embeddings, embeddings, idx_a, idx_b, enroll_seconds=seconds, test_seconds=seconds
    )
    return dataclasses.replace(state, calibrator=QMFCalibrator().fit(scores.features, labels))


def resolve_threshold(state: ScoringState, threshold: float | None) -> tuple[float | None, str]:
    """The threshold to decide with and where it comes from: the given one, else LLR 0 when
    the model is calibrated, else none."""
    if threshold is not None:
        return float(threshold), "given"
    if state.calibrated:
        return 0.0, QMF_SOURCE
    return None, "none"


@dataclasses.dataclass(frozen=True)
class Verification:
    """cosine: mean-subtracted when the model has a training mean; asnorm / llr: None when
    the model has no cohort / calibration; same: the decision, None without a threshold."""

    cosine: float
    asnorm: float | None
    llr: float | None
    threshold: float | None
    threshold_source: str
    same: bool | None

    @property
    def decision_score(self) -> float:
        """The score the threshold applies to: LLR, else AS-norm, else cosine."""
        for value in (self.llr, self.asnorm):
            if value is not None:
                return value
        return self.cosine

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "decision_score": self.decision_score}


def verify_embeddings(
    state: ScoringState,
    a: np.ndarray,
    b: np.ndarray,
    seconds: Sequence[float],
    *,
    threshold: float | None = None,
) -> Verification:
    """Compare two raw (E,) embeddings of recordings lasting ``seconds`` = (s_a, s_b)."""
    raw = np.stack([np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)])
    pairs = np.array([0]), np.array([1])
    durations = np.asarray(seconds, dtype=np.float64)
    scores = score_pairs(state, raw, raw, *pairs, enroll_seconds=durations, test_seconds=durations)
    return verification_of(scores, 0, state, threshold)


def verification_of(
    scores: Scores, trial: int, state: ScoringState, threshold: float | None
) -> Verification:
    """Trial ``trial`` of ``scores`` (from :func:`score_pairs` with ``state``) as a
    verification, decided at ``threshold`` (or the state's, :func:`resolve_threshold`)."""
    limit, source = resolve_threshold(state, threshold)
    result = Verification(
        float(scores.cosine[trial]),
        None if scores.asnorm is None else float(scores.asnorm[trial]),
        None if scores.llr is None else float(scores.llr[trial]),
        limit,
        source,
        None,
    )
    if limit is not None:
        result = dataclasses.replace(result, same=result.decision_score >= limit)
    return result
