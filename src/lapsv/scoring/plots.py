"""DET curves and score histograms as PNG files (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import ModuleType

import numpy as np
from scipy.stats import norm

from lapsv.errors import ScoringError
from lapsv.files import atomic_path
from lapsv.scoring.metrics import _det, _eer, _validated

__all__ = ["plot_det", "plot_score_histogram", "pyplot", "save_figure"]

_TICKS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40)  # percent, axes from 0.05 % to 50 %
_LOW_TICKS = (0.01, 0.05, 0.2, 1, 2, 5, 10, 20, 40)  # axes from 0.01 %, when an EER < 1 %


def pyplot() -> ModuleType:
    """matplotlib.pyplot on the Agg backend, imported only when a plot is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _thin(x: np.ndarray, y: np.ndarray, *, step: float = 2e-3) -> tuple[np.ndarray, np.ndarray]:
    """Keep the points of a polyline where its length grows by ``step``, plus the ends."""
    length = np.r_[0.0, np.cumsum(np.hypot(np.diff(x), np.diff(y)))]
    keep = np.r_[True, np.diff(np.floor(length / step)) > 0]
    keep[-1] = True
    return x[keep], y[keep]


def save_figure(figure: object, path: str | Path) -> Path:
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")  # type: ignore[attr-defined]
    return path


def plot_det(
    scores: np.ndarray | None,
    labels: np.ndarray | None,
    path: str | Path,
    *,
    title: str | None = None,
    systems: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    name: str = "system",
) -> Path:
    """Write a DET plot (normal-deviate axes, ticks in %) with each system's EER marked.

    Args:
        scores, labels: (n,) scores and 1/0 labels of one system (called ``name``), or
            ``None`` when only ``systems`` are plotted.
        path: PNG file to write (atomically).
        systems: more curves on the same axes, name -> (scores, labels).
    """
    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if scores is not None:
        curves[name] = (scores, labels)  # type: ignore[assignment]
    curves.update(systems or {})
    if not curves:
        raise ScoringError("plot_det needs scores and labels, or systems")
    results = {}
    for system, (s, lab) in curves.items():
        curve = _det(*_validated(s, lab))
        results[system] = (curve, _eer(*curve))
    lowest = min(eer.rate for _, eer in results.values())
    low, ticks = (1e-4, _LOW_TICKS) if lowest < 0.01 else (5e-4, _TICKS)
    high = 0.5

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.4, 6.0))
    for system, ((p_miss, p_fa, _), eer) in results.items():
        x = norm.ppf(np.clip(p_fa, low / 10, 1 - low / 10))
        y = norm.ppf(np.clip(p_miss, low / 10, 1 - low / 10))
        x, y = _thin(x, y)
        (line,) = axis.plot(x, y, linewidth=1.6, label=f"{system} (EER {100 * eer.rate:.2f}%)")
        point = norm.ppf(np.clip(eer.rate, low / 10, 1 - low / 10))
        axis.plot(point, point, "o", color=line.get_color(), markersize=6)
    limits = (norm.ppf(0.9 * low), norm.ppf(high))
    axis.plot(limits, limits, ":", color="0.6", linewidth=0.8)
    positions = norm.ppf(np.array(ticks) / 100)
    labels_text = [f"{t:g}" for t in ticks]
    axis.set_xticks(positions, labels_text)
    axis.set_yticks(positions, labels_text)
    axis.set_xlim(*limits)
    axis.set_ylim(*limits)
    axis.set_xlabel("False alarm rate (%)")
    axis.set_ylabel("Miss rate (%)")
    axis.set_title(title or "DET curve")
    axis.grid(True, color="0.85", linewidth=0.6)
    axis.legend(loc="upper right", fontsize=9)
    figure.tight_layout()
    try:
        return save_figure(figure, path)
    finally:
        plt.close(figure)


def plot_score_histogram(
    scores: np.ndarray,
    labels: np.ndarray,
    path: str | Path,
    *,
    threshold: float | None = None,
    title: str | None = None,
) -> Path:
    """Write overlaid target / non-target score densities, with an optional threshold line."""
    scores, is_target = _validated(scores, labels)
    edges = np.linspace(scores.min(), scores.max(), 101)
    if edges[0] == edges[-1]:
        edges = np.linspace(edges[0] - 0.5, edges[0] + 0.5, 101)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7.0, 4.5))
    n_target = int(is_target.sum())
    axis.hist(
        scores[~is_target],
        bins=edges,
        density=True,
        alpha=0.55,
        color="tab:red",
        label=f"non-target ({scores.size - n_target:,})",
    )
    axis.hist(
        scores[is_target],
        bins=edges,
        density=True,
        alpha=0.55,
        color="tab:blue",
        label=f"target ({n_target:,})",
    )
    if threshold is not None:
        axis.axvline(threshold, color="black", linestyle="--", linewidth=1.2)
        axis.plot([], [], "k--", label=f"threshold {threshold:.3f}")
    axis.set_xlabel("score")
    axis.set_ylabel("density")
    axis.set_title(title or "Score distributions")
    axis.grid(True, color="0.9", linewidth=0.6)
    axis.legend(fontsize=9)
    figure.tight_layout()
    try:
        return save_figure(figure, path)
    finally:
        plt.close(figure)
