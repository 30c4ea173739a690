"""Fail points: deterministic crashes for the tests that prove training survives them.

``LAPSV_FAILPOINT=<name>:<step>`` makes the process kill itself with SIGKILL (no clean-up,
no ``finally``, exactly like a power cut or the OOM killer) when it reaches fail point
``name`` at optimizer step ``step``. Unset, a fail point costs one dictionary look-up.

Fail points: ``after-step`` (step done, its checkpoint if any written), ``in-checkpoint``
(inside the writing of the checkpoint of that step, some of its files written).
"""

from __future__ import annotations

import os
import signal

FAILPOINT_ENV = "LAPSV_FAILPOINT"


def failpoint(name: str, step: int) -> None:
    """SIGKILL this process if ``LAPSV_FAILPOINT`` names this point and step."""
    wanted = os.environ.get(FAILPOINT_ENV)
    if wanted and wanted == f"{name}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)
