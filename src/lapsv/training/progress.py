"""How far an epoch got: running totals, and what a mid-epoch checkpoint carries."""

from __future__ import annotations

import dataclasses
import time

import torch


@dataclasses.dataclass
class EpochProgress:
    """How far an epoch got: what a mid-epoch checkpoint must carry to resume exactly.

    >>> progress = EpochProgress.start(0, ["a"])
    >>> progress.totals["a"]["count"], progress.skipped
    (0.0, {'a': 0})
    """

    epoch: int
    batches: int = 0  # micro-batches done (per process)
    seen: int = 0  # utterances seen (per process)
    seconds: float = 0.0
    totals: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    skipped: dict[str, int] = dataclasses.field(default_factory=dict)

    @classmethod
    def start(cls, epoch: int, names: list[str]) -> EpochProgress:
        totals = {n: {"loss": 0.0, "correct": 0.0, "count": 0.0} for n in names}
        return cls(epoch, totals=totals, skipped=dict.fromkeys(names, 0))

    def add(self, name: str, loss: float, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Count a micro-batch of system ``name`` with a finite mean ``loss``."""
        total = self.totals[name]
        total["loss"] += loss * len(labels)
        total["correct"] += float((logits.argmax(dim=-1) == labels).sum())
        total["count"] += len(labels)

    def postfix(
        self, name: str, *, started: float, lr: float, margin: float, processes: int
    ) -> dict[str, str]:
        """The progress bar's figures for system ``name`` (``started``: perf_counter time)."""
        main = self.totals[name]
        rate = self.seen / max(time.perf_counter() - started, 1e-9)
        return {
            "loss": f"{main['loss'] / max(main['count'], 1):.3f}",
            "acc": f"{main['correct'] / max(main['count'], 1):.1%}",
            "margin": f"{margin:.3f}",
            "lr": f"{lr:.1e}",
            "utt_s": f"{rate * processes:.0f}",
        }

    def stats(
        self,
        *,
        step: int,
        margin: float,
        lr: float,
        elapsed: float,
        processes: int,
        global_batch: int,
    ) -> dict[str, dict[str, float]]:
        """Per system: the epoch's metrics (mean loss and accuracy, schedules, speed)."""
        return {
            name: {
                "step": step,
                "loss": t["loss"] / max(t["count"], 1),
                "accuracy": t["correct"] / max(t["count"], 1),
                "margin": margin,
                "lr": lr,
                "seconds": elapsed,
                "utterances_per_second": self.seen * processes / max(elapsed, 1e-9),
                "global_batch": global_batch,
                "skipped_steps": self.skipped[name],
            }
            for name, t in self.totals.items()
        }
