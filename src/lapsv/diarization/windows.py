"""Embedding windows inside speech regions.

Each speech region is covered by windows of ``window`` seconds every ``hop`` seconds, the
last one ending at the region's end (so no window is a short leftover); a region shorter
than ``window`` is one window of its own length, widened to ``min_window`` inside the
recording when shorter than that (too little audio for an embedding).
:func:`bridged_regions` joins regions across short pauses first, so that a window holds
the words on both sides of a pause.
"""

from __future__ import annotations

import math

import numpy as np

from lapsv.errors import ConfigError


def window_spans(
    regions: np.ndarray,
    *,
    window: float = 1.5,
    hop: float = 0.75,
    min_window: float = 0.5,
    duration: float | None = None,
) -> np.ndarray:
    """(R, 2) speech [start, end) seconds -> (W, 2) window [start, end) seconds, sorted.

    Args:
        regions: sorted, non-overlapping speech regions.
        window, hop: window length and step (seconds).
        min_window: shorter windows are widened to this, centred, inside [0, duration].
        duration: the recording's length (seconds); default: the last region's end.

    >>> window_spans(np.array([[0.0, 3.0], [4.0, 4.4]]), duration=5.0).tolist()
    [[0.0, 1.5], [0.75, 2.25], [1.5, 3.0], [3.95, 4.45]]
    """
    if not (window > 0 and 0 < hop <= window):
        raise ConfigError(f"need window > 0 and 0 < hop <= window, got {window} and {hop}")
    regions = np.asarray(regions, np.float64).reshape(-1, 2)
    end_of_audio = float(regions[-1, 1]) if duration is None and len(regions) else duration
    spans: list[tuple[float, float]] = []
    for start, end in regions.tolist():
        length = end - start
        if length <= window:
            spans.append(_widened(start, end, min_window, end_of_audio or end))
            continue
        count = math.ceil((length - window) / hop - 1e-9) + 1
        starts = [start + i * hop for i in range(count - 1)] + [end - window]
        spans.extend((s, s + window) for s in starts)
    return np.round(np.array(spans, np.float64).reshape(-1, 2), 6)


def _widened(start: float, end: float, min_window: float, duration: float) -> tuple[float, float]:
    missing = min_window - (end - start)
    if missing <= 0:
        return start, end
    start, end = start - missing / 2, end + missing / 2
    if start < 0:
        start, end = 0.0, min(duration, end - start)
    elif end > duration:
        start, end = max(0.0, start - (end - duration)), duration
    return start, end


def bridged_regions(regions: np.ndarray, gap: float) -> np.ndarray:
    """(R, 2) sorted speech [start, end) seconds -> the same joined across every pause
    shorter than ``gap`` seconds (0: unchanged).

    >>> bridged_regions(np.array([[0.0, 1.0], [1.3, 2.0], [3.0, 4.0]]), 0.5).tolist()
    [[0.0, 2.0], [3.0, 4.0]]
    """
    regions = np.asarray(regions, np.float64).reshape(-1, 2)
    if gap <= 0 or len(regions) < 2:
        return regions
    first = np.r_[True, regions[1:, 0] - regions[:-1, 1] >= gap]  # starts a joined region
    starts = np.flatnonzero(first)
    return np.stack([regions[starts, 0], np.maximum.reduceat(regions[:, 1], starts)], axis=1)
