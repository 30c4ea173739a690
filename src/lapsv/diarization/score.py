"""Diarization error rate (DER) and Jaccard error rate (JER) with pyannote.metrics.

DER = (missed speech + false alarm + speaker confusion) / reference speech, after the
optimal mapping of hypothesis speakers to reference speakers; overlapped speech is scored.
``collar`` is pyannote's: the total width of the no-score zone around each reference
boundary, so ``collar=0.5`` is md-eval's ``-c 0.25`` (±0.25 s).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Mapping

from lapsv.diarization.segments import Segment

STANDARD_COLLARS = (0.5, 0.0)  # md-eval -c 0.25 (pyannote 0.5), and no collar


@dataclasses.dataclass(frozen=True)
class DiarizationScore:
    """Seconds of each error, of reference speech, and the rates (%)."""

    collar: float
    speech: float
    missed: float
    false_alarm: float
    confusion: float
    jer: float

    @property
    def der(self) -> float:
        """DER in % of reference speech."""
        return 100.0 * (self.missed + self.false_alarm + self.confusion) / max(self.speech, 1e-9)

    def to_json(self) -> dict[str, float]:
        share = 100.0 / max(self.speech, 1e-9)
        return {
            "collar": self.collar,
            "DER %": round(self.der, 2),
            "missed %": round(share * self.missed, 2),
            "false alarm %": round(share * self.false_alarm, 2),
            "confusion %": round(share * self.confusion, 2),
            "JER %": round(self.jer, 2),
            "speech seconds": round(self.speech, 2),
        }


def _annotation(file_id: str, segments: Iterable[Segment]):
    from pyannote.core import Annotation
    from pyannote.core import Segment as Span

    annotation = Annotation(uri=file_id)
    for track, seg in enumerate(segments):
        if seg.end > seg.start:
            annotation[Span(seg.start, seg.end), track] = seg.speaker
    return annotation


def score_diarization(
    reference: Mapping[str, list[Segment]],
    hypothesis: Mapping[str, list[Segment]],
    *,
    collar: float = 0.5,
    durations: Mapping[str, float] | None = None,
) -> tuple[DiarizationScore, dict[str, DiarizationScore]]:
    """Overall and per-file scores of the files of ``reference`` (missing hypotheses count
    as all missed).

    Args:
        collar: pyannote's total collar width in seconds (0.5 = ±0.25 s).
        durations: file id -> seconds, the scored extent (default: pyannote's estimate, the
            extent of reference and hypothesis).

    >>> ref = {"a": [Segment(0.0, 10.0, "x"), Segment(10.0, 20.0, "y")]}
    >>> hyp = {"a": [Segment(0.0, 12.0, "s0"), Segment(12.0, 20.0, "s1")]}
    >>> round(score_diarization(ref, hyp, collar=0.0)[0].der, 2)  # 2 s confused of 20
    10.0
    """
    # pyannote.metrics is imported here: it loads pandas and sklearn, which only scoring needs
    from pyannote.core import Segment as Span
    from pyannote.core import Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate, JaccardErrorRate

    der = DiarizationErrorRate(collar=collar, skip_overlap=False)
    jer = JaccardErrorRate(collar=collar, skip_overlap=False)
    per_file: dict[str, DiarizationScore] = {}
    for file_id, segments in reference.items():
        ref = _annotation(file_id, segments)
        hyp = _annotation(file_id, hypothesis.get(file_id, []))
        uem = None
        if durations is not None and file_id in durations:
            uem = Timeline([Span(0.0, float(durations[file_id]))], uri=file_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "UEM approximated by the extent": documented
            parts = der(ref, hyp, uem=uem, detailed=True)
            jer_value = jer(ref, hyp, uem=uem)
        per_file[file_id] = DiarizationScore(
            collar,
            parts["total"],
            parts["missed detection"],
            parts["false alarm"],
            parts["confusion"],
            100.0 * jer_value,
        )
    overall = DiarizationScore(
        collar,
        der.accumulated_["total"],
        der.accumulated_["missed detection"],
        der.accumulated_["false alarm"],
        der.accumulated_["confusion"],
        100.0 * abs(jer),
    )
    return overall, per_file
