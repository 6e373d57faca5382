"""`--engine ray`: the bulk embedding stages as a Ray Data pipeline.

    read items  ->  decode (map_batches tasks)  ->  encode (map_batches on an actor pool,
    each actor holding one copy of the model)  ->  stream batches back, or write Parquet

Items are listed by the driver (`clipsift.inputs.sources`), sent to the cluster in chunks, decoded
and preprocessed by stateless tasks with exactly the code of the local engine
(`clipsift.engines.local`), and encoded by `encoders` actors. Order is preserved, errors are
per item, so the results equal the local engine's on the same input.

Ray is started by the engine (a local Ray with `num_cpus` CPUs, no dashboard, shut down by
`close()`), or joined with `address` ("auto" on a cluster node, "ray://head:10001" from
outside). On a cluster every node needs clipsift installed and must see the image paths
(shared storage); the model is shipped to the actors through Ray's object store.

Items are listed by the caller. Pass a `clipsift.inputs.sources.Walk` (not a bare
`iter_items`) to `write_parquet` and the folders that could not be listed are in its summary
and in `_clipsift.json`; nothing is skipped silently. Every Parquet shard carries the model
keys of all clipsift Parquet files (`clipsift.model`, `clipsift.dim`, `clipsift.fingerprint`).

Example:
    >>> with RayEngine(num_cpus=8, encoders=2) as engine:
    ...     summary = engine.write_parquet(model, Walk(["shards/*.tar"]), "emb/")
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import re
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsift.errors import EngineError, UsageError
from clipsift.inputs.keys import key_bytes, key_from_bytes, parquet_columns

if TYPE_CHECKING:
    from clipsift.engines.base import EmbedResult, PipelineStats
    from clipsift.inputs.sources import Item
    from clipsift.models.base import ClipModel, Preprocess

#: Items per Ray dataset; larger runs are processed chunk after chunk.
CHUNK_ITEMS = 50_000


@dataclass(frozen=True)
class RayWriteSummary:
    """What `RayEngine.write_parquet` wrote: shard files, rows, failed items, the model's
    fingerprint digest, and folders that could not be listed (folder -> reason; known
    when the items came from a `Walk`)."""

    folder: Path
    files: int
    rows: int
    errors: int
    seconds: float
    fingerprint: str = ""
    unreadable: dict[str, str] = field(default_factory=dict)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise UsageError("the ray engine needs Ray Data: pip install 'clipsift[ray]' "
                         f"(import failed: {exc})") from exc
    return ray


# ---- stages (run on Ray workers) -----------------------------------------------------------
def _item_row(item: Item) -> dict[str, Any]:
    """An item as a row of plain values. Key, path and shard travel as bytes (a binary
    column, `clipsift.inputs.keys.key_bytes`): a file name need not be valid UTF-8, and an
    Arrow string column cannot hold it."""
    return {"key": key_bytes(item.key), "path": key_bytes(item.path or ""),
            "shard": key_bytes(item.shard or ""),
            "offset": -1 if item.offset is None else item.offset,
            "size": -1 if item.size is None else item.size,
            "mtime": math.nan if item.mtime is None else item.mtime,
            "data": item.data if item.data is not None else b""}


def _row_item(key: bytes, path: bytes, shard: bytes, offset: int, size: int, mtime: float,
              data: bytes) -> Item:
    from clipsift.inputs.sources import Item

    return Item(key_from_bytes(key), key_from_bytes(path) or None,
                None if size < 0 else int(size), None if math.isnan(mtime) else float(mtime),
                key_from_bytes(shard) or None, None if offset < 0 else int(offset),
                data or None)


def _decode_batch(batch: dict[str, np.ndarray], preprocess: Preprocess,
                  draft_size: int | None, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Decode + preprocess a batch of item rows into pixels (zeros where it failed)."""
    import torch

    from clipsift.engines.decode import decode_chunk

    torch.set_num_threads(1)
    cols = ("key", "path", "shard", "offset", "size", "mtime", "data")
    items = [_row_item(*values) for values in zip(*(batch[c] for c in cols), strict=True)]
    decoded = decode_chunk(items, preprocess, draft_size)
    pixels = np.zeros((len(items), *shape), np.float32)
    for i, row in enumerate(decoded.rows()):
        if row is not None:
            pixels[i] = row.numpy()
    sizes = [s or (-1, -1) for s in decoded.sizes]
    return {"key": batch["key"], "pixels": pixels,
            "error": np.array([e or "" for e in decoded.errors], dtype=object),
            "width": np.array([s[0] for s in sizes], np.int64),
            "height": np.array([s[1] for s in sizes], np.int64)}


