"""Training curves as a PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from lapsv.files import atomic_path


def plot_training_curves(metrics_csv: Path, path: Path) -> None:
    """Loss, accuracy and validation EER per epoch for every system, as one PNG."""
    if not metrics_csv.exists():
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    systems = sorted({r["system"] for r in rows})
    panels = [("loss", "training loss"), ("accuracy", "training accuracy")]
    if any(r.get("val_eer") for r in rows):
        panels.append(("val_eer", "validation EER (%)"))
    figure, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4))
    for axis, (key, title) in zip(np.atleast_1d(axes), panels, strict=True):
        for name in systems:
            points = [
                (int(r["epoch"]), float(r[key])) for r in rows if r["system"] == name and r.get(key)
            ]
            if points:
                axis.plot(*zip(*points, strict=True), marker="o", label=name)
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    np.atleast_1d(axes)[0].legend()
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    plt.close(figure)
