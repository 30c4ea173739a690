"""Verify two recordings: cosine score, AS-norm and QMF-calibrated LLR when the model has them.

Decisions need a threshold: an explicit one, or LLR 0 from a QMF calibration saved beside
the model by ``lapsv eval --calibrate qmf`` (the Bayes decision at p_target 0.5). There is
no hidden default threshold.

The scoring state a model carries (:class:`ScoringState`: training mean, AS-norm cohort,
QMF calibration) is read from the model directory, or from an exported model's metadata,
and is used alike by ``verify`` and by ``identify`` (:mod:`lapsv.speakerdb`).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lapsv.evaluate import QMF_FILE, SCORING_FILE
from lapsv.inference import DEFAULT_MAX_SECONDS, embed_file
from lapsv.scoring.calibrate import QMFCalibrator, quality_features
from lapsv.scoring.norm import as_norm, cosine_scores

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

    @classmethod
    def load(cls, folder: str | Path) -> ScoringState:
        """The state saved beside a model by ``lapsv eval --cohort ... --calibrate qmf``."""
        folder = Path(folder)
        if not (folder / SCORING_FILE).is_file():
            return cls()
        with np.load(folder / SCORING_FILE, allow_pickle=False) as state:
            mean, cohort, top_n = state["mean"], state["cohort"], int(state["top_n"])
        calibrator = None
        if (folder / QMF_FILE).is_file():
            calibrator = QMFCalibrator.load(folder / QMF_FILE)
        return cls(mean, cohort, top_n, calibrator)

    def to_metadata(self) -> dict[str, str]:
        """Plain strings (for ONNX metadata / TorchScript extra files); {} when empty."""
        if self.cohort is None:
            return {}
        buffer = io.BytesIO()
        np.savez(buffer, mean=self.mean, cohort=self.cohort, top_n=np.array(self.top_n))
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
        with np.load(io.BytesIO(data), allow_pickle=False) as state:
            mean, cohort, top_n = state["mean"], state["cohort"], int(state["top_n"])
        calibrator = None
        if "lapsv.qmf" in metadata:
            calibrator = QMFCalibrator.from_dict(json.loads(metadata["lapsv.qmf"]))
        return cls(mean, cohort, top_n, calibrator)


@dataclasses.dataclass(frozen=True)
class Scores:
    """(n,) cosine scores; AS-norm and LLR (n,) or None when the model has no cohort / QMF."""

    cosine: np.ndarray
    asnorm: np.ndarray | None
    llr: np.ndarray | None

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
    """
    cosine = cosine_scores(enroll_vectors, test_vectors, pairs_e, pairs_t, mean=state.mean)
    asnorm = llr = None
    if state.cohort is not None:
        asnorm = as_norm(
            cosine,
            enroll_vectors,
            test_vectors,
            pairs_e,
            pairs_t,
            state.cohort,
            top_n=state.top_n,
            mean=state.mean,
        )
        if state.calibrator is not None:
            features = quality_features(
                asnorm,
                enroll_vectors if enroll_raw is None else enroll_raw,
                test_vectors,
                enroll_seconds,
                test_seconds,
                pairs_e=pairs_e,
                pairs_t=pairs_t,
            )
            llr = state.calibrator.llr(features)
    return Scores(cosine, asnorm, llr)


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
    threshold, source = resolve_threshold(state, threshold)
    result = Verification(
        float(scores.cosine[0]),
        None if scores.asnorm is None else float(scores.asnorm[0]),
        None if scores.llr is None else float(scores.llr[0]),
        threshold,
        source,
        None,
    )
    if threshold is not None:
        result = dataclasses.replace(result, same=result.decision_score >= threshold)
    return result


class Verifier:
    """A model plus the scoring state saved beside it (training mean, cohort, QMF).

    ``model_name_or_path`` is anything :func:`~lapsv.loading.load_model` takes, an
    exported ``.onnx`` / TorchScript file included (its scoring state travels inside it).
    """

    def __init__(
        self, model_name_or_path: str | Path, *, device: str = "cpu", trust_pickle: bool = False
    ) -> None:
        from lapsv.loading import load_model

        self.model = load_model(model_name_or_path, device=device, trust_pickle=trust_pickle)
        self.device = device
        self.state: ScoringState = getattr(self.model, "scoring", None) or ScoringState()
        self.mean, self.cohort = self.state.mean, self.state.cohort
        self.top_n, self.calibrator = self.state.top_n, self.state.calibrator

    def verify_files(
        self,
        a: str | Path,
        b: str | Path,
        *,
        threshold: float | None = None,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
    ) -> Verification:
        """Compare two audio files (any format libsndfile reads, any rate); files longer
        than ``max_seconds`` are embedded window by window (:func:`~lapsv.inference.embed_file`)."""
        (ea, sa), (eb, sb) = (
            embed_file(self.model, path, max_seconds=max_seconds, device=self.device)
            for path in (a, b)
        )
        return verify_embeddings(self.state, ea, eb, (sa, sb), threshold=threshold)
