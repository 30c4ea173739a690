"""Clips of one speaker become corpus items: short clips joined, long clips cut.

Clips shorter than ``join_below`` (letters, words) are joined, with ``gap`` seconds of
silence between them, into items of one speaker; clips over ``split_above`` are cut into
``piece_min``-``piece_max`` s pieces at their quietest points.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from lapsv.audio import SAMPLE_RATE
from lapsv.demo.clips import Clip


@dataclasses.dataclass(frozen=True)
class ItemLengths:
    """How clips become items (seconds)."""

    join_below: float = 3.0  # shorter clips are joined with others of the speaker
    join_target: float = 4.0  # a joined item is closed once it is this long
    max_joined: float = 8.0
    gap: float = 0.25  # silence between joined clips
    split_above: float = 20.0  # longer clips are cut into pieces
    piece_min: float = 4.0
    piece_max: float = 12.0


def make_items(
    clips: Sequence[Clip], lengths: ItemLengths = ItemLengths()
) -> list[tuple[np.ndarray, list[tuple[int, str, float, float]]]]:
    """Turn the clips of one speaker into items.

    Returns:
        (waveform, pieces) per item; a piece is (source index, path, start, end) with
        start/end in seconds of the original file.
    """
    rate = SAMPLE_RATE
    gap = np.zeros(int(lengths.gap * rate), np.float32)
    items: list[tuple[list[np.ndarray], list]] = []
    open_at = last_joined = None  # indices into items

    def samples(at: int) -> int:
        return sum(len(w) for w in items[at][0])

    for clip in clips:
        if clip.seconds > lengths.split_above:
            for a, b in split_points(clip.wave, lengths):
                start = clip.offset + a / rate
                piece = (clip.source, clip.rel, start, start + (b - a) / rate)
                items.append(([clip.wave[a:b]], [piece]))
            continue
        piece = (clip.source, clip.rel, clip.offset, clip.offset + clip.seconds)
        if clip.seconds >= lengths.join_below:
            items.append(([clip.wave], [piece]))
            continue
        if open_at is None:
            open_at = len(items)
            items.append(([], []))
        waves, pieces = items[open_at]
        waves += [gap, clip.wave] if waves else [clip.wave]
        pieces.append(piece)
        if samples(open_at) >= lengths.join_target * rate:
            last_joined, open_at = open_at, None
    if open_at is not None and samples(open_at) < lengths.join_below * rate:
        waves, pieces = items.pop(open_at)  # the remainder joins the last joined item if it fits
        if last_joined is not None:
            total = samples(last_joined) + len(gap) + sum(len(w) for w in waves)
            if total <= lengths.max_joined * rate:
                items[last_joined][0].extend([gap, *waves])
                items[last_joined][1].extend(pieces)
    return [(np.concatenate(waves), pieces) for waves, pieces in items]


def split_points(wave: np.ndarray, lengths: ItemLengths = ItemLengths()) -> list[tuple[int, int]]:
    """(start, end) samples of pieces of ``piece_min``-``piece_max`` s, cut at the
    quietest 20 ms within the allowed range.

    >>> pieces = split_points(np.random.default_rng(0).normal(size=16000 * 30))
    >>> all(4 * 16000 <= b - a <= 12 * 16000 for a, b in pieces), pieces[-1][1]
    (True, 480000)
    """
    rate, window = SAMPLE_RATE, SAMPLE_RATE // 50
    power = np.convolve(wave.astype(np.float64) ** 2, np.ones(window) / window, mode="same")
    low, high = int(lengths.piece_min * rate), int(lengths.piece_max * rate)
    cuts, start = [], 0
    while len(wave) - start > high:
        lo, hi = start + low, min(start + high, len(wave) - low)
        cut = lo + int(np.argmin(power[lo : hi + 1]))
        cuts.append((start, cut))
        start = cut
    cuts.append((start, len(wave)))
    return cuts
