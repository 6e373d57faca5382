"""The add run behind `clipsift.Index.add`: plan each item against the catalog, feed the
new and changed ones through the pipeline, and commit every batch atomically.

A planner decides per item: unchanged (same size and mtime), changed (hashed; same bytes
is no work), new bytes (encoded), or bytes already indexed (a rename or a copy, decided
after the complete walk). Removals and renames are applied only after a complete walk, so
a killed run redoes them next time.
"""

from __future__ import annotations

import glob
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipsift.index.store import CatalogRow, NewItem, Store, content_hash

if TYPE_CHECKING:
    from clipsift.engines import Engine
    from clipsift.inputs.sources import Item
    from clipsift.models.base import ClipModel

_PLAN_CHUNK = 256
_COUNTS = ("added", "updated", "renamed", "removed", "unchanged", "errors", "encoded")


@dataclass(frozen=True)
class AddSummary:
    """What one `Index.add` run did: items `added` (encoded, or copied from identical
    content), `updated` (changed), `renamed` (recognised by content hash, not re-encoded),
    `removed` (files gone), `unchanged`, `errors` (failed in this run; see
    `Index.errors()`), `encoded` (went through the model); `interrupted` when stopped early
    (committed batches are kept)."""

    added: int
    updated: int
    renamed: int
    removed: int
    unchanged: int
    errors: int
    encoded: int
    seconds: float
    interrupted: bool = False


@dataclass(frozen=True)
class AddProgress:
    """Passed to the `progress` callback after each committed batch."""

    done: int
    encoded: int
    errors: int
    seconds: float


def _in_scope(inputs: list[str], recursive: bool) -> Callable[[str], bool]:
    """Predicate: is a catalog key inside a folder/shard this run walked completely?"""
    from clipsift.inputs.keys import TAR_SUFFIXES, join_key

    folders: list[str] = []
    prefixes: list[str] = []
    for text in inputs:
        for p in [text] if os.path.exists(text) else glob.glob(text, recursive=True):
            full = os.path.abspath(p)
            if os.path.isdir(full):
                folders.append(os.path.join(full, ""))
            elif full.lower().endswith(TAR_SUFFIXES):
                prefixes.append(join_key(full, ""))

    def check(key: str) -> bool:
        if any(key.startswith(p) for p in prefixes):
            return True
        if recursive:
            return any(key.startswith(f) for f in folders)
        return os.path.join(os.path.dirname(key), "") in folders

    return check


def _size(item: Item) -> int:
    return -1 if item.size is None else int(item.size)


def _mtime(item: Item) -> float:  # -1: unknown (a listed file that does not exist)
    return -1.0 if item.mtime is None else float(item.mtime)


def _gone(key: str, in_scope: Callable[[str], bool]) -> bool:
    """An item not seen in a complete run is gone if its folder was walked or its file left."""
    from clipsift.inputs.keys import split_key

    return in_scope(key) or not os.path.exists(split_key(key)[0])


@dataclass
class _Candidate:
    """A new key whose bytes are already indexed: a rename or a copy, decided at the end."""

    item: Item
    size: int
    mtime: float
    digest: str
    source: int


