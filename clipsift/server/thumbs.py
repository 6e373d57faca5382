"""JPEG thumbnails of indexed items, read by catalog key only (never by a client path).

Keys are what the index recorded: an absolute file path, or "/abs/shard.tar::member" for
tar members (found by name in the shard; offsets are cached per shard). Thumbnails are
re-encoded JPEGs made with `open_image` (bomb cap, EXIF orientation), so whatever file sits
at a key, only image pixels ever leave the server.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from PIL import Image

from clipsift.errors import ImageError
from clipsift.inputs.images import open_image
from clipsift.inputs.keys import split_key

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


class ItemReader:
    """Read an indexed item's bytes from its catalog key (files and tar members)."""

    def __init__(self, shards: int = 8) -> None:
        self._members: LRU[str, dict[str, tuple[int, int]]] = LRU(shards)

    def read(self, key: str) -> bytes:
        """The item's bytes. Raises OSError when it cannot be read any more."""
        shard, member = split_key(key)
        if member is None or os.path.isfile(key):
            with open(key, "rb") as fh:
                return fh.read()
        if not shard.lower().endswith(".tar"):  # compressed shards cannot be seeked
            with tarfile.open(shard, "r:*") as tf:
                fh = tf.extractfile(member)
                if fh is None:
                    raise OSError(f"{member!r} is not a file in {shard}")
                return fh.read()
        offset, size = self._locate(shard, member)
        with open(shard, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        if len(data) != size:
            raise OSError(f"tar member {member!r} is truncated")
        return data

    def _locate(self, shard: str, member: str) -> tuple[int, int]:
        table = self._members.get(shard)
        if table is None:
            try:
                with tarfile.open(shard, "r:") as tf:
                    table = {m.name: (m.offset_data, m.size) for m in tf if m.isfile()}
            except tarfile.TarError as ex:
                raise OSError(f"cannot read tar shard {shard}: {ex}") from ex
            self._members.put(shard, table)
        if member not in table:
            raise OSError(f"{member!r} is no longer in {shard}")
        return table[member]


def make_thumbnail(data: bytes, size: int, *, max_pixels: int, name: str) -> bytes:
    """Encoded image bytes -> JPEG bytes whose longer side is at most `size`.

    Raises:
        ImageError: the bytes are not a decodable image (or over the pixel cap).
    """
    image = open_image(data, target_size=size, max_pixels=max_pixels, name=name)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=82, optimize=True, progressive=True)
    return out.getvalue()


class Thumbnails:
    """Thumbnail maker with an LRU cache keyed by (item id, content hash, size)."""

    def __init__(self, capacity: int, max_pixels: int,
                 reader: Callable[[str], bytes] | None = None) -> None:
        self.cache: LRU[tuple[int, str, int], bytes] = LRU(capacity)
        self.max_pixels = max_pixels
        self.reader = reader or ItemReader().read

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
        thumb = make_thumbnail(data, size, max_pixels=self.max_pixels, name=f"item {item_id}")
        self.cache.put(cache_key, thumb)
        return thumb
