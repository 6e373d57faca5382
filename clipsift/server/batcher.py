"""Micro-batching: concurrent requests' items go through one model call together.

Each `MicroBatcher` owns one worker thread and a queue. A request submits its items
(texts, preprocessed images, query vectors) and awaits a future. The worker takes the first
waiting job, then keeps collecting jobs for `window_ms` or until `max_batch` items are
gathered, calls `fn(all_items)` ONCE, and hands each job its slice of the results. With
batching off, the worker runs each job alone (one call per request, in arrival order),
which is the baseline the benchmark compares against.

If a merged call fails, each job of the batch is retried alone, so one bad request cannot
fail its neighbours. A full queue raises `Overloaded` at once (the server answers 503).

    >>> b = MicroBatcher(lambda xs: [x * 2 for x in xs], name="double", window_ms=5)
    >>> await b.submit([1, 2])        # -> [2, 4]
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from clipsift.errors import Overloaded

T = TypeVar("T")
R = TypeVar("R")



@dataclass
class _Job(Generic[T, R]):
    items: list[T]
    future: Future = field(default_factory=Future)


@dataclass
class BatchStats:
    """Counters a batcher keeps (also exported as Prometheus metrics by the server)."""

    calls: int = 0
    items: int = 0
    jobs: int = 0
    largest: int = 0


class MicroBatcher(Generic[T, R]):
    """Collect items from concurrent callers and process them in shared calls.

    Args:
        fn: processes a list of items and returns one result per item, in order.
        name: label for metrics and the worker thread.
        window_ms: how long the first job of a batch waits for others.
        max_batch: most items per call (a single larger job still runs, alone).
        max_queue: most items waiting; more raises `Overloaded`.
        enabled: False runs one job per call (no merging).
        on_batch: called after each call with (items, jobs, seconds).
    """

    def __init__(self, fn: Callable[[list[T]], Sequence[R]], *, name: str,
                 window_ms: float = 5.0, max_batch: int = 64, max_queue: int = 4096,
                 enabled: bool = True,
                 on_batch: Callable[[int, int, float], None] | None = None) -> None:
        self.fn = fn
        self.name = name
        self.window = max(0.0, window_ms) / 1000.0
        self.max_batch = max(1, max_batch)
        self.max_queue = max(1, max_queue)
        self.enabled = enabled
        self.on_batch = on_batch
        self.stats = BatchStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._carry: _Job | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Items submitted and not yet finished."""
        return self._pending

    # ---- callers ------------------------------------------------------------------------
    def submit_future(self, items: Sequence[T]) -> Future:
        """Queue `items`; the returned future resolves to their results (list, in order)."""
        job: _Job[T, R] = _Job(list(items))
        if not job.items:
            job.future.set_result([])
            return job.future
        with self._lock:
            if self._closed:
                raise Overloaded(f"the {self.name} batcher is shut down")
            if self._pending + len(job.items) > self.max_queue and self._pending > 0:
                raise Overloaded(f"server busy: {self._pending} {self.name} items queued; "
                                 "retry shortly")
            self._pending += len(job.items)
        self._queue.put(job)
        return job.future

    async def submit(self, items: Sequence[T]) -> list[R]:
        """Queue `items` and wait for their results without blocking the event loop."""
        return await asyncio.wrap_future(self.submit_future(items))

    def run(self, items: Sequence[T]) -> list[R]:
        """Blocking form of `submit` (for threads)."""
        return self.submit_future(items).result()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the queued jobs; new submits raise `Overloaded`."""
        with self._lock:
            self._closed = True
        self._queue.put(None)
        self._thread.join(timeout)

    # ---- worker -------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._collect()
            if batch is None:
                return
            self._process(batch)

    def _next(self, timeout: float | None) -> _Job | None:
        if self._carry is not None:
            job, self._carry = self._carry, None
            return job
        if timeout is None:
            return self._queue.get()
        return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()

    def _collect(self) -> list[_Job] | None:
        """Block for a first job, then gather more until the window closes or it is full."""
        first = self._next(None)
        if first is None:
            return None
        batch, size = [first], len(first.items)
        if not self.enabled:
            return batch
        deadline = time.monotonic() + self.window
        while size < self.max_batch:
            try:
                job = self._next(deadline - time.monotonic())
            except queue.Empty:
                break
            if job is None:  # shutting down: finish this batch, then stop
                self._queue.put(None)
                break
            if size + len(job.items) > self.max_batch:
                self._carry = job  # first in the next batch
                break
            batch.append(job)
            size += len(job.items)
        return batch

    def _process(self, batch: list[_Job]) -> None:
        live = []
        for job in batch:  # a job whose caller gave up (timeout) is dropped here
            if job.future.set_running_or_notify_cancel():
                live.append(job)
            else:
                with self._lock:
                    self._pending -= len(job.items)
        if live:
            self._execute(live)

    def _execute(self, batch: list[_Job]) -> None:
        items = [x for job in batch for x in job.items]
        start = time.perf_counter()
        try:
            results = list(self.fn(items))
            if len(results) != len(items):
                raise RuntimeError(f"{self.name}: fn returned {len(results)} results "
                                   f"for {len(items)} items")
        except BaseException as exc:  # isolate the failing job(s): retry alone
            if len(batch) == 1:
                self._finish(batch[0], None, exc)
            else:
                for job in batch:
                    self._execute([job])
            return
        self._record(len(items), len(batch), time.perf_counter() - start)
        pos = 0
        for job in batch:
            n = len(job.items)
            self._finish(job, results[pos : pos + n], None)
            pos += n

    def _finish(self, job: _Job, results: list | None, exc: BaseException | None) -> None:
        with self._lock:
            self._pending -= len(job.items)
        if exc is not None:
            job.future.set_exception(exc)
        else:
            job.future.set_result(results)

    def _record(self, items: int, jobs: int, seconds: float) -> None:
        s = self.stats
        s.calls += 1
        s.items += items
        s.jobs += jobs
        s.largest = max(s.largest, items)
        if self.on_batch is not None:
            with contextlib.suppress(Exception):  # metrics must never break serving
                self.on_batch(items, jobs, seconds)

