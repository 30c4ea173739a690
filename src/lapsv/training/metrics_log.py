"""Per-epoch metrics of a run: metrics.csv (rewritten whole) and TensorBoard scalars."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from lapsv.files import atomic_write_text

METRIC_FIELDS = (
    "epoch",
    "system",
    "step",
    "loss",
    "accuracy",
    "margin",
    "lr",
    "seconds",
    "utterances_per_second",
    "global_batch",
    "skipped_steps",
    "val_eer",
    "val_min_dcf_0.01",
)


def write_metrics(path: Path, histories: dict[str, list[dict[str, Any]]]) -> None:
    """``path`` (metrics.csv) rewritten whole from the histories a checkpoint holds
    (system name -> one dict per epoch), atomically: after any interruption it lists
    exactly the epochs the run will not redo. Rows by epoch, then system order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_FIELDS, extrasaction="ignore")
    writer.writeheader()
    rows = [(h["epoch"], n, name, h) for n, (name, hs) in enumerate(histories.items()) for h in hs]
    for epoch, _, name, values in sorted(rows, key=lambda row: row[:2]):
        writer.writerow({**values, "epoch": epoch, "system": name})
    atomic_write_text(path, buffer.getvalue())


def log_tensorboard(folder: Path, epoch: int, stats: dict[str, dict[str, float]]) -> None:
    """Scalars ``system/metric`` at step ``epoch + 1``; nothing without tensorboard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional at run time
        return
    with SummaryWriter(str(folder)) as writer:
        for name, values in stats.items():
            for key, value in values.items():
                writer.add_scalar(f"{name}/{key}", value, epoch + 1)
