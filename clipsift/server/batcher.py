"""Micro-batching: concurrent requests' items go through one model call together.

Each `MicroBatcher` owns one worker thread and two lanes of waiting jobs. A request submits
its items (texts, preprocessed images, query vectors) and awaits a future. The worker takes
the first waiting job, then keeps collecting jobs of the same lane for `window_ms` or until
`max_batch` cost units are gathered, calls `fn(all_items)` ONCE, and hands each job its
slice of the results. With batching off, the worker runs each job alone (one call per
request, in arrival order), which is the baseline the benchmark compares against.

Lanes keep heavy work from starving light work: `submit(..., background=True)` queues a
job in the background lane. When both lanes hold jobs, the worker alternates between them,
so an interactive request waits for at most one background job (callers keep those small:
the server cuts a long caption list into jobs of at most `max_batch` cost units).
An item's cost defaults to 1; callers may give costs (e.g. text chunks per text).

If a merged call fails, each job of the batch is retried alone, so one bad request cannot
fail its neighbours. A full queue raises `Overloaded` at once (the server answers 503). If
the worker thread itself dies, every waiting job fails with `Overloaded`, new submits are
refused, and `alive` turns False (the server's /health reports it).

    >>> b = MicroBatcher(lambda xs: [x * 2 for x in xs], name="double", window_ms=5)
    >>> await b.submit([1, 2])        # -> [2, 4]
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from clipsift.errors import Overloaded

T = TypeVar("T")
R = TypeVar("R")
INTERACTIVE, BACKGROUND = 0, 1


@dataclass
class _Job(Generic[T, R]):
    items: list[T]
    cost: int
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
        window_ms: how long the first interactive job of a batch waits for others.
        max_batch: most cost units per call (a single larger job still runs, alone).
        max_queue: most cost units waiting; more raises `Overloaded`.
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
        self.crashed: str | None = None  # why the worker thread died, if it did
        self._lanes: tuple[deque[_Job], deque[_Job]] = (deque(), deque())
        self._last_lane = BACKGROUND
        self._pending = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"batcher-{name}", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Cost units submitted and not yet finished."""
        return self._pending

    @property
    def alive(self) -> bool:
        """True while the worker thread runs and the batcher accepts work."""
        return self._thread.is_alive() and not self._closed

    def state(self) -> str:
        """Return "ok", or why the batcher cannot take work ("shut down", "worker ...")."""
        if self.crashed is not None:
            return f"worker thread crashed ({self.crashed})"
        if self._closed:
            return "shut down"
        return "ok" if self._thread.is_alive() else "worker thread stopped"

    # ---- callers ------------------------------------------------------------------------
    def submit_future(self, items: Sequence[T], costs: Sequence[int] | None = None,
                      background: bool = False) -> Future:
        """Queue `items` (with optional per-item costs); the future resolves to their
        results (list, in order)."""
        cost = sum(costs) if costs is not None else len(items)
        job: _Job[T, R] = _Job(list(items), max(1, int(cost)))
        if not job.items:
            job.future.set_result([])
            return job.future
        with self._cond:
            state = self.state()
            if state != "ok":
                raise Overloaded(f"the {self.name} worker is not running ({state}); "
                                 "the server needs a restart")
            if self._pending + job.cost > self.max_queue and self._pending > 0:
                raise Overloaded(f"server busy: {self._pending} {self.name} items queued; "
                                 "retry shortly")
            self._pending += job.cost
            self._lanes[BACKGROUND if background else INTERACTIVE].append(job)
            self._cond.notify()
        return job.future

    async def submit(self, items: Sequence[T], costs: Sequence[int] | None = None,
                     background: bool = False) -> list[R]:
        """Queue `items` and wait for their results without blocking the event loop."""
        return await asyncio.wrap_future(self.submit_future(items, costs, background))

    def run(self, items: Sequence[T]) -> list[R]:
        """Blocking form of `submit` (for threads)."""
        return self.submit_future(items).result()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the worker after the queued jobs; new submits raise `Overloaded`."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # ---- worker -------------------------------------------------------------------------
    def _run(self) -> None:
        batch: list[_Job] = []
        try:
            while True:
                batch = self._collect() or []
                if not batch:
                    return
                self._process(batch)
                batch = []
        except BaseException as exc:  # a bug in the worker: fail every waiter, refuse more
            self._crash(batch, exc)

    def _crash(self, batch: list[_Job], exc: BaseException) -> None:
        with self._cond:
            self.crashed = f"{type(exc).__name__}: {exc}"
            waiting = [*batch, *self._lanes[0], *self._lanes[1]]
            for lane in self._lanes:
                lane.clear()
        error = Overloaded(f"the {self.name} worker stopped ({self.crashed}); "
                           "the server needs a restart")
        for job in waiting:
            if not job.future.done():
                with contextlib.suppress(Exception):
                    job.future.set_exception(error)
        with self._cond:
            self._pending = 0  # nothing runs any more

    def _pick_lane(self) -> int:
        """The lane to serve next: the only one with jobs, or the other one than last."""
        if self._lanes[INTERACTIVE] and self._lanes[BACKGROUND]:
            return INTERACTIVE if self._last_lane == BACKGROUND else BACKGROUND
        return INTERACTIVE if self._lanes[INTERACTIVE] else BACKGROUND

    def _collect(self) -> list[_Job] | None:
        """Block for a first job, then gather more of its lane until the window closes
        or the batch is full; None once closed and drained."""
        with self._cond:
            while not (self._lanes[INTERACTIVE] or self._lanes[BACKGROUND]):
                if self._closed:
                    return None
                self._cond.wait()
            lane = self._pick_lane()
            self._last_lane = lane
            queue = self._lanes[lane]
            first = queue.popleft()
            batch, size = [first], first.cost
            if not self.enabled:
                return batch
            deadline = time.monotonic() + (self.window if lane == INTERACTIVE else 0.0)
            while size < self.max_batch:
                if not queue:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._closed:
                        break
                    self._cond.wait(remaining)
                    continue
                if size + queue[0].cost > self.max_batch:
                    break  # first in the next batch of this lane
                job = queue.popleft()
                batch.append(job)
                size += job.cost
            return batch

    def _process(self, batch: list[_Job]) -> None:
        live = []
        for job in batch:  # a job whose caller gave up (timeout) is dropped here
            if job.future.set_running_or_notify_cancel():
                live.append(job)
            else:
                with self._cond:
                    self._pending -= job.cost
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
        with self._cond:
            self._pending -= job.cost
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
