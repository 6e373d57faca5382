"""The bulk embedding engine: reader -> decode workers -> batcher -> encoder -> results.

Items (from `clipsift.sources`) are cut into small chunks and decoded + preprocessed in
worker processes (`open_image` then `model.preprocess`), which send back float32 pixel
tensors through shared memory. The main process stacks them into batches and runs
`model.encode_pixels` while the workers decode the next chunks, so decoding overlaps
inference. At most a fixed number of chunks is in flight, so memory stays flat whatever
the collection size.

Results come out per batch, in input order. A bad image becomes an `EmbedResult` with an
`error` and never stops the run; a decoder that crashes its worker process is isolated
and its image recorded as an error too.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clipsift.errors import ImageError, UsageError
from clipsift.images import DecodedImage, decode_image
from clipsift.models.base import ClipModel, Preprocess
from clipsift.sources import Item, iter_items

#: Most decode worker processes used when `workers=None`.
MAX_DEFAULT_WORKERS = 4
#: With `workers=None`, jobs of fewer batches than this decode in-process: starting the
#: pool costs more than it saves (bench/bench_decode.py: 2 batches 1.24-1.53x faster
#: in-process, 7 batches 0.79-1.10x).
INLINE_BELOW_BATCHES = 4
#: Most items sent to a worker in one task.
MAX_CHUNK = 16
_POLL_SECONDS = 0.1


@dataclass
class EmbedResult:
    """The outcome for one item.

    Attributes:
        item: the item embedded.
        vector: float32 [D], unit norm; None when the item failed.
        error: why the item failed (e.g. "truncated image data"), None on success.
        width: original image width as displayed (EXIF orientation applied), if decoded.
        height: original image height, if decoded.
    """

    item: Item
    vector: np.ndarray | None
    error: str | None
    width: int | None = None
    height: int | None = None


@dataclass
class PipelineStats:
    """Counters and timings of one run, updated after every batch.

    Attributes:
        items: items processed (successes and errors).
        errors: items that failed.
        seconds: wall time since the run started.
        decode_seconds: time spent opening + preprocessing, summed over workers.
        encode_seconds: wall time in `model.encode_pixels`.
        wait_seconds: wall time the encoder waited for decoded images (high = decode-bound).
        images_per_second: items / seconds.
        workers: decode worker processes used (0 = decoded in the calling process).
    """

    items: int = 0
    errors: int = 0
    seconds: float = 0.0
    decode_seconds: float = 0.0
    encode_seconds: float = 0.0
    wait_seconds: float = 0.0
    images_per_second: float = 0.0
    workers: int = 0


@dataclass
class _Decoded:
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
    ) -> _Decoded:
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


def _init_worker(preprocess: Preprocess, target_size: int, abort: Any) -> None:
    """Worker initializer: ignore Ctrl-C (the parent shuts us down), one thread each.

    `abort` is a multiprocessing Event the parent sets to cut short the chunks in flight.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with_parent()
    torch.set_num_threads(1)
    _WORKER_STATE.update(preprocess=preprocess, target_size=target_size, abort=abort)


def _load(item: Item, target_size: int) -> DecodedImage:
    if item.path is not None:
        return decode_image(item.path, target_size, name=item.key)
    try:
        data = item.read_bytes()
    except OSError as exc:
        raise ImageError(item.key, f"cannot read: {exc}") from exc
    return decode_image(data, target_size, name=item.key)


_Row = tuple[torch.Tensor | None, str | None, tuple[int, int] | None]


def _decode_one(item: Item, preprocess: Preprocess, target_size: int) -> _Row:
    """Open and preprocess one item -> (pixels [3, H, W] | None, error | None, (w, h))."""
    try:
        decoded = _load(item, target_size)
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


def _decode_chunk(
    items: Sequence[Item], preprocess: Preprocess, target_size: int, abort: Any = None,
    pool: ThreadPoolExecutor | None = None,
) -> _Decoded:
    """Decode and preprocess `items` (on `pool`'s threads when given; Pillow's decoders and
    resizers release the GIL); an item whose pixels differ in shape from the first is failed."""
    start = time.perf_counter()

    def one(item: Item) -> _Row:
        if abort is not None and abort.is_set():  # the run is over: skip the rest
            return None, "cancelled", None
        return _decode_one(item, preprocess, target_size)

    results = list(pool.map(one, items)) if pool is not None else [one(i) for i in items]
    shape = next((tuple(r[0].shape) for r in results if r[0] is not None), None)
    rows, errors, sizes = [], [], []
    for pixels, error, size in results:
        if pixels is not None and tuple(pixels.shape) != shape:
            pixels, error = None, f"preprocess gave shape {tuple(pixels.shape)}, expected {shape}"
        rows.append(pixels)
        errors.append(error)
        sizes.append(size)
    return _Decoded.from_rows(rows, errors, sizes, time.perf_counter() - start)


