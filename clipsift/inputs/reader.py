"""Read an item back from its key: what an index, a collection or a manifest recorded.

Keys are those of `clipsift.inputs.sources.Item`: an absolute file path, or
"/abs/shard.tar::member/name" for tar members. Members of uncompressed shards are read by
offset from a table of the shard's members (cached per shard file *version*: a rewritten
shard gets a new table, never stale offsets); members of compressed shards are extracted.
Reading goes through `Item.read_bytes`, so FIFOs, sockets and devices are refused at once.
"""

from __future__ import annotations

import os
import tarfile
import threading
from collections import OrderedDict

from clipsift.inputs.files import check_regular, open_regular
from clipsift.inputs.keys import split_key
from clipsift.inputs.sources import Item

_Table = dict[str, tuple[int, int] | None]  # member -> (data offset, size); None: sparse


class KeyReader:
    """Turn item keys back into readable items (thread-safe; caches a few shard tables).

    Args:
        shards: how many shards' member tables to keep.

    Example:
        >>> reader = KeyReader()
        >>> data = reader.read("/data/shard-0001.tar::cats/001.jpg")
    """

    def __init__(self, shards: int = 8) -> None:
        self._capacity = max(1, shards)
        self._tables: OrderedDict[tuple[str, int, int], _Table] = OrderedDict()
        self._lock = threading.Lock()

    def item(self, key: str) -> Item:
        """The item a key names.

        Args:
            key: a file path, or "shard.tar::member".

        Returns:
            An `Item` to `read_bytes()` from (a compressed shard's member carries its data).

        Raises:
            OSError: the shard cannot be read or no longer holds the member.
        """
        shard, member = split_key(key)
        if member is None or os.path.lexists(key):
            return Item(key, key)
        if not shard.lower().endswith(".tar"):  # compressed shards cannot be seeked
            return Item(key, None, shard=shard, data=_extract(shard, member))
        where = self._locate(shard, member)
        if where is None:  # a sparse member is not stored contiguously: extract it
            return Item(key, None, shard=shard, data=_extract(shard, member))
        return Item(key, None, size=where[1], shard=shard, offset=where[0])

    def read(self, key: str) -> bytes:
        """The bytes of the item a key names (see `item`).

        Raises:
            OSError: the file or shard cannot be read, is not a regular file, or no longer
                holds the member.
        """
        return self.item(key).read_bytes()

    def _locate(self, shard: str, member: str) -> tuple[int, int] | None:
        st = check_regular(shard)
        version = (shard, st.st_size, st.st_mtime_ns)
        with self._lock:
            table = self._tables.get(version)
            if table is not None:
                self._tables.move_to_end(version)
        if table is None:
            table = _member_table(shard)
            with self._lock:
                self._tables[version] = table
                while len(self._tables) > self._capacity:
                    self._tables.popitem(last=False)
        if member not in table:
            raise OSError(f"{member!r} is no longer in {shard}")
        return table[member]


def _member_table(shard: str) -> _Table:
    try:
        with open_regular(shard) as fh, tarfile.open(shard, "r:", fileobj=fh) as tf:
            return {m.name: None if m.issparse() else (m.offset_data, m.size)
                    for m in tf if m.isfile()}
    except tarfile.TarError as ex:
        raise OSError(f"cannot read tar shard {shard}: {ex}") from ex


def _extract(shard: str, member: str) -> bytes:
    try:
        with open_regular(shard) as fh, tarfile.open(shard, "r:*", fileobj=fh) as tf:
            data = tf.extractfile(member)
            if data is None:
                raise OSError(f"{member!r} is not a file in {shard}")
            return data.read()
    except KeyError as ex:
        raise OSError(f"{member!r} is no longer in {shard}") from ex
    except tarfile.TarError as ex:
        raise OSError(f"cannot read tar shard {shard}: {ex}") from ex