class _Encoder:
    """Ray actor: holds one model and encodes preprocessed pixel batches."""

    def __init__(self, model: ClipModel, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.model = model

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        ok = batch["error"] == ""
        vectors = np.zeros((len(ok), self.model.dim), np.float32)  # [n, D]
        if ok.any():
            vectors[ok] = self.model.encode_pixels(torch.from_numpy(batch["pixels"][ok]))
        return {"key": batch["key"], "vector": vectors, "error": batch["error"],
                "width": batch["width"], "height": batch["height"]}


def _to_arrow(batch: dict[str, np.ndarray], metadata: dict[str, str]) -> Any:
    """Encoder output -> an Arrow table with a plain fixed-size-list `embedding` column and
    the model keys in its schema metadata."""
    import pyarrow as pa

    vectors = np.asarray(batch["vector"], np.float32)
    ok = batch["error"] == ""
    emb = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel(), pa.float32()),
                                            vectors.shape[1], mask=pa.array(~ok))
    return pa.table({
        **parquet_columns("key", [key_from_bytes(bytes(k)) for k in batch["key"]]),
        "embedding": emb,
        "error": pa.array([None if o else str(e) for o, e in zip(ok, batch["error"],
                                                                   strict=True)], pa.string()),
        "width": pa.array(batch["width"], pa.int32()),
        "height": pa.array(batch["height"], pa.int32()),
    }).replace_schema_metadata(metadata)


