"""The bulk embedding engine: reader -> decode workers -> batcher -> encoder -> results.

Items (from `clipsift.inputs.sources`) are cut into small chunks and decoded + preprocessed in
worker processes (`open_image` then `model.preprocess`), which send back float32 pixel
tensors through shared memory. The main process stacks them into batches and runs
`model.encode_pixels` while the workers decode the next chunks, so decoding overlaps
inference. At most a fixed number of chunks is in flight, so memory stays flat whatever
the collection size.

Decoding is exact (the whole image, as PIL decodes it) unless `fast_decode` asks for large
JPEGs to be decoded at a reduced scale; `PipelineStats.decode_mode` records which.

Results come out per batch, in input order. A bad image becomes an `EmbedResult` with an
`error` and never stops the run; a decoder that crashes its worker process is isolated
and its image recorded as an error too.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clipsift.engines.base import EmbedResult, PipelineStats
from clipsift.engines.decode import Decoded, PoolDecoder, inline_decode, usable_cores
from clipsift.errors import UsageError
from clipsift.inputs.images import decode_mode, draft_size_for
from clipsift.inputs.sources import Item, iter_items
from clipsift.models.base import ClipModel

#: Most decode worker processes used when `workers=None`.
MAX_DEFAULT_WORKERS = 4
#: With `workers=None`, jobs of fewer batches decode in-process: the pool's start-up costs
#: more (bench/bench_decode.py: 2 batches 1.24-1.53x faster in-process, 7: 0.79-1.10x).
INLINE_BELOW_BATCHES = 4
#: Most items sent to a worker in one task.
MAX_CHUNK = 16


# ---- batching and encoding (main process) -------------------------------------------------
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

    def add(self, chunk: list[Item], decoded: Decoded) -> None:
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
    fast_decode: bool = False,
) -> Iterator[list[EmbedResult]]:
    """Embed images in bulk; yield results batch by batch, in input order.

    Args:
        model: the model; its `preprocess` must be picklable when workers > 0.
        items: items to embed (e.g. `clipsift.inputs.sources.iter_items(...)`), read lazily.
        batch_size: items per yielded batch (and per encoder call, minus failures).
        workers: decode processes; 0 decodes in this process, one thread per core, between
            batches (small jobs, tests); None picks `default_workers()`, or 0 when there are
            fewer than INLINE_BELOW_BATCHES batches of items.
        prefetch: chunks in flight per worker (bounds memory; at least 2 batches' worth).
        on_batch: called with each batch of results before it is yielded.
        stop: when set, the run ends after the current batch; workers are shut down.
        stats: a `PipelineStats` to update in place after every batch.
        fast_decode: decode large JPEGs at 1/2-1/8 scale (never below the model's input
            size): faster, approximate vectors (docs/benchmarks.md gives the measured
            cosine to exact). Default False: the whole image, exactly.

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
    stats.decode_mode = decode_mode(fast_decode)
    draft_size = draft_size_for(fast_decode, model.image_size)
    source = iter(items)
    head = list(itertools.islice(source, INLINE_BELOW_BATCHES * batch_size))
    if workers is None:
        workers = default_workers() if len(head) == INLINE_BELOW_BATCHES * batch_size else 0
    stats.workers = workers
    chunk_size = max(1, min(MAX_CHUNK, math.ceil(batch_size / max(1, workers))))
    chunks = _chunks(itertools.chain(head, source), chunk_size)
    if workers == 0:
        decoded: Iterator[tuple[list[Item], Decoded]] = inline_decode(chunks, model, draft_size)
    else:
        window = max(workers * prefetch, math.ceil(2 * batch_size / chunk_size))
        decoded = PoolDecoder(model, workers, window, stop, draft_size).run(chunks)
    yield from _batches(model, decoded, batch_size, stats, on_batch, stop)


def _batches(
    model: ClipModel,
    decoded: Iterator[tuple[list[Item], Decoded]],
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
        inputs: as for `clipsift.inputs.sources.iter_items`.
        **kwargs: options of `embed_items` (batch_size, workers, prefetch, on_batch, stop,
            fast_decode).

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


@dataclass
class LocalEngine:
    """The default engine: `clipsift.engines.local.embed_items` on this machine.

    Attributes:
        workers: decode processes (None: automatic, 0: decode in this process).
        fast_decode: decode large JPEGs at reduced scale (approximate; see `embed_items`).
    """

    workers: int | None = None
    fast_decode: bool = False
    name: str = "local"

    @property
    def decode_mode(self) -> str:
        """"exact" or "fast": how this engine decodes, to record with its results."""
        return decode_mode(self.fast_decode)

    def embed(self, model: ClipModel, items: Iterable[Item], *, batch_size: int = 64,
              stop: threading.Event | None = None, stats: PipelineStats | None = None,
              ) -> Iterator[list[EmbedResult]]:
        return embed_items(model, items, batch_size=batch_size, workers=self.workers,
                           stop=stop, stats=stats, fast_decode=self.fast_decode)

    def close(self) -> None:
        """Nothing to release: worker pools live only while `embed` runs."""

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
