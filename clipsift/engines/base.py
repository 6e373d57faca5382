"""What every execution engine is: the `Engine` protocol and the results it yields.

Both engines turn a stream of `clipsift.inputs.sources.Item` into batches of
`EmbedResult`, in input order, with the same per-item error handling,
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
        decode_mode: "exact" (the whole image) or "fast" (large JPEGs decoded at reduced
            scale: approximate vectors); `clipsift.inputs.images.DECODE_EXACT` / `_FAST`.
    """

    items: int = 0
    errors: int = 0
    seconds: float = 0.0
    decode_seconds: float = 0.0
    encode_seconds: float = 0.0
    wait_seconds: float = 0.0
    images_per_second: float = 0.0
    workers: int = 0
    decode_mode: str = "exact"


class Engine(Protocol):
    """What the bulk verbs need from an engine."""

    name: str
    #: "exact" or "fast" (`clipsift.inputs.images.decode_mode`): how it decodes images, a
    #: plain value to record with what its vectors make (an index, a Parquet file).
    decode_mode: str

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
