"""Learning rate and AAM margin as pure functions of the optimizer step (resuming needs
only the step)."""

from __future__ import annotations

import math

from lapsv.losses import margin_at_step
from lapsv.training.config import TrainConfig


def schedules_at(
    step: int, config: TrainConfig, *, steps_per_epoch: int, total_steps: int
) -> tuple[float, float]:
    """(learning rate, margin) at optimizer step ``step`` of a run of ``total_steps``.

    >>> schedules_at(0, TrainConfig(), steps_per_epoch=10, total_steps=100)
    (0.0001, 0.0)
    """
    optim, loss = config.optim, config.loss
    lr = lr_at_step(
        step,
        total_steps=total_steps,
        lr=optim.lr,
        final_lr=optim.final_lr,
        warmup_fraction=optim.warmup_fraction,
    )
    margin = margin_at_step(
        step,
        final_margin=loss.margin,
        ramp_steps=int(loss.margin_ramp_epochs * steps_per_epoch),
        initial_margin=loss.initial_margin,
        shape=loss.margin_ramp_shape,
    )
    return lr, margin


def lr_at_step(
    step: int, *, total_steps: int, lr: float, final_lr: float, warmup_fraction: float
) -> float:
    """Linear warm-up to ``lr`` over the first ``warmup_fraction`` of steps, then cosine to
    ``final_lr`` at ``total_steps``.

    >>> [round(lr_at_step(s, total_steps=10, lr=1.0, final_lr=0.0, warmup_fraction=0.2), 3)
    ...  for s in (0, 1, 2, 6, 10)]
    [0.5, 1.0, 1.0, 0.5, 0.0]
    """
    warmup = round(total_steps * warmup_fraction)
    if step < warmup:
        return lr * (step + 1) / warmup
    span = max(total_steps - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return final_lr + 0.5 * (lr - final_lr) * (1.0 + math.cos(math.pi * progress))
