"""Speaker segments: the ``Segment`` type, and turning labelled windows into segments.

Windows overlap (1.5 s long, 0.75 s apart); each overlapping stretch goes half to each
window, i.e. a window owns the time nearer its centre than any other window's centre.
Consecutive owned stretches of one speaker join into one segment (across a gap shorter
than ``max_gap``). :func:`clip_segments` cuts them back to the speech regions when the
windows were laid over regions joined across pauses (the pipeline drops segments shorter
than its ``min_segment`` after that cut).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, order=True)
class Segment:
    """One speaker's turn: [start, end) seconds from the start of the recording."""

    start: float
    end: float
    speaker: str

    @property
    def duration(self) -> float:
        return self.end - self.start

    def to_json(self) -> dict[str, float | str]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "speaker": self.speaker}


def owned_spans(windows: np.ndarray) -> np.ndarray:
    """(W, 2) sorted window [start, end) seconds -> (W, 2) the part each window owns.

    Where two consecutive windows overlap, the boundary is the midpoint of the overlap
    (equal windows: halfway between their centres); elsewhere a window owns all of itself.

    >>> owned_spans(np.array([[0.0, 1.5], [0.75, 2.25], [3.0, 4.5]])).tolist()
    [[0.0, 1.125], [1.125, 2.25], [3.0, 4.5]]
    """
    spans = np.array(windows, dtype=np.float64).reshape(-1, 2)
    if len(spans) < 2:
        return spans
    starts, ends = spans[1:, 0].copy(), spans[:-1, 1].copy()
    overlap = starts < ends
    middle = (starts + ends) / 2
    spans[1:, 0] = np.where(overlap, middle, starts)
    spans[:-1, 1] = np.where(overlap, middle, ends)
    return spans


def windows_to_segments(
    windows: np.ndarray,
    labels: Sequence[str],
    *,
    max_gap: float = 0.0,
) -> list[Segment]:
    """Labelled windows -> one speaker's segments, merged.

    Args:
        windows: (W, 2) window [start, end) seconds, sorted by start.
        labels: W speaker labels, one per window.
        max_gap: a silence shorter than this between two stretches of one speaker is
            bridged (seconds); 0 joins only touching stretches.

    >>> w = np.array([[0.0, 1.5], [0.75, 2.25], [1.5, 3.0], [4.0, 5.5]])
    >>> for s in windows_to_segments(w, ["A", "A", "B", "B"]):
    ...     print(s.start, s.end, s.speaker)
    0.0 1.875 A
    1.875 3.0 B
    4.0 5.5 B
    """
    if len(windows) != len(labels):
        raise ValueError(f"{len(windows)} windows but {len(labels)} labels")
    merged: list[list] = []
    for (start, end), label in zip(owned_spans(windows).tolist(), labels, strict=True):
        last = merged[-1] if merged else None
        if last is not None and last[2] == label and start - last[1] <= max_gap + 1e-9:
            last[1] = max(last[1], end)
        else:
            merged.append([start, end, label])
    return [Segment(a, b, s) for a, b, s in merged]


def clip_segments(segments: Sequence[Segment], regions: np.ndarray) -> list[Segment]:
    """The parts of ``segments`` (sorted by start, not overlapping) inside (R, 2) sorted
    speech regions; linear in both.

    >>> regions = np.array([[0.0, 1.0], [1.4, 3.0]])
    >>> for s in clip_segments([Segment(0.0, 2.0, "A"), Segment(2.0, 3.5, "B")], regions):
    ...     print(s.start, s.end, s.speaker)
    0.0 1.0 A
    1.4 2.0 A
    2.0 3.0 B
    """
    regions = np.asarray(regions, np.float64).reshape(-1, 2)
    clipped: list[Segment] = []
    first = 0  # the first region that ends after the current segment's start
    for segment in segments:
        while first < len(regions) and regions[first, 1] <= segment.start:
            first += 1
        k = first
        while k < len(regions) and regions[k, 0] < segment.end:
            start, end = max(segment.start, regions[k, 0]), min(segment.end, regions[k, 1])
            if end > start:
                clipped.append(Segment(float(start), float(end), segment.speaker))
            k += 1
    return clipped


def speech_regions_of(segments: Sequence[Segment]) -> np.ndarray:
    """(R, 2) sorted, merged [start, end) seconds where anyone speaks (oracle speech).

    >>> speech_regions_of([Segment(0, 2, "a"), Segment(1, 3, "b"), Segment(5, 6, "a")]).tolist()
    [[0.0, 3.0], [5.0, 6.0]]
    """
    regions: list[list[float]] = []
    for seg in sorted(segments):
        if regions and seg.start <= regions[-1][1]:
            regions[-1][1] = max(regions[-1][1], seg.end)
        elif seg.end > seg.start:
            regions.append([seg.start, seg.end])
    return np.array(regions, np.float64).reshape(-1, 2)