# ---- the engine ----------------------------------------------------------------------------
class RayEngine:
    """Run bulk embedding on Ray (see the module docstring).

    Args:
        address: an existing cluster to join; None starts a local Ray.
        num_cpus: CPUs of the local Ray (None: all); ignored when joining a cluster.
        encoders: encoder actors (model copies) running at once.
        encoder_cpus: CPUs reserved by (and torch threads of) each encoder actor.
        encoder_gpus: GPUs per encoder actor (0: CPU encoding). With CPU-only encoders
            Ray Data fuses the decode stage into the encoder actors (no pixel transfer
            through the object store); with GPU encoders decoding stays in CPU tasks.
        decode_batch: items per decode task.
        object_store_mb: object store size of the local Ray (None: Ray's default).
        fast_decode: decode large JPEGs at reduced scale (approximate), as the local engine.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
                 encoders: int = 1, encoder_cpus: int = 1, encoder_gpus: float = 0.0,
                 decode_batch: int = 16, object_store_mb: int | None = None,
                 fast_decode: bool = False) -> None:
        if encoders < 1 or encoder_cpus < 1 or decode_batch < 1:
            raise UsageError("encoders, encoder_cpus and decode_batch must be at least 1")
        self.address, self.num_cpus = address, num_cpus
        self.encoders, self.encoder_cpus, self.decode_batch = encoders, encoder_cpus, decode_batch
        self.encoder_gpus = encoder_gpus
        self.object_store_mb = object_store_mb
        self.fast_decode = fast_decode
        self._ray: Any = None

    @property
    def decode_mode(self) -> str:
        """"exact" or "fast": how this engine decodes, to record with its results."""
        from clipsift.inputs.images import decode_mode

        return decode_mode(self.fast_decode)

    def start(self) -> None:
        """Start (or join) Ray; idempotent. A Ray already initialised here is reused.

        Raises:
            EngineError: the cluster cannot be reached, or refuses this driver (Ray's token
                authentication: the message says what to set); Ray's own connection
                messages are kept off the terminal (`clipsift.engines.ray_connect`).
        """
        if self._ray is not None:
            return
        ray = _import_ray()
        if not ray.is_initialized():
            opts: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                    "logging_level": logging.WARNING}
            if self.address is None:
                opts["num_cpus"] = self.num_cpus
                if self.object_store_mb:
                    opts["object_store_memory"] = self.object_store_mb * 1024 * 1024
            from clipsift.engines.ray_connect import init

            init(ray, self.address, opts)  # EngineError with the fix when it cannot
            self._owned = True
        else:
            self._owned = False
        self._ray = ray

    def close(self) -> None:
        """Shut down the Ray this engine started (a joined cluster keeps running)."""
        if self._ray is not None and getattr(self, "_owned", False):
            self._ray.shutdown()
        self._ray = None

    def __enter__(self) -> RayEngine:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _dataset(self, model: ClipModel, items: list[Item], batch_size: int) -> Any:
        from PIL import Image

        from clipsift.inputs.images import draft_size_for

        ray = self._ray
        probe = model.preprocess(Image.new("RGB", (model.image_size, model.image_size)))
        shape = tuple(probe.shape)  # [3, H, W]
        blocks = max(1, min(len(items) // self.decode_batch, 64))
        ds = ray.data.from_items([_item_row(it) for it in items], override_num_blocks=blocks)
        ds = ds.map_batches(_decode_batch, batch_size=self.decode_batch, batch_format="numpy",
                            fn_kwargs={"preprocess": model.preprocess, "shape": shape,
                                       "draft_size": draft_size_for(self.fast_decode,
                                                                    model.image_size)})
        return ds.map_batches(
            _Encoder, batch_size=batch_size, batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.encoders),
            fn_constructor_kwargs={"model": model, "threads": self.encoder_cpus},
            num_cpus=self.encoder_cpus, num_gpus=self.encoder_gpus or None,
        )

    def embed(self, model: ClipModel, items: Iterable[Item], *, batch_size: int = 64,
              stop: threading.Event | None = None, stats: PipelineStats | None = None,
              ) -> Iterator[list[EmbedResult]]:
        """Embed `items` on Ray; yield batches of results in input order (like the local
        engine). Setting `stop` ends the run after the current batch."""
        from clipsift.engines.base import EmbedResult, PipelineStats

        self.start()
        stats = stats if stats is not None else PipelineStats()
        stats.decode_mode = self.decode_mode
        t0 = time.perf_counter()
        source = iter(items)
        while chunk := list(itertools.islice(source, CHUNK_ITEMS)):
            by_key = {it.key: it for it in chunk}
            with _quiet_data(self._ray):
                batches = self._dataset(model, chunk, batch_size).iter_batches(
                    batch_size=batch_size, batch_format="numpy")
                for b in batches:
                    out = []
                    for key, vec, err, w, h in zip(b["key"], b["vector"], b["error"],
                                                   b["width"], b["height"], strict=True):
                        ok = err == ""
                        out.append(EmbedResult(by_key[key_from_bytes(bytes(key))],
                                               vec if ok else None,
                                               None if ok else str(err),
                                               int(w) if w >= 0 else None,
                                               int(h) if h >= 0 else None))
                    _update(stats, out, t0)
                    yield out
                    if stop is not None and stop.is_set():
                        return

    def write_parquet(self, model: ClipModel, items: Iterable[Item],
                      folder: str | Path, *, batch_size: int = 64) -> RayWriteSummary:
        """Embed `items` on Ray and write Parquet shards (key, key_bytes: the exact name where
        it is not UTF-8, embedding, error, width, height) into `folder/chunk-NNNNN/`, written
        by the workers themselves (nothing goes through the driver); `folder/_clipsift.json`
        records the model (name, dim, fingerprint), the decode mode, the counts, and the
        folders a `Walk` could not list."""
        import json

        import pyarrow.parquet as pq

        from clipsift.inputs.sources import Walk
        from clipsift.models.fingerprint import parquet_metadata

        self.start()
        t0 = time.perf_counter()
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        digest = model.fingerprint.digest
        metadata = parquet_metadata(model.name, model.dim, digest, self.decode_mode)
        source = iter(items)
        for n in itertools.count():
            chunk = list(itertools.islice(source, CHUNK_ITEMS))
            if not chunk:
                break
            with _quiet_data(self._ray):
                ds = self._dataset(model, chunk, batch_size).map_batches(
                    _to_arrow, batch_format="numpy", fn_kwargs={"metadata": metadata})
                ds.write_parquet(str(out / f"chunk-{n:05d}"))
        files = sorted(out.glob("chunk-*/*.parquet"))
        rows = errors = 0
        for f in files:
            err = pq.read_table(f, columns=["error"])["error"]
            rows += len(err)
            errors += len(err) - err.null_count
        unreadable = ({e.path: e.reason for e in items.errors} if isinstance(items, Walk)
                      else {})
        info = {"model": model.name, "dim": model.dim, "fingerprint": digest, "rows": rows,
                "errors": errors, "unreadable": unreadable, "decode": self.decode_mode}
        (out / "_clipsift.json").write_text(json.dumps(info) + "\n", encoding="utf-8")
        return RayWriteSummary(out, len(files), rows, errors, time.perf_counter() - t0,
                               digest, unreadable)


def _update(stats: PipelineStats, batch: list[EmbedResult], t0: float) -> None:
    stats.items += len(batch)
    stats.errors += sum(1 for r in batch if r.error is not None)
    stats.seconds = time.perf_counter() - t0
    stats.images_per_second = stats.items / stats.seconds if stats.seconds > 0 else 0.0


_MISSING_MODULE = re.compile(r"No module named '([^']+)'")


@contextlib.contextmanager
def _quiet_data(ray: Any) -> Iterator[None]:
    """Ordered execution, no progress bars and no Ray Data log lines on the terminal for
    the duration of a run (a failure reaches the caller as an exception; Ray keeps its logs
    in its session folder); a model the Ray workers cannot import (its module exists only
    here) stops the run with an `EngineError` saying what to do, as it does for the local
    decode workers."""
    ctx = ray.data.DataContext.get_current()
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    logger = logging.getLogger("ray.data")
    level = logger.level
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = False
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    except Exception as exc:
        missing = _MISSING_MODULE.search(str(exc))
        if missing is None:
            raise
        raise EngineError(
            f"Ray workers cannot load the model: no module named {missing[1]!r} there (a "
            "plugin loaded only in this process, or a package missing on the nodes). "
            "Install it on every node and name it in CLIPSIFT_PLUGINS by module name (not "
            "as a .py file)") from None
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        logger.setLevel(level)
