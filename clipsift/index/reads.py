"""Reading an index's store: catalog rows, vectors, counts, tombstones (the read half of
`clipsift.index.store.Store`, which inherits it). Only `clipsift.index` uses this module."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from clipsift.index.records import CatalogRow, StoreMeta
from clipsift.inputs.keys import key_from_sql, sql_value

_CHUNK = 500  # max host parameters per IN (...) query


class StoreReads:
    """The read queries of a store (`self.db`: its connection, `self.meta`: its meta)."""

    path: Path
    db: sqlite3.Connection
    meta: StoreMeta

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        """One read transaction: every read inside sees the same committed state, whatever
        other connections commit meanwhile (WAL). Inside a transaction already: that one."""
        if self.db.in_transaction:
            yield
            return
        self.db.execute("BEGIN")  # deferred: the snapshot starts at the first read
        try:
            yield
        finally:
            self.db.execute("COMMIT")

    def generation(self) -> int:
        """A counter bumped by every committed write transaction."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def lookup(self, keys: Sequence[str]) -> dict[str, CatalogRow]:
        """Catalog rows for the given keys (missing keys are absent from the result)."""
        out: dict[str, CatalogRow] = {}
        for chunk in chunks(list(keys)):
            marks = ",".join("?" * len(chunk))
            for values in self.db.execute(f"{_SELECT_ROW} WHERE key IN ({marks})",
                                          [sql_value(k) for k in chunk]):
                row = _row(values)
                out[row.key] = row
        return out

    def rows(self, ids: Sequence[int]) -> dict[int, CatalogRow]:
        out: dict[int, CatalogRow] = {}
        for chunk in chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(f"{_SELECT_ROW} WHERE id IN ({marks})", chunk):
                out[row[0]] = _row(row)
        return out

    def find_ok_by_hash(self, digest: str) -> int | None:
        """Id of an 'ok' item with this content hash, if any."""
        row = self.db.execute(
            "SELECT id FROM items WHERE hash = ? AND status = 'ok' ORDER BY id LIMIT 1",
            (digest,),
        ).fetchone()
        return int(row[0]) if row else None

    def iter_rows(self, status: str | None = None, chunk: int = 10_000) -> Iterator[CatalogRow]:
        """All catalog rows in id order, read in chunks (memory stays flat)."""
        last = -1
        where = "AND status = ?" if status else ""
        while True:
            args: tuple = (last, status, chunk) if status else (last, chunk)
            batch = self.db.execute(
                f"{_SELECT_ROW} WHERE id > ? {where} ORDER BY id LIMIT ?", args
            ).fetchall()
            if not batch:
                return
            yield from (_row(r) for r in batch)
            last = batch[-1][0]

    def count(self, status: str | None = None) -> int:
        if status is None:
            return int(self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM items WHERE status = ?",
                                   (status,)).fetchone()[0])

    def vector_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def has_vectors(self) -> bool:
        """Whether any vector is stored (cheap, unlike `vector_count`)."""
        return self.db.execute("SELECT 1 FROM vectors LIMIT 1").fetchone() is not None

    def iter_vectors(self, chunk: int = 65_536, since_gen: int = -1,
                     stride: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids int64 [n], vectors float16 [n, dim]) in id order.

        `since_gen` keeps only vectors written after that generation; `stride` keeps ids
        divisible by it (a cheap spread-out sample for training).
        """
        last = -1
        while True:
            rows = self.db.execute(
                "SELECT id, vec FROM vectors WHERE id > ? AND gen > ? AND id % ? = 0 "
                "ORDER BY id LIMIT ?", (last, since_gen, stride, chunk),
            ).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, self._decode(b"".join(r[1] for r in rows), len(rows))
            last = int(ids[-1])

    def get_vectors(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(found ids int64 [n], float16 [n, dim]) for the ids that still have vectors."""
        found: list[int] = []
        blobs: list[bytes] = []
        for chunk in chunks([int(i) for i in ids]):
            marks = ",".join("?" * len(chunk))
            for row_id, blob in self.db.execute(
                f"SELECT id, vec FROM vectors WHERE id IN ({marks})", chunk
            ):
                found.append(row_id)
                blobs.append(blob)
        return np.asarray(found, dtype=np.int64), self._decode(b"".join(blobs), len(found))

    def changed_ids_since(self, gen: int) -> np.ndarray:
        """Ids whose vector was written after generation `gen` (int64 [n])."""
        rows = self.db.execute("SELECT id FROM vectors WHERE gen > ?", (gen,)).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def tombstones_since(self, gen: int) -> np.ndarray:
        """Ids whose vector was removed after generation `gen` (int64 [n])."""
        rows = self.db.execute("SELECT id FROM tombstones WHERE gen > ?", (gen,)).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def _decode(self, raw: bytes, n: int) -> np.ndarray:
        return np.frombuffer(raw, dtype="<f2").reshape(n, self.meta.dim)



_SELECT_ROW = "SELECT id, key, size, mtime, hash, status, error, width, height FROM items"


def _row(values: Sequence) -> CatalogRow:
    """A CatalogRow from a `_SELECT_ROW` result (keys that are not UTF-8 are BLOBs)."""
    return CatalogRow(values[0], key_from_sql(values[1]), *values[2:])


def chunks(values: list, size: int = _CHUNK) -> Iterator[list]:
    """`values` in slices of at most `size` (the host parameters of one IN (...) query)."""
    for start in range(0, len(values), size):
        yield values[start : start + size]
