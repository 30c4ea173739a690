"""Embedding windows inside speech regions.

Each speech region is covered by windows of ``window`` seconds every ``hop`` seconds, the
last one ending at the region's end (so no window is a short leftover); a region shorter
than ``window`` is one window of its own length, widened to ``min_window`` inside the
recording when shorter than that (too little audio for an embedding).
:func:`bridged_regions` joins regions across short pauses first, so that a window holds
the words on both sides of a pause.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

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


@dataclasses.dataclass(frozen=True)
class ScaledWindows:
    """Embedding windows of one length over the speech, each with the windows of other
    (longer) lengths whose centres are nearest to it: the scales of NeMo's multi-scale
    diarization. A longer window holds more of a voice (a steadier embedding, a clearer
    speaker count); the base window keeps the time resolution.

    spans: (M, 2) every distinct window of every scale, sorted by start (seconds): each is
        embedded once.
    rows: (S, W) the row of ``spans`` of each base window at each of S scales (scale 0:
        the base window itself).
    """

    spans: np.ndarray
    rows: np.ndarray

    @property
    def windows(self) -> np.ndarray:
        """(W, 2) the base windows (seconds); labels and segments are theirs."""
        return self.spans[self.rows[0]]

    def longer(self, embeddings: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """For each longer scale: the (W, 2) windows nearest the base windows and their
        (W, E) rows of ``embeddings``, the (M, E) embeddings of ``spans``."""
        return [(self.spans[rows], embeddings[rows]) for rows in self.rows[1:]]


def scaled_windows(
    regions: np.ndarray,
    *,
    window: float,
    hop: float,
    longer: Sequence[float] = (),
    duration: float | None = None,
) -> ScaledWindows:
    """:func:`window_spans` of (R, 2) speech regions at ``window`` and at each ``longer``
    length (same ``hop``).

    >>> scaled = scaled_windows(np.array([[0.0, 3.0]]), window=1.5, hop=0.75, longer=[3.0])
    >>> scaled.spans.tolist(), scaled.rows.tolist()
    ([[0.0, 1.5], [0.0, 3.0], [0.75, 2.25], [1.5, 3.0]], [[0, 2, 3], [1, 1, 1]])
    """
    scales = [
        window_spans(regions, window=length, hop=hop, duration=duration)
        for length in (window, *longer)
    ]
    spans, row_of = np.unique(np.concatenate(scales), axis=0, return_inverse=True)
    row_of = row_of.reshape(-1)
    firsts = np.cumsum([len(s) for s in scales[:-1]])  # where each longer scale starts
    base = scales[0]
    rows = [row_of[: len(base)]]
    for first, scale in zip(firsts, scales[1:], strict=True):
        rows.append(row_of[first + nearest_windows(base, scale)])
    return ScaledWindows(spans, np.stack(rows))


def nearest_windows(windows: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(W,) row of the window of (M, 2) ``others`` whose centre is nearest the centre of
    each of (W, 2) ``windows`` (the first of two as near). O((W + M) log M).

    >>> windows, others = np.array([[0.0, 1.0], [2.0, 3.0]]), np.array([[0.0, 3.0], [2.0, 4.0]])
    >>> nearest_windows(windows, others).tolist()
    [0, 1]
    """
    centres = others.mean(axis=1)
    order = np.argsort(centres, kind="stable")
    ordered = centres[order]
    wanted = windows.mean(axis=1)
    after = np.searchsorted(ordered, wanted).clip(0, len(ordered) - 1)
    before = (after - 1).clip(0)
    nearer = np.abs(ordered[before] - wanted) <= np.abs(ordered[after] - wanted)
    return order[np.where(nearer, before, after)]
