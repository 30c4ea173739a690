"""Non-finite steps: detect them at the end of an accumulation window, in every process
alike, and roll the window back (gradients dropped, normalisation statistics restored)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lapsv.training.systems import System


def window_is_bad(system: System, accelerator: Any, *, clip: float) -> bool:
    """Whether the window that ends now had anything non-finite (loss, gradients,
    normalisation statistics) in any process. Clips the gradients to ``clip`` (if > 0)."""
    parameters = system.trainable()
    bad = system.window_bad
    norm = accelerator.clip_grad_norm_(parameters, clip) if clip > 0 else gradient_norm(parameters)
    # one device sync for all checks; with an fp16 loss scaler, infinite gradients are
    # routine (the scaler skips them), so only the statistics are checked then
    checks = [torch.isfinite(b).all() for b in system.buffers() if b.is_floating_point()]
    if accelerator.scaler is None and norm is not None:
        checks.append(torch.isfinite(norm).all())
    if checks and not bad:
        bad = not bool(torch.stack([c.to(checks[0].device) for c in checks]).all())
    return in_any_process(accelerator, bad)


def in_any_process(accelerator: Any, flag: bool) -> bool:
    """``flag`` of any process: every process takes the same decision."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(value, reduction="sum").item() > 0)


def drop_window(system: System) -> None:
    """Skip the step: no update, the buffers as before the window, the skip counted."""
    system.optimizer.zero_grad(set_to_none=True)
    with torch.no_grad():
        for buffer, saved in zip(system.buffers(), system.saved_buffers or [], strict=False):
            buffer.copy_(saved)
    system.skipped_total += 1
    system.skipped_in_row += 1


def take_step(system: System) -> None:
    """The optimizer step of a good window."""
    system.optimizer.step()
    system.optimizer.zero_grad(set_to_none=True)
    system.skipped_in_row = 0


def skip_message(system: System, step: int, limit: int) -> str:
    """The warning for step ``step`` of ``system`` skipped (``limit``: max_skipped_steps)."""
    return (
        f"{system.name}: step {step} skipped, non-finite loss or gradient "
        f"({system.skipped_in_row} in a row, {system.skipped_total} in this run; "
        f"training stops after {limit} in a row)"
    )


def stop_message(system: System, step: int, latest: Path | None) -> str:
    """Why training stops at step ``step``; ``latest``: the last checkpoint, kept."""
    kept = f"the last checkpoint, {latest}, is kept" if latest else "no checkpoint"
    return (
        f"{system.name}: {system.skipped_in_row} optimizer steps in a row had a "
        f"non-finite loss or gradient (up to step {step}); training stopped and {kept}. "
        "Lower optim.lr, check the data (lapsv data validate), or raise "
        "max_skipped_steps; rerunning resumes from the last checkpoint"
    )


def gradient_norm(parameters: list[torch.Tensor]) -> torch.Tensor | None:
    """L2 norm of all gradients (None without gradients); non-finite if any entry is."""
    grads = [p.grad.detach() for p in parameters if p.grad is not None]
    if not grads:
        return None
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
