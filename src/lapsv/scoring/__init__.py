"""Scoring back end, METHOD.md §6: metrics, trial lists, cosine + AS-norm, QMF calibration.

The one scoring path (cosine -> AS-norm -> QMF) is :mod:`lapsv.scoring.state`; trial-list
evaluation is :mod:`lapsv.scoring.evaluate` (imported on its own: it loads models).

Plot functions import matplotlib only when they draw.
"""

from lapsv.scoring.calibrate import (
    FEATURE_NAMES,
    QMFCalibrator,
    quality_features,
    sample_calibration_pairs,
)
from lapsv.scoring.metrics import (
    DCF,
    EER,
    actual_dcf,
    cllr,
    compute_metrics,
    det_curve,
    equal_error_rate,
    min_dcf,
)
from lapsv.scoring.norm import (
    as_norm,
    average_models,
    center_and_normalize,
    cosine_scores,
    embedding_mean,
    enroll_models,
    length_normalize,
    speaker_cohort,
    subtract_mean,
)
from lapsv.scoring.plots import plot_det, plot_score_histogram
from lapsv.scoring.trials import (
    Trials,
    read_enrollment_map,
    read_scores,
    read_trials,
    write_scores,
)

__all__ = [
    "DCF",
    "EER",
    "FEATURE_NAMES",
    "QMFCalibrator",
    "Trials",
    "actual_dcf",
    "as_norm",
    "average_models",
    "center_and_normalize",
    "cllr",
    "compute_metrics",
    "cosine_scores",
    "det_curve",
    "embedding_mean",
    "enroll_models",
    "equal_error_rate",
    "length_normalize",
    "min_dcf",
    "plot_det",
    "plot_score_histogram",
    "quality_features",
    "read_enrollment_map",
    "read_scores",
    "read_trials",
    "sample_calibration_pairs",
    "speaker_cohort",
    "subtract_mean",
    "write_scores",
]
