"""Prometheus metrics of ``lapsv serve`` in the text exposition format (no client library).

``GET /metrics`` answers:

* ``lapsv_requests_total{route, method, status}``: requests answered;
* ``lapsv_request_seconds{route}``: latency histogram, first byte received to response sent;
* ``lapsv_batch_size`` and ``lapsv_batch_seconds``: recordings per model batch and its time;
* ``lapsv_requests_in_progress``: requests being served now.
"""

from __future__ import annotations

import bisect
import collections
import threading

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Histogram:
    """Cumulative-bucket histogram (Prometheus semantics: ``le`` buckets, sum, count)."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value

    def lines(self, name: str, labels: str = "") -> list[str]:
        out, total = [], 0
        bounds = [*(f"{b:g}" for b in self.buckets), "+Inf"]
        for bound, count in zip(bounds, self.counts, strict=True):
            total += count
            out.append(f'{name}_bucket{{{labels}{"," if labels else ""}le="{bound}"}} {total}')
        suffix = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{suffix} {self.sum:.6f}", f"{name}_count{suffix} {total}"]
        return out


class Metrics:
    """Counters and histograms of one server; thread-safe (the model runs in a thread).

    Example:
        >>> metrics = Metrics()
        >>> metrics.observe_request("/v1/verify", "POST", 200, 0.03)
        >>> 'lapsv_requests_total{route="/v1/verify",method="POST",status="200"} 1' in (
        ...     metrics.render())
        True
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self._latency: dict[str, Histogram] = {}
        self._batch_size = Histogram(BATCH_BUCKETS)
        self._batch_seconds = Histogram(LATENCY_BUCKETS)
        self._in_progress = 0

    def started(self) -> None:
        with self._lock:
            self._in_progress += 1

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """One answered request (``route`` is the route's template, not the raw path)."""
        with self._lock:
            self._requests[route, method, status] += 1
            self._latency.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def finished(self) -> None:
        with self._lock:
            self._in_progress -= 1

    def observe_batch(self, size: int, seconds: float) -> None:
        """One model batch of ``size`` recordings that took ``seconds``."""
        with self._lock:
            self._batch_size.observe(size)
            self._batch_seconds.observe(seconds)

    def render(self) -> str:
        """Everything, in the Prometheus text format (version 0.0.4)."""
        with self._lock:
            lines = [
                "# HELP lapsv_requests_total Requests answered, by route, method and status.",
                "# TYPE lapsv_requests_total counter",
            ]
            for (route, method, status), count in sorted(self._requests.items()):
                labels = f'route="{route}",method="{method}",status="{status}"'
                lines.append(f"lapsv_requests_total{{{labels}}} {count}")
            lines += [
                "# HELP lapsv_request_seconds Request latency in seconds, by route.",
                "# TYPE lapsv_request_seconds histogram",
            ]
            for route, histogram in sorted(self._latency.items()):
                lines += histogram.lines("lapsv_request_seconds", f'route="{route}"')
            lines += [
                "# HELP lapsv_batch_size Recordings embedded per model batch.",
                "# TYPE lapsv_batch_size histogram",
                *self._batch_size.lines("lapsv_batch_size"),
                "# HELP lapsv_batch_seconds Seconds per model batch.",
                "# TYPE lapsv_batch_seconds histogram",
                *self._batch_seconds.lines("lapsv_batch_seconds"),
                "# HELP lapsv_requests_in_progress Requests being served now.",
                "# TYPE lapsv_requests_in_progress gauge",
                f"lapsv_requests_in_progress {self._in_progress}",
            ]
        return "\n".join(lines) + "\n"