class AddRun:
    """State of one `Index.add`: a planner feeding the pipeline, and the batch writer."""

    def __init__(self, store: Store, model: ClipModel, stop: threading.Event,
                 progress: Callable[[AddProgress], None] | None) -> None:
        self.store, self.model, self.stop, self.progress = store, model, stop, progress
        self.n = dict.fromkeys(_COUNTS, 0)
        self.done = 0
        self.seen: set[int] = set()
        self.pending: dict[str, tuple[int | None, str]] = {}  # key -> (row id, hash)
        self.actions: list[Callable[[], int | None]] = []  # writes for the next transaction
        self.candidates: list[_Candidate] = []
        self.t0 = time.perf_counter()
        self.engine: Engine | None = None

    def execute(self, inputs: list[str], *, batch_size: int, workers: int | None,
                recursive: bool) -> AddSummary:
        from clipsift.inputs.sources import iter_items

        self._embed(self.plan(iter_items(inputs, recursive=recursive)), batch_size, workers)
        if not self.stop.is_set():  # content whose source changed during the run
            self._embed(self._unresolved(), batch_size, 0)
        if self.stop.is_set():
            self.write([])
        else:
            self.finish(_in_scope(inputs, recursive))
        return AddSummary(**self.n, seconds=time.perf_counter() - self.t0,
                          interrupted=self.stop.is_set())

    def _embed(self, items: Iterator[Item], batch_size: int, workers: int | None) -> None:
        from clipsift.engines.local import embed_items

        if self.engine is not None:
            batches = self.engine.embed(self.model, items, batch_size=batch_size, stop=self.stop)
        else:
            batches = embed_items(self.model, items, batch_size=batch_size, workers=workers,
                                  stop=self.stop)
        try:
            for batch in batches:
                self.write(batch)
        except BaseException:
            self.stop.set()
            batches.close()
            raise

    # ---- planning (runs lazily inside the pipeline's reader) -----------------------------
    def plan(self, items: Iterator[Item]) -> Iterator[Item]:
        """Yield the items that need the model; queue cheaper writes for the next commit."""
        while chunk := list(itertools.islice(items, _PLAN_CHUNK)):
            rows = self.store.lookup([it.key for it in chunk])
            for item in chunk:
                if self.stop.is_set():
                    return
                if self._plan_one(item, rows.get(item.key)):
                    yield item

    def _plan_one(self, item: Item, row: CatalogRow | None) -> bool:
        size, mtime = _size(item), _mtime(item)
        if row is not None:
            self.seen.add(row.id)
            if row.size == size and row.mtime == mtime:
                self._count("unchanged")
                return False
        try:
            digest = content_hash(item.read_bytes())
        except OSError as ex:
            failed = NewItem(item.key, size, mtime, None, None, f"cannot read: {ex.strerror or ex}")
            if row is None:
                self.actions.append(lambda: self.store.insert(failed))
            else:
                self.actions.append(lambda: self.store.replace(row.id, failed))
            self._count("errors")
            return False
        if row is not None and row.hash == digest:
            self.actions.append(lambda: self.store.touch(row.id, size, mtime))
            self._count("unchanged")
            return False
        source = self.store.find_ok_by_hash(digest)
        if source is not None and row is None:
            self.candidates.append(_Candidate(item, size, mtime, digest, source))
            return False
        if source is not None and row is not None:  # actions run before later re-encodes
            self.actions.append(lambda: self.store.copy_into(source, row.id, size, mtime))
            self._count("updated")
            return False
        self.pending[item.key] = (row.id if row else None, digest)
        return True

    def _count(self, field: str) -> None:
        self.n[field] += 1
        self.done += 1

    def _unresolved(self) -> Iterator[Item]:
        """Candidates whose content no longer exists in the index (the source changed)."""
        sources = self.store.rows([c.source for c in self.candidates])
        keep = []
        for c in self.candidates:
            src = sources.get(c.source)
            if src is None or src.hash != c.digest or src.status != "ok":
                alt = self.store.find_ok_by_hash(c.digest)
                if alt is None:
                    self.pending[c.item.key] = (None, c.digest)
                    yield c.item
                    continue
                c.source = alt
            keep.append(c)
        self.candidates = keep

    # ---- writing (main thread, one transaction per batch) ------------------------------
    def _apply_actions(self) -> None:
        actions, self.actions = self.actions, []
        for action in actions:
            new_id = action()
            if new_id is not None:
                self.seen.add(new_id)

    def write(self, batch: list[Any]) -> None:
        """Commit one pipeline batch plus queued writes atomically."""
        with self.store.transaction():
            self._apply_actions()
            for res in batch:
                self.n["encoded"] += 1
                planned = self.pending.pop(res.item.key, None)
                if planned is None:
                    continue  # the same input listed twice: already written
                (row_id, digest), it = planned, res.item
                item = NewItem(it.key, _size(it), _mtime(it), digest, res.vector, res.error,
                               res.width, res.height)
                if row_id is None:
                    self.seen.add(self.store.insert(item) or 0)
                else:
                    self.store.replace(row_id, item)
                self._count("errors" if res.vector is None else
                            "added" if row_id is None else "updated")
        self._report()

    def _report(self) -> None:
        if self.progress is not None:
            seconds = time.perf_counter() - self.t0
            self.progress(AddProgress(self.done, self.n["encoded"], self.n["errors"], seconds))

    def finish(self, in_scope: Callable[[str], bool]) -> None:
        """After a complete walk: renames/copies by content hash, then removals."""
        with self.store.transaction():
            self._apply_actions()
            self._resolve_candidates(in_scope)
            gone = [row.id for row in self.store.iter_rows()
                    if row.id not in self.seen and _gone(row.key, in_scope)]
            self.n["removed"] += self.store.delete(gone)
        self._report()

    def _resolve_candidates(self, in_scope: Callable[[str], bool]) -> None:
        sources = self.store.rows([c.source for c in self.candidates])
        for c in self.candidates:
            src, key = sources.get(c.source), c.item.key
            if src is None:  # cannot happen under the writer lock; the next run retries
                continue
            if c.source not in self.seen and _gone(src.key, in_scope) and not self.store.lookup(
                    [key]):
                self.store.touch(c.source, c.size, c.mtime, key=key)
                self.seen.add(c.source)
                self._count("renamed")
                continue
            new_id = self.store.insert_copy(c.source, key, c.size, c.mtime)
            if new_id is not None:
                self.seen.add(new_id)
                self._count("added")
