"""The decode stage of the bulk pipeline: worker processes (or threads in this process) open
and preprocess chunks of items and hand back their pixels (used by `clipsift.engines.local`).

Decoding is exact unless a `draft_size` is given (the engines' `fast_decode`: large JPEGs
decode at a reduced scale, `clipsift.inputs.images.draft_size_for`).

Pixels travel from workers as one stacked tensor per chunk, through shared memory. A decoder
that crashes its worker process is isolated: the chunk is redone one item per task and the
culprit recorded as an error. A preprocess the workers cannot load at all (its class lives
in a module they cannot import, e.g. a plugin loaded only in the parent) is a setup failure,
not bad images: the run stops with an `EngineError` saying what to do.
"""

from __future__ import annotations

import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import signal
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from clipsift.errors import EngineError, ImageError
from clipsift.inputs.images import DecodedImage, decode_image
from clipsift.inputs.sources import Item
from clipsift.models.base import ClipModel, Preprocess

_POLL_SECONDS = 0.1


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class Decoded:
    """One chunk's decode output, as sent back by a worker.

    The pixels of the items that decoded travel as one stacked tensor: torch moves it to
    shared memory, so the parent receives a handle, not megabytes through a pipe (measured:
    about 0.1 ms of parent CPU per 224px image, against 0.6-1.2 ms for numpy arrays).
    """

    pixels: torch.Tensor | None  # [k, 3, H, W] float32: the k items with no error, in order
    errors: list[str | None]
    sizes: list[tuple[int, int] | None]
    seconds: float = 0.0

    @classmethod
    def from_rows(
        cls, rows: list[torch.Tensor | None], errors: list[str | None],
        sizes: list[tuple[int, int] | None], seconds: float,
    ) -> Decoded:
        good = [r for r in rows if r is not None]
        return cls(torch.stack(good) if good else None, errors, sizes, seconds)

    def rows(self) -> list[torch.Tensor | None]:
        """Per item: its [3, H, W] pixels, or None when it failed."""
        out: list[torch.Tensor | None] = []
        k = 0
        for error in self.errors:
            if error is None and self.pixels is not None:
                out.append(self.pixels[k])
                k += 1
            else:
                out.append(None)
        return out


# ---- decoding (runs in worker processes, or inline when workers=0) -----------------------
_WORKER_STATE: dict[str, Any] = {}


def _exit_with_parent() -> None:
    """Exit when the parent process dies, even by SIGKILL/SIGTERM (no clean shutdown).

    A pool worker blocks reading its task queue, whose write end it also holds, so it
    would never see EOF: without this watch it would outlive a killed parent forever,
    holding memory and the parent's stdout.
    """
    parent = mp.parent_process()
    if parent is None:
        return

    def watch() -> None:
        mp.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=watch, name="clipsift-parent-watch", daemon=True).start()


class WorkerSetupFailed(Exception):
    """Raised by a worker's tasks when it could not load the preprocess (the reason)."""


