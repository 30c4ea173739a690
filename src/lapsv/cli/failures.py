"""How every CLI verb reports the inputs it could not process."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def report_failures(failures: Sequence[tuple[str, str]]) -> int:
    if not failures:
        return 0
    print(f"{len(failures)} file(s) failed:", file=sys.stderr)
    for path, reason in failures:
        print(f"  {path}: {reason}", file=sys.stderr)
    return 1