def _worker_decode_chunk(items: Sequence[Item]) -> _Decoded:
    state = _WORKER_STATE
    return _decode_chunk(items, state["preprocess"], state["target_size"], state["abort"])


def _crashed(items: Sequence[Item]) -> _Decoded:
    n = len(items)
    return _Decoded(None, ["decoder crashed (its worker process died)"] * n, [None] * n)


class _PoolDecoder:
    """Decode chunks in a process pool with a bounded window of tasks in flight."""

    def __init__(self, model: ClipModel, workers: int, window: int, stop: threading.Event | None):
        self._ctx = mp.get_context(
            "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
        )
        self._abort = self._ctx.Event()
        self._initargs = (model.preprocess, model.image_size, self._abort)
        self._workers = workers
        self._window = window
        self._stop = stop
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        if self._ctx.get_start_method() == "forkserver":
            # Workers fork from a server that already imported torch/PIL: fast start-up.
            self._ctx.set_forkserver_preload(["clipsift.pipeline"])
        return ProcessPoolExecutor(
            self._workers, mp_context=self._ctx, initializer=_init_worker,
            initargs=self._initargs,
        )

    def close(self, abort: bool) -> None:
        """Shut the pool down; with `abort`, chunks in flight stop after their current image."""
        if abort:
            self._abort.set()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def _restart(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = self._new_pool()

    def _wait(self, fut: Future) -> bool:
        """Wait for `fut`; False if the stop event was set first."""
        while not wait([fut], timeout=_POLL_SECONDS).done:
            if self._stop is not None and self._stop.is_set():
                return False
        return True

    def _isolate(self, chunk: list[Item]) -> _Decoded:
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
            except BrokenProcessPool:
                one = _crashed([item])
                self._restart()
            rows += one.rows()
            errors += one.errors
            sizes += one.sizes
            seconds += one.seconds
        return _Decoded.from_rows(rows, errors, sizes, seconds)

    def _take(self, pending: deque[tuple[list[Item], Future]]) -> tuple[list[Item], _Decoded]:
        chunk, fut = pending.popleft()
        if not self._wait(fut):
            raise _Stopped
        try:
            return chunk, fut.result()
        except BrokenProcessPool:
            decoded = self._isolate(chunk)
            for i, (other, _) in enumerate(pending):  # the restarted pool redoes the rest
                pending[i] = (other, self._pool.submit(_worker_decode_chunk, other))
            return chunk, decoded

    def run(self, chunks: Iterable[list[Item]]) -> Iterator[tuple[list[Item], _Decoded]]:
        pending: deque[tuple[list[Item], Future]] = deque()
        finished = False
        try:
            for chunk in chunks:
                pending.append((chunk, self._pool.submit(_worker_decode_chunk, chunk)))
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


def _inline_decode(
    chunks: Iterable[list[Item]], model: ClipModel,
) -> Iterator[tuple[list[Item], _Decoded]]:
    """Decode in this process between batches, one thread per core."""
    with ThreadPoolExecutor(usable_cores(), thread_name_prefix="clipsift-decode") as pool:
        for chunk in chunks:
            yield chunk, _decode_chunk(chunk, model.preprocess, model.image_size, pool=pool)


# ---- batching and encoding (main process) -------------------------------------------------
def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers() -> int:
    """Decode processes used when `workers=None`: one per core, leaving one for the encoder.

    Returns:
        min(MAX_DEFAULT_WORKERS, usable cores - 1), at least 1.
    """
    return max(1, min(MAX_DEFAULT_WORKERS, usable_cores() - 1))


def _chunks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    while chunk := list(itertools.islice(items, size)):
        yield chunk


@dataclass
class _Batcher:
    """Collects decoded items in input order and encodes them batch by batch."""

    model: ClipModel
    stats: PipelineStats
    start: float
    rows: list[tuple[Item, torch.Tensor | None, str | None, tuple[int, int] | None]] = field(
        default_factory=list
    )

    def add(self, chunk: list[Item], decoded: _Decoded) -> None:
        self.stats.decode_seconds += decoded.seconds
        self.rows.extend(zip(chunk, decoded.rows(), decoded.errors, decoded.sizes, strict=True))

    def take(self, n: int) -> list[EmbedResult]:
        rows, self.rows = self.rows[:n], self.rows[n:]
        good = [r[1] for r in rows if r[1] is not None]
        vectors = np.zeros((0, self.model.dim), np.float32)
        if good:
            t0 = time.perf_counter()
            vectors = self.model.encode_pixels(torch.stack(good))  # [n, D]
            self.stats.encode_seconds += time.perf_counter() - t0
        results, k = [], 0
        for item, pixels, error, size in rows:
            w, h = size if size is not None else (None, None)
            vec = None
            if pixels is not None:
                vec, k = vectors[k], k + 1
            results.append(EmbedResult(item, vec, error, w, h))
        s = self.stats
        s.items += len(results)
        s.errors += sum(1 for r in results if r.error is not None)
        s.seconds = time.perf_counter() - self.start
        s.images_per_second = s.items / s.seconds if s.seconds > 0 else 0.0
        return results


def _check_options(batch_size: int, workers: int | None, prefetch: int) -> None:
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise UsageError(f"workers must be >= 0 (0 = decode in this process), got {workers}")
    if prefetch < 1:
        raise UsageError(f"prefetch must be >= 1, got {prefetch}")


def embed_items(
    model: ClipModel,
    items: Iterable[Item],
    *,
    batch_size: int = 64,
    workers: int | None = None,
    prefetch: int = 4,
    on_batch: Callable[[list[EmbedResult]], None] | None = None,
    stop: threading.Event | None = None,
    stats: PipelineStats | None = None,
) -> Iterator[list[EmbedResult]]:
    """Embed images in bulk; yield results batch by batch, in input order.

    Args:
        model: the model; its `preprocess` must be picklable when workers > 0.
        items: items to embed (e.g. `clipsift.sources.iter_items(...)`), read lazily.
        batch_size: items per yielded batch (and per encoder call, minus failures).
        workers: decode processes; 0 decodes in this process, one thread per core, between
            batches (small jobs, tests); None picks `default_workers()`, or 0 when there are
            fewer than INLINE_BELOW_BATCHES batches of items.
        prefetch: chunks in flight per worker (bounds memory; at least 2 batches' worth).
        on_batch: called with each batch of results before it is yielded.
        stop: when set, the run ends after the current batch; workers are shut down.
        stats: a `PipelineStats` to update in place after every batch.

    Returns:
        An iterator of batches (lists of `EmbedResult`, input order). Failed items carry
        `error` and no vector; they never stop the run. Closing the iterator, the stop
        event and Ctrl-C all shut the worker processes down.

    Example:
        >>> for batch in embed_items(model, iter_items(["photos/"]), workers=2):
        ...     store.add(batch)
    """
    _check_options(batch_size, workers, prefetch)
    stats = stats if stats is not None else PipelineStats()
    source = iter(items)
    head = list(itertools.islice(source, INLINE_BELOW_BATCHES * batch_size))
    if workers is None:
        workers = default_workers() if len(head) == INLINE_BELOW_BATCHES * batch_size else 0
    stats.workers = workers
    chunk_size = max(1, min(MAX_CHUNK, math.ceil(batch_size / max(1, workers))))
    chunks = _chunks(itertools.chain(head, source), chunk_size)
    if workers == 0:
        decoded: Iterator[tuple[list[Item], _Decoded]] = _inline_decode(chunks, model)
    else:
        window = max(workers * prefetch, math.ceil(2 * batch_size / chunk_size))
        decoded = _PoolDecoder(model, workers, window, stop).run(chunks)
    yield from _batches(model, decoded, batch_size, stats, on_batch, stop)


def _batches(
    model: ClipModel,
    decoded: Iterator[tuple[list[Item], _Decoded]],
    batch_size: int,
    stats: PipelineStats,
    on_batch: Callable[[list[EmbedResult]], None] | None,
    stop: threading.Event | None,
) -> Iterator[list[EmbedResult]]:
    """Batch decoded chunks in order, encode each batch, yield its results."""
    batcher = _Batcher(model, stats, time.perf_counter())
    with contextlib.closing(decoded):
        while True:
            t0 = time.perf_counter()
            more = next(decoded, None)
            stats.wait_seconds += time.perf_counter() - t0
            if stop is not None and stop.is_set():
                return
            if more is not None:
                batcher.add(*more)
            while len(batcher.rows) >= batch_size or (more is None and batcher.rows):
                batch = batcher.take(batch_size)
                if on_batch is not None:
                    on_batch(batch)
                yield batch
                if stop is not None and stop.is_set():
                    return
            if more is None:
                return


def embed_paths(
    model: ClipModel, inputs: Sequence[str], **kwargs: Any,
) -> tuple[list[EmbedResult], PipelineStats]:
    """Embed every image named by `inputs` (files, folders, globs, shards, lists) in memory.

    Args:
        model: the model.
        inputs: as for `clipsift.sources.iter_items`.
        **kwargs: options of `embed_items` (batch_size, workers, prefetch, on_batch, stop).

    Returns:
        (results in input order, stats of the run).

    Raises:
        UsageError: an input does not exist or an option is invalid.

    Example:
        >>> results, stats = embed_paths(model, ["photos/"], workers=0)
        >>> matrix = np.stack([r.vector for r in results if r.vector is not None])
    """
    stats = PipelineStats()
    results: list[EmbedResult] = []
    for batch in embed_items(model, iter_items(inputs), stats=stats, **kwargs):
        results.extend(batch)
    return results, stats
