"""The limits of ``lapsv serve`` and the per-key bookkeeping that enforces two of them.

Every limit answers with a 4xx JSON error that says which limit and its value:

=====================  =========  ==========================================================
limit                  default    answer when exceeded
=====================  =========  ==========================================================
``max_body_mb``        20 MB      413: the request body (all uploads together) is too large
``max_audio_seconds``  300 s      413: the request's audio (all uploads together) is longer
``max_concurrent``     8          429: this key already has that many requests in progress
``rate_limit``         600 / min  429 + Retry-After: this key made that many in the last 60 s
=====================  =========  ==========================================================
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time

RATE_WINDOW = 60.0  # seconds of the sliding window of ``rate_limit``


@dataclasses.dataclass(frozen=True)
class Limits:
    """max_body_mb: request body size in MB (10^6 bytes); max_audio_seconds: the audio of
    one request, all uploads together; max_concurrent: requests in progress per key;
    rate_limit: requests per key in any 60 s (0: no rate limit)."""

    max_body_mb: float = 20.0
    max_audio_seconds: float = 300.0
    max_concurrent: int = 8
    rate_limit: int = 600

    def __post_init__(self) -> None:
        if not (self.max_body_mb > 0 and self.max_audio_seconds > 0):
            raise ValueError("max_body_mb and max_audio_seconds must be positive")
        if self.max_concurrent < 1 or self.rate_limit < 0:
            raise ValueError("max_concurrent must be at least 1 and rate_limit at least 0")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1_000_000)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """A request turned away: HTTP status, message, and Retry-After seconds (or None)."""

    status: int
    message: str
    retry_after: int | None = None


class KeyLimiter:
    """Per-key concurrency and sliding-window rate limits.

    Used from the event loop only (no lock). Memory is bounded: at most ``rate_limit``
    timestamps per key, and keys come from the keys file.

    Example:
        >>> limiter = KeyLimiter(Limits(max_concurrent=1, rate_limit=2))
        >>> limiter.admit("k", now=0.0) is None, limiter.admit("k", now=0.1).status
        (True, 429)
        >>> limiter.release("k"); limiter.admit("k", now=0.2) is None
        True
        >>> limiter.release("k"); limiter.admit("k", now=0.3).retry_after
        60
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._active: collections.Counter[str] = collections.Counter()
        self._recent: dict[str, collections.deque[float]] = {}

    def admit(self, key: str, *, now: float | None = None) -> Refusal | None:
        """Count a new request of ``key``, or say why it is refused (then nothing counts)."""
        now = time.monotonic() if now is None else now
        limits = self.limits
        if self._active[key] >= limits.max_concurrent:
            return Refusal(
                429,
                f"too many concurrent requests: this key already has {self._active[key]} in "
                f"progress (the limit is {limits.max_concurrent}); wait for an answer first",
                1,
            )
        if limits.rate_limit:
            recent = self._recent.setdefault(key, collections.deque())
            while recent and recent[0] <= now - RATE_WINDOW:
                recent.popleft()
            if len(recent) >= limits.rate_limit:
                wait = max(1, math.ceil(recent[0] + RATE_WINDOW - now))
                return Refusal(
                    429,
                    f"rate limit: {limits.rate_limit} requests per minute per key; "
                    f"retry in {wait} s",
                    wait,
                )
            recent.append(now)
        self._active[key] += 1
        return None

    def release(self, key: str) -> None:
        """A request of ``key`` admitted by :meth:`admit` has ended."""
        self._active[key] -= 1
        if self._active[key] <= 0:
            del self._active[key]

    def active(self) -> int:
        """Requests in progress, all keys together."""
        return sum(self._active.values())
