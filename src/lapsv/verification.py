"""Verify two recordings: cosine score, AS-norm and QMF-calibrated LLR when the model has them.

Decisions need a threshold: an explicit one, or LLR 0 from a QMF calibration saved beside
the model by ``lapsv eval --calibrate qmf`` (the Bayes decision at p_target 0.5). There is
no hidden default threshold.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from lapsv.audio import load_audio
from lapsv.evaluate import QMF_FILE, SCORING_FILE
from lapsv.inference import embed_waveforms
from lapsv.loading import load_model
from lapsv.scoring.calibrate import QMFCalibrator, quality_features
from lapsv.scoring.norm import as_norm, cosine_scores


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


class Verifier:
    """A model plus the scoring state saved beside it (training mean, cohort, QMF)."""

    def __init__(self, model_name_or_path: str | Path, *, device: str = "cpu") -> None:
        self.model = load_model(model_name_or_path, device=device)
        self.device = device
        folder = Path(model_name_or_path)
        self.mean = self.cohort = self.calibrator = None
        self.top_n = 0
        if (folder / SCORING_FILE).is_file():
            with np.load(folder / SCORING_FILE, allow_pickle=False) as state:
                self.mean, self.cohort = state["mean"], state["cohort"]
                self.top_n = int(state["top_n"])
        if (folder / QMF_FILE).is_file() and self.cohort is not None:
            self.calibrator = QMFCalibrator.load(folder / QMF_FILE)

    def verify_waveforms(
        self, a: np.ndarray, b: np.ndarray, *, threshold: float | None = None
    ) -> Verification:
        """Compare two 16 kHz waveforms (N,) float32."""
        raw = embed_waveforms(self.model, [a, b], device=self.device)
        pairs = np.array([0]), np.array([1])
        cosine = cosine_scores(raw, raw, *pairs, mean=self.mean)
        asnorm = llr = None
        if self.cohort is not None:
            asnorm = as_norm(
                cosine, raw, raw, *pairs, self.cohort, top_n=self.top_n, mean=self.mean
            )
            if self.calibrator is not None:
                seconds = np.array([len(a), len(b)], dtype=np.float64) / self.model.sample_rate
                features = quality_features(
                    asnorm, raw, raw, seconds, seconds, pairs_e=pairs[0], pairs_t=pairs[1]
                )
                llr = float(self.calibrator.llr(features)[0])
            asnorm = float(asnorm[0])
        source = "given"
        if threshold is None and llr is not None:
            threshold, source = 0.0, "QMF calibration (LLR 0)"
        result = Verification(float(cosine[0]), asnorm, llr, threshold, source, None)
        if threshold is not None:
            result = dataclasses.replace(result, same=result.decision_score >= threshold)
        return result

    def verify_files(
        self, a: str | Path, b: str | Path, *, threshold: float | None = None
    ) -> Verification:
        """Compare two audio files (any format libsndfile reads, any rate)."""
        rate = self.model.sample_rate
        return self.verify_waveforms(
            load_audio(a, sample_rate=rate), load_audio(b, sample_rate=rate), threshold=threshold
        )
