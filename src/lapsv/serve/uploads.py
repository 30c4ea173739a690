"""What the service's verbs take and raise: an upload, a decoded upload, a ServiceError."""

from __future__ import annotations

import dataclasses
from pathlib import PurePosixPath

import numpy as np


class ServiceError(Exception):
    """A request the service answers with an error: HTTP ``status`` and a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclasses.dataclass(frozen=True)
class Upload:
    """One uploaded recording: its form field (named in errors), the client's file name
    (shown only) and its bytes."""

    field: str
    filename: str
    data: bytes


@dataclasses.dataclass(frozen=True)
class Decoded:
    upload: Upload
    wave: np.ndarray
    seconds: float
    key: str  # SHA-256 of the uploaded bytes, as `lapsv enroll` keys a file


def display_name(filename: str | None, fallback: str) -> str:
    """A client's file name for display: its last component, printable, at most 100 chars."""
    name = PurePosixPath((filename or "").replace("\\", "/")).name
    name = "".join(c for c in name if c.isprintable())[:100]
    return name or fallback
