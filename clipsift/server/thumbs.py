"""JPEG thumbnails of indexed items, read by catalog key only (never by a client path),
with an LRU cache; the pixel work is `clipsift.inputs.thumbnails` (shared with the dedup
page and the evaluation report).

Keys are what the index recorded: an absolute file path, or "/abs/shard.tar::member" for
tar members (`clipsift.inputs.keys.KeyReader`: FIFOs and devices refused at once, shard
tables cached per shard version). Thumbnails are re-encoded JPEGs made with `open_image`
(bomb and byte caps, EXIF orientation), so whatever file sits at a key, only image pixels
ever leave the server.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from clipsift.errors import ImageError
from clipsift.inputs.images import MAX_DECODED_BYTES, decode_cost
from clipsift.inputs.reader import KeyReader
from clipsift.inputs.thumbnails import thumbnail_bytes

if TYPE_CHECKING:
    from clipsift.server.decoding import DecodeBudget

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A small thread-safe least-recently-used map.

    `capacity` counts entries, or, with `weigh`, the sum of `weigh(value)` (e.g. bytes);
    an entry heavier than the whole capacity is not kept.
    """

    def __init__(self, capacity: int, weigh: Callable[[V], int] | None = None) -> None:
        self.capacity = max(1, capacity)
        self._weigh = weigh or (lambda _value: 1)
        self._data: OrderedDict[K, V] = OrderedDict()
        self._weight = 0
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def put(self, key: K, value: V) -> None:
        weight = self._weigh(value)
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self._weight -= self._weigh(old)
            if weight > self.capacity:
                return
            self._data[key] = value
            self._weight += weight
            while self._weight > self.capacity:
                _, dropped = self._data.popitem(last=False)
                self._weight -= self._weigh(dropped)

    @property
    def weight(self) -> int:
        """Entries held, or their total weight with `weigh`."""
        return self._weight

    def __len__(self) -> int:
        return len(self._data)


class Thumbnails:
    """Thumbnail maker with an LRU cache keyed by (item id, content hash, size)."""

    def __init__(self, capacity: int, max_pixels: int,
                 reader: Callable[[str], bytes] | None = None,
                 max_bytes: int = MAX_DECODED_BYTES,
                 budget: DecodeBudget | None = None) -> None:
        self.cache: LRU[tuple[int, str, int], bytes] = LRU(capacity)
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self.budget = budget
        self.reader = reader or KeyReader().read

    def get(self, item_id: int, key: str, digest: str, size: int) -> bytes:
        """JPEG bytes for an item. Raises ImageError when it cannot be read or decoded."""
        cache_key = (item_id, digest, size)
        hit = self.cache.get(cache_key)
        if hit is not None:
            return hit
        try:
            data = self.reader(key)
        except OSError as ex:
            raise ImageError(f"item {item_id}", f"cannot read the image any more: "
                             f"{ex.strerror or ex}") from ex
        held = (self.budget.reserve(decode_cost(data, size)) if self.budget is not None
                else contextlib.nullcontext())
        with held:
            thumb = thumbnail_bytes(data, size, max_pixels=self.max_pixels,
                                    max_bytes=self.max_bytes, name=f"item {item_id}")
        self.cache.put(cache_key, thumb)
        return thumb
