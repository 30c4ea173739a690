"""Dynamic batching: recordings of concurrent requests are embedded together, on one model.

The first recording to arrive waits up to ``max_wait_ms`` for others (or until
``max_batch`` are waiting), but only while recordings announced by requests
(:meth:`EmbeddingBatcher.expect`, called before an upload is decoded) are still to come:
a lone request never waits. Then all of them are embedded by one call of
:func:`lapsv.inference.embed_waveforms` (sorted by length, zero-padded, one forward pass per
``batch_size`` recordings) in the batcher's single worker thread, so the event loop never
blocks on inference and the model is only ever used by one thread. While a batch runs, the
next one gathers. lapsv's embeddings do not depend on what else is in the batch (padding is
masked), so a recording gets the embedding it would get alone, as ``lapsv embed`` gives it.
Work that uses the model outside a batch (a diarization: :meth:`EmbeddingBatcher.run`) runs
in the same thread, between batches.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from lapsv.inference import DEFAULT_MAX_SECONDS, Embedder, embed_waveforms

POLL_SECONDS = 0.001  # how often a gathering batch looks for more recordings
T = TypeVar("T")


@dataclasses.dataclass
class _Job:
    wave: np.ndarray
    future: asyncio.Future


class EmbeddingBatcher:
    """Embed 1-D waveforms from many coroutines in shared batches.

    Args:
        model: the embedder (a :class:`~lapsv.speaker.Speaker`); only this batcher's worker
            thread calls it.
        max_batch: most recordings gathered into one batch.
        batch_size: recordings per forward pass of the model (``lapsv embed --batch_size``).
        max_wait_ms: how long a batch's first recording waits for company.
        max_seconds: longer recordings are embedded in windows (as every lapsv verb).
        on_batch: called with (recordings, seconds) after each batch (metrics).

    Example:
        >>> import asyncio, lapsv
        >>> batcher = EmbeddingBatcher(lapsv.load_model("ge2e"))
        >>> async def two():
        ...     waves = [np.random.default_rng(s).normal(0, .1, 16000).astype("f4") for s in (0, 1)]
        ...     try:
        ...         return await asyncio.gather(*(batcher.embed(w) for w in waves))
        ...     finally:
        ...         await batcher.close()
        >>> [v.shape for v in asyncio.run(two())]
        [(256,), (256,)]
    """

    def __init__(
        self,
        model: Embedder,
        *,
        max_batch: int = 32,
        batch_size: int = 8,
        max_wait_ms: float = 5.0,
        max_seconds: float | None = DEFAULT_MAX_SECONDS,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if max_batch < 1 or batch_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and batch_size must be at least 1, max_wait_ms >= 0")
        self.model = model
        self.max_batch = max_batch
        self.batch_size = batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_seconds = max_seconds
        self.on_batch = on_batch
        self._pending: collections.deque[_Job] = collections.deque()
        self._running: list[_Job] = []  # the batch in the worker thread now
        self._expected = 0  # recordings announced by requests and not submitted yet
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        """Start the gathering task and the worker thread in the running event loop."""
        if self._task is None:
            self._wakeup = asyncio.Event()
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lapsv-embed")
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop: waiting recordings fail with CancelledError; the worker thread ends."""
        task, executor = self._task, self._executor
        self._task = self._executor = None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        for job in [*self._running, *self._pending]:
            job.future.cancel()
        self._pending.clear()
        if executor is not None:
            executor.shutdown(wait=True)

    def expect(self, count: int) -> None:
        """Announce ``count`` recordings that will be submitted soon (or, negative, that
        will not be after all): a gathering batch waits for them, up to ``max_wait_ms``."""
        self._expected = max(0, self._expected + count)

    async def embed(self, wave: np.ndarray) -> np.ndarray:
        """(E,) float32 raw embedding of a (N,) waveform at the model's sample rate."""
        return (await self.embed_many([wave]))[0]

    async def embed_many(
        self, waves: Sequence[np.ndarray], *, expected: int = 0
    ) -> list[np.ndarray]:
        """The embeddings of several waveforms, submitted together (``expected``: how many
        of them were announced with :meth:`expect`)."""
        await self.start()
        loop = asyncio.get_running_loop()
        jobs = [_Job(wave, loop.create_future()) for wave in waves]
        self.expect(-expected)
        self._pending.extend(jobs)
        self._wakeup.set()
        return list(await asyncio.gather(*(job.future for job in jobs)))

    async def run(self, work: Callable[[], T]) -> T:
        """``work()`` in the worker thread, between two batches, without gradients: for work
        that uses the model on its own (a diarization), so that the model is still only
        ever used by one thread. Batches that gather meanwhile wait for it."""
        await self.start()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, _without_gradients, work)

    async def _gather(self) -> list[_Job]:
        """Wait for a first recording, then up to ``max_wait`` for a full batch."""
        await self._wakeup.wait()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(self._pending) < self.max_batch and self._expected > 0 and loop.time() < deadline:
            await asyncio.sleep(POLL_SECONDS)
        jobs = [self._pending.popleft() for _ in range(min(self.max_batch, len(self._pending)))]
        if not self._pending:
            self._wakeup.clear()
        return [job for job in jobs if not job.future.done()]  # a cancelled request's: dropped

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = self._running = await self._gather()
            if not jobs:
                continue
            try:
                vectors = await loop.run_in_executor(
                    self._executor, self._embed, [job.wave for job in jobs]
                )
            except Exception as error:  # every request of the batch gets the error
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(error)
                continue
            for job, vector in zip(jobs, vectors, strict=True):
                if not job.future.done():
                    job.future.set_result(vector)

    def _embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """(len(waves), E): one call of the batch API, in the worker thread."""
        start = time.perf_counter()
        with torch.no_grad():
            vectors = embed_waveforms(
                self.model,
                waves,
                batch_size=self.batch_size,
                device=getattr(self.model, "device", "cpu"),
                max_seconds=self.max_seconds,
            )
        if self.on_batch is not None:
            self.on_batch(len(waves), time.perf_counter() - start)
        return vectors


def _without_gradients(work: Callable[[], T]) -> T:
    with torch.no_grad():
        return work()
