"""Execution engines: where the read -> decode -> encode stages of bulk embedding run.

Both engines turn a stream of `clipsift.inputs.sources.Item` into batches of
`clipsift.engines.local.EmbedResult`, in input order, with the same per-item error handling,
so the verbs built on them (filter, dedup) give the same results whichever runs them:

    local   decode worker processes + one encoder in this process (clipsift.engines.local)
    ray     Ray Data tasks and encoder actors, on a local Ray or an existing cluster
            (clipsift.engines.ray_engine; needs `pip install clipsift[ray]`)

Example:
    >>> with make_engine("local", workers=2) as engine:
    ...     for batch in engine.embed(model, iter_items(["photos/"]), batch_size=64):
    ...         ...
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from clipsift.errors import UsageError

if TYPE_CHECKING:
    from clipsift.inputs.sources import Item
    from clipsift.models.base import ClipModel

ENGINES = ("local", "ray")


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


class Engine(Protocol):
    """What the bulk verbs need from an engine."""

    name: str

    def embed(self, model: ClipModel, items: Iterable[Item], *, batch_size: int = 64,
              stop: threading.Event | None = None, stats: PipelineStats | None = None,
              ) -> Iterator[list[EmbedResult]]:
        """Embed `items`; yield batches of results in input order."""
        ...

    def close(self) -> None:
        """Release what the engine started (worker processes, a local Ray)."""
        ...

    def __enter__(self) -> Engine: ...

    def __exit__(self, *exc: object) -> None: ...


@dataclass
class LocalEngine:
    """The default engine: `clipsift.engines.local.embed_items` on this machine.

    Attributes:
        workers: decode processes (None: automatic, 0: decode in this process).
    """

    workers: int | None = None
    name: str = "local"

    def embed(self, model: ClipModel, items: Iterable[Item], *, batch_size: int = 64,
              stop: threading.Event | None = None, stats: PipelineStats | None = None,
              ) -> Iterator[list[EmbedResult]]:
        from clipsift.engines.local import embed_items

        return embed_items(model, items, batch_size=batch_size, workers=self.workers,
                           stop=stop, stats=stats)

    def close(self) -> None:
        """Nothing to release: worker pools live only while `embed` runs."""

    def __enter__(self) -> LocalEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_engine(name: str = "local", *, workers: int | None = None,
                ray_address: str | None = None, ray_cpus: int | None = None,
                encoders: int = 1) -> Engine:
    """An engine by name.

    Args:
        name: "local" or "ray".
        workers: local decode processes (local engine only).
        ray_address: an existing Ray cluster ("auto", "ray://host:10001"); None starts a
            local Ray owned by the engine and shut down by `close()`.
        ray_cpus: CPUs of the local Ray (None: all of this machine's).
        encoders: encoder actors, each holding one copy of the model (ray only).

    Raises:
        UsageError: unknown engine name, or Ray is not installed.
    """
    if name == "local":
        return LocalEngine(workers)
    if name == "ray":
        from clipsift.engines.ray_engine import RayEngine

        return RayEngine(address=ray_address, num_cpus=ray_cpus, encoders=encoders)
    raise UsageError(f"unknown engine {name!r}; choose one of: {', '.join(ENGINES)}")