def _init_worker(preprocess: bytes, draft_size: int | None, abort: Any) -> None:
    """Worker initializer: ignore Ctrl-C (the parent shuts us down), one thread each, and
    load the preprocess (pickled by the parent). A failure to load it is kept and raised by
    every task (`WorkerSetupFailed`), so the parent learns why instead of seeing workers die.

    `abort` is a multiprocessing Event the parent sets to cut short the chunks in flight.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    torch.set_num_threads(1)
    try:
        loaded, error = pickle.loads(preprocess), None
    except Exception as exc:  # e.g. ModuleNotFoundError for a plugin's module
        loaded, error = None, f"{type(exc).__name__}: {exc}"
    _WORKER_STATE.update(preprocess=loaded, setup_error=error, draft_size=draft_size,
                         abort=abort)


def _load(item: Item, draft_size: int | None) -> DecodedImage:
    if item.path is not None:
        return decode_image(item.path, draft_size, name=item.key)
    try:
        data = item.read_bytes()
    except OSError as exc:
        raise ImageError(item.key, f"cannot read: {exc.strerror or exc}") from exc
    return decode_image(data, draft_size, name=item.key)


_Row = tuple[torch.Tensor | None, str | None, tuple[int, int] | None]


def _decode_one(item: Item, preprocess: Preprocess, draft_size: int | None) -> _Row:
    """Open and preprocess one item -> (pixels [3, H, W] | None, error | None, (w, h))."""
    try:
        decoded = _load(item, draft_size)
    except ImageError as exc:
        return None, exc.reason, None
    size = (decoded.width, decoded.height)
    try:
        out = preprocess(decoded.image)
        pixels = out if isinstance(out, torch.Tensor) else torch.from_numpy(np.asarray(out))
        pixels = pixels.to(torch.float32)
    except Exception as exc:  # a preprocess failure is this item's error, not the run's
        return None, f"preprocess failed ({type(exc).__name__}: {exc})", size
    return pixels, None, size


def decode_chunk(
    items: Sequence[Item], preprocess: Preprocess, draft_size: int | None = None,
    abort: Any = None, pool: ThreadPoolExecutor | None = None,
) -> Decoded:
    """Decode and preprocess `items` (on `pool`'s threads when given; Pillow's decoders and
    resizers release the GIL); an item whose pixels differ in shape from the first is failed.
    `draft_size` None decodes exactly; a size decodes large JPEGs at reduced scale."""
    start = time.perf_counter()

    def one(item: Item) -> _Row:
        if abort is not None and abort.is_set():  # the run is over: skip the rest
            return None, "cancelled", None
        return _decode_one(item, preprocess, draft_size)

    results = list(pool.map(one, items)) if pool is not None else [one(i) for i in items]
    shape = next((tuple(r[0].shape) for r in results if r[0] is not None), None)
    for i, (pixels, _, size) in enumerate(results):
        if pixels is not None and tuple(pixels.shape) != shape:
            error = f"preprocess gave shape {tuple(pixels.shape)}, expected {shape}"
            results[i] = None, error, size
    return Decoded.from_rows([r[0] for r in results], [r[1] for r in results],
                              [r[2] for r in results], time.perf_counter() - start)


def _worker_decode_chunk(items: Sequence[Item]) -> Decoded:
    state = _WORKER_STATE
    if state["setup_error"] is not None:
        raise WorkerSetupFailed(state["setup_error"])
    return decode_chunk(items, state["preprocess"], state["draft_size"], state["abort"])


def _setup_error(reason: str) -> EngineError:
    return EngineError(
        f"decode worker processes cannot load the model's preprocess ({reason}): its code "
        "is in a module they cannot import (a plugin loaded only in this process?). Name "
        "the module in CLIPSIFT_PLUGINS (workers import it), install it, or decode in this "
        "process (--workers 0, workers=0)")


def _pickled_preprocess(preprocess: Preprocess) -> bytes:
    try:
        return pickle.dumps(preprocess)
    except Exception as exc:  # a lambda, a local function, an open handle...
        raise EngineError(
            f"the model's preprocess cannot be sent to decode worker processes "
            f"({type(exc).__name__}: {exc}); make it picklable (a module-level function or "
            "class), or decode in this process (--workers 0, workers=0)") from exc


def _crashed(items: Sequence[Item]) -> Decoded:
    n = len(items)
    return Decoded(None, ["decoder crashed (its worker process died)"] * n, [None] * n)


class PoolDecoder:
    """Decode chunks in a process pool with a bounded window of tasks in flight."""

    def __init__(self, model: ClipModel, workers: int, window: int, stop: threading.Event | None,
                 draft_size: int | None = None):
        self._ctx = mp.get_context(
            "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        )
        self._abort = self._ctx.Event()
        self._initargs = (_pickled_preprocess(model.preprocess), draft_size, self._abort)
        self._workers = workers
        self._window = window
        self._stop = stop
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        if self._ctx.get_start_method() == "forkserver":
            # Workers fork from a server that already imported torch/PIL: fast start-up.
            self._ctx.set_forkserver_preload(["clipsift.engines.decode"])
        return ProcessPoolExecutor(
            self._workers, mp_context=self._ctx, initializer=_init_worker,
            initargs=self._initargs,
        )

    def close(self, abort: bool) -> None:
        """Shut the pool down; with `abort`, chunks in flight stop after their current image."""
        if abort:
            self._abort.set()
        self._shutdown_pool()

    def _shutdown_pool(self) -> None:
        """Shut the pool down. A broken pool's manager thread joins every worker, and a worker
        spawned (on demand, by a submit) as the pool broke is never told to exit, so the join
        would wait forever (seen once in CI): kill a broken pool's workers first."""
        if getattr(self._pool, "_broken", False):  # set before BrokenProcessPool is raised
            for proc in list((getattr(self._pool, "_processes", None) or {}).values()):
                proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _restart(self) -> None:
        self._shutdown_pool()
        self._pool = self._new_pool()

    def _wait(self, fut: Future) -> bool:
        """Wait for `fut`; False if the stop event was set first."""
        while not wait([fut], timeout=_POLL_SECONDS).done:
            if self._stop is not None and self._stop.is_set():
                return False
        return True

    def _isolate(self, chunk: list[Item]) -> Decoded:
        """After a crash: decode the chunk one item per task, to find the culprit."""
        rows: list[torch.Tensor | None] = []
        errors: list[str | None] = []
        sizes: list[tuple[int, int] | None] = []
        seconds = 0.0
        self._restart()
        for item in chunk:
            fut = self._pool.submit(_worker_decode_chunk, [item])
            if not self._wait(fut):
                raise _Stopped
            try:
                one = fut.result()
            except WorkerSetupFailed as exc:
                raise _setup_error(str(exc)) from None
            except BrokenProcessPool:
                one = _crashed([item])
                self._restart()
            rows += one.rows()
            errors += one.errors
            sizes += one.sizes
            seconds += one.seconds
        return Decoded.from_rows(rows, errors, sizes, seconds)

    def _submit(self, chunk: list[Item]) -> Future:
        """Submit a chunk; a pool that broke since (a worker crashed on an earlier chunk)
        gives a failed future, which `_take` handles like any crash (isolate, resubmit)."""
        try:
            return self._pool.submit(_worker_decode_chunk, chunk)
        except BrokenProcessPool as exc:
            fut: Future = Future()
            fut.set_exception(exc)
            return fut

    def _take(self, pending: deque[tuple[list[Item], Future]]) -> tuple[list[Item], Decoded]:
        chunk, fut = pending.popleft()
        if not self._wait(fut):
            raise _Stopped
        try:
            return chunk, fut.result()
        except WorkerSetupFailed as exc:
            raise _setup_error(str(exc)) from None
        except BrokenProcessPool:
            decoded = self._isolate(chunk)
            for i, (other, _) in enumerate(pending):  # the restarted pool redoes the rest
                pending[i] = (other, self._submit(other))
            return chunk, decoded

    def run(self, chunks: Iterable[list[Item]]) -> Iterator[tuple[list[Item], Decoded]]:
        pending: deque[tuple[list[Item], Future]] = deque()
        finished = False
        try:
            for chunk in chunks:
                pending.append((chunk, self._submit(chunk)))
                if len(pending) >= self._window:
                    yield self._take(pending)
            while pending:
                yield self._take(pending)
            finished = True
        except _Stopped:
            return
        finally:  # also on Ctrl-C, errors and the consumer closing us early
            self.close(abort=not finished)


class _Stopped(Exception):
    """The stop event was set while waiting for a worker."""


def inline_decode(
    chunks: Iterable[list[Item]], model: ClipModel, draft_size: int | None = None,
) -> Iterator[tuple[list[Item], Decoded]]:
    """Decode in this process between batches, one thread per core."""
    with ThreadPoolExecutor(usable_cores(), thread_name_prefix="clipsift-decode") as pool:
        for chunk in chunks:
            yield chunk, decode_chunk(chunk, model.preprocess, draft_size, pool=pool)
