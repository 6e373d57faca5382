"""The evaluation embedding cache: image vectors (or decode errors) of dataset samples,
keyed by the model's fingerprint and decode mode, the item's key, size and mtime."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsift.errors import UsageError
from clipsift.inputs.keys import key_from_sql, sql_value

if TYPE_CHECKING:
    from clipsift.inputs.sources import Item
    from clipsift.models.base import ClipModel


def default_cache_path() -> Path:
    """Where evaluation embeddings are cached: <clipsift cache>/eval-embeddings.sqlite."""
    from clipsift.models.resolve import cache_dir

    return cache_dir() / "eval-embeddings.sqlite"


def cache_key(model: ClipModel, decode_mode: str = "exact") -> str:
    """The model part of an embedding cache key: the model's fingerprint (weights +
    preprocessing + tokenizer + precision class), not its name, so a retrained model or
    another folder with the same name never reads this one's vectors; and the decode mode
    ("exact" / "fast"), so vectors of the two modes are never mixed."""
    return f"fp:{model.fingerprint.digest}|decode={decode_mode}"


class EmbeddingCache:
    """Image vectors (or decode errors) keyed by model (`cache_key`) + item key, size and
    mtime.

    A changed file (other size or mtime) is a miss, so stale vectors are never used.
    Use as a context manager: `with EmbeddingCache(default_cache_path()) as cache: ...`
    """

    def __init__(self, path: str | os.PathLike) -> None:
        import sqlite3

        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path), timeout=30.0)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS vecs (model TEXT NOT NULL, key TEXT NOT NULL, "
                "size INTEGER NOT NULL, mtime REAL NOT NULL, vec BLOB, error TEXT, "
                "PRIMARY KEY (model, key))")
        except (OSError, sqlite3.Error) as ex:
            raise UsageError(f"cannot use embedding cache {str(self.path)!r}: {ex}; pass "
                             "another cache path or turn the cache off") from ex

    def get(self, model: str, items: Sequence[Item]) -> dict[str, tuple[bytes | None, str | None]]:
        """{key: (float32 bytes | None, error | None)} for items cached under `model` (a
        `cache_key`) with the same size/mtime."""
        wanted = {it.key: it for it in items if it.size is not None and it.mtime is not None}
        keys = list(wanted)
        out: dict[str, tuple[bytes | None, str | None]] = {}
        for start in range(0, len(keys), 500):
            chunk = keys[start:start + 500]
            q = ("SELECT key, size, mtime, vec, error FROM vecs WHERE model = ? AND key IN "
                 f"({','.join('?' * len(chunk))})")
            for raw, size, mtime, vec, error in self.db.execute(
                    q, [model, *(sql_value(k) for k in chunk)]):
                key = key_from_sql(raw)
                it = wanted[key]
                if size == it.size and abs(mtime - float(it.mtime or 0)) < 1e-6:
                    out[key] = (vec, error)
        return out

    def put(self, model: str, entries: Sequence[tuple[Item, np.ndarray | None, str | None]]
            ) -> None:
        """Store (item, vector | None, error | None) for items with a known size and mtime."""
        rows = [(model, sql_value(it.key), it.size, it.mtime,
                 None if vec is None else np.asarray(vec, "<f4").tobytes(), err)
                for it, vec, err in entries if it.size is not None and it.mtime is not None]
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO vecs VALUES (?, ?, ?, ?, ?, ?)", rows)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
