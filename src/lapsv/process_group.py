"""Leaving the process group of an ``accelerate launch`` / ``torchrun`` job cleanly.

A process that exits with its gloo process group still alive can abort at interpreter
shutdown ("terminate called without an active exception", SIGABRT): gloo's worker threads
still hold tensors whose release needs the interpreter that is being torn down. The group
is therefore destroyed from an ``atexit`` handler, while the interpreter is whole. Work in
the process (training, extraction, several in a row) keeps the group until then.
"""

from __future__ import annotations

import atexit

import torch.distributed

_REGISTERED: list[bool] = []


def leave_process_group_at_exit() -> None:
    """Destroy the default process group (if one is still alive) when the process exits.

    Call it once the group is joined; calling it again does nothing.
    """
    if not _REGISTERED:
        atexit.register(_leave_process_group)
        _REGISTERED.append(True)


def _leave_process_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
