"""A conversation's timeline as a PNG: reference speakers above the hypothesis's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lapsv.diarization.segments import Segment
from lapsv.scoring.plots import pyplot, save_figure


def plot_timeline(
    rows: Sequence[tuple[str, Sequence[Segment]]], path: str | Path, *, title: str = ""
) -> Path:
    """One horizontal band per (name, segments) row, top to bottom, a colour per speaker
    within each row (in order of first appearance), and a legend per row."""
    plt = pyplot()
    figure, axes = plt.subplots(len(rows), 1, figsize=(12, 1.2 + 1.1 * len(rows)), sharex=True)
    axes = [axes] if len(rows) == 1 else list(axes)
    colours = plt.get_cmap("tab10").colors
    end = max((s.end for _, segs in rows for s in segs), default=1.0)
    for axis, (name, segments) in zip(axes, rows, strict=True):
        speakers = list(dict.fromkeys(s.speaker for s in sorted(segments)))
        for index, speaker in enumerate(speakers):
            spans = [(s.start, s.duration) for s in segments if s.speaker == speaker]
            colour = colours[index % len(colours)]
            axis.broken_barh(spans, (0.1, 0.8), facecolors=colour, label=speaker)
        axis.set_yticks([0.5], [name])
        axis.set_ylim(0, 1)
        axis.set_xlim(0, end)
        axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
    axes[-1].set_xlabel("seconds")
    if title:
        axes[0].set_title(title)
    figure.tight_layout()
    return save_figure(figure, path)
