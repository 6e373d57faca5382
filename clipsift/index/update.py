"""The add run behind `clipsift.Index.add`: plan each item against the catalog, feed the
new and changed ones through the pipeline, and commit every batch atomically.

A planner decides per item: unchanged (same size and mtime), changed (hashed; same bytes
is no work), new bytes (encoded), bytes already indexed (a rename or a copy, decided after
the complete walk), or stale (its vector was dropped when the index changed model: encoded
again). Removals and renames are applied only after a complete walk, so a killed run redoes
them next time, and only under the roots walked, for files confirmed gone
(`clipsift.index.scope`). Folders and files that cannot be read are recorded as problems
(`Store.problems`); their entries and vectors are kept.
"""

from __future__ import annotations

import collections
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from clipsift.index.records import STATUS_STALE, CatalogRow, NewItem, content_hash
from clipsift.index.scope import Scope
from clipsift.inputs.sources import GONE_ERRNOS, WalkError

if TYPE_CHECKING:
    from clipsift.engines import Engine
    from clipsift.index.store import Store
    from clipsift.inputs.sources import Item
    from clipsift.models.base import ClipModel

_PLAN_CHUNK = 256
_COUNTS = ("added", "updated", "renamed", "removed", "unchanged", "errors", "encoded",
           "unreadable")


@dataclass(frozen=True)
class AddSummary:
    """What one `Index.add` run did.

    Attributes:
        added: items encoded, or copied from identical content.
        updated: changed items (and stale ones embedded again by a new model).
        renamed: recognised by content hash, not re-encoded.
        removed: files confirmed gone under the walked roots.
        unchanged: same size and mtime (or same bytes).
        errors: items that failed in this run (`Index.errors()`, `Index.problems()`).
        encoded: items that went through the model.
        unreadable: folders and files that could not be read; their entries were kept
            (`Index.problems()`).
        interrupted: stopped early (committed batches are kept; run again to resume).
        stale: items still waiting to be embedded by the index's model (outside the
            roots of this run, after `reembed`).
        notice: something to tell the user once (e.g. a fingerprint adopted).
    """

    added: int
    updated: int
    renamed: int
    removed: int
    unchanged: int
    errors: int
    encoded: int
    seconds: float
    unreadable: int = 0
    interrupted: bool = False
    stale: int = 0
    notice: str | None = None

    @property
    def incomplete(self) -> bool:
        """Something could not be read: its entries were kept as they were."""
        return self.unreadable > 0


@dataclass(frozen=True)
class AddProgress:
    """Passed to the `progress` callback after each committed batch."""

    done: int
    encoded: int
    errors: int
    seconds: float


def _size(item: Item) -> int:
    return -1 if item.size is None else int(item.size)


def _mtime(item: Item) -> float:  # -1: unknown (a listed file that does not exist)
    return -1.0 if item.mtime is None else float(item.mtime)


def _confirmed_missing(item: Item, ex: OSError) -> bool:
    """A read failed because the file is gone (its folder still exists), or its content
    is bad (a truncated tar member): an item error. Anything else may pass (a permission,
    a disk, a network share): a problem, and the item's entry is kept. A path that is not a
    regular file (a FIFO, socket, device or folder named like an image) is an item error
    too: reading it will never give an image."""
    from clipsift.inputs.files import NotRegularFileError

    if ex.errno is None or isinstance(ex, NotRegularFileError | IsADirectoryError):
        return True
    where = item.path or item.shard or item.key
    return ex.errno in GONE_ERRNOS and os.path.isdir(os.path.dirname(where))


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
        self.scope: Scope | None = None
        # problems: reported by this run (queued for the next commit), known from earlier
        # runs (their files are read again), and earlier ones this run found readable
        self.new_problems: collections.deque[tuple[str, str, str]] = collections.deque()
        self.reported: set[str] = set()
        self.known_problems = {p.key for p in store.problems()}
        self.resolved: set[str] = set()

    def execute(self, inputs: list[str], *, batch_size: int, workers: int | None,
                recursive: bool) -> AddSummary:
        from clipsift.inputs.sources import iter_items

        self.scope = Scope(inputs, recursive)
        items = iter_items(inputs, recursive=recursive, on_error=self._walk_error)
        self._embed(self.plan(items), batch_size, workers)
        if not self.stop.is_set():  # content whose source changed during the run
            self._embed(self._unresolved(), batch_size, 0)
        if self.stop.is_set():
            self.write([])
        else:
            self.finish(self.scope)
        return AddSummary(**self.n, seconds=time.perf_counter() - self.t0,
                          interrupted=self.stop.is_set(),
                          stale=self.store.count(STATUS_STALE))

    def _walk_error(self, error: WalkError) -> None:
        """A folder (or entry) that could not be listed: keep its entries, report it."""
        if self.scope is not None:
            self.scope.unreadable.append(error)
        self._problem(error.path, "folder", error.message)

    def _problem(self, key: str, kind: str, error: str) -> None:
        self.new_problems.append((key, kind, error))
        self.reported.add(key)
        self.n["unreadable"] += 1

    def _embed(self, items: Iterator[Item], batch_size: int, workers: int | None) -> None:
        from clipsift.engines import engine_or_local

        engine = engine_or_local(self.engine, workers)
        batches = engine.embed(self.model, items, batch_size=batch_size, stop=self.stop)
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
        recheck = item.key in self.known_problems  # unreadable last time: read it again
        stale = row is not None and row.status == STATUS_STALE
        if row is not None:
            self.seen.add(row.id)
            if row.size == size and row.mtime == mtime and not (stale or recheck):
                self._count("unchanged")
                return False
        try:
            digest = content_hash(item.read_bytes())
        except OSError as ex:
            self._unreadable(item, row, ex)
            return False
        if recheck:
            self.resolved.add(item.key)
        if row is not None and row.hash == digest and not stale:
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

    def _unreadable(self, item: Item, row: CatalogRow | None, ex: OSError) -> None:
        """A file that cannot be read: an item error when it is confirmed missing or bad,
        else a problem, and its entry and vector (if any) stay as they are."""
        reason = f"cannot read: {ex.strerror or ex}"
        self._count("errors")
        if not _confirmed_missing(item, ex):
            self._problem(item.key, "file", reason)
            return
        failed = NewItem(item.key, _size(item), _mtime(item), None, None, reason)
        if row is None:
            self.actions.append(lambda: self.store.insert(failed))
        else:
            self.actions.append(lambda: self.store.replace(row.id, failed))

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
        problems = []
        while self.new_problems:  # the walker appends from the pipeline's reader thread
            problems.append(self.new_problems.popleft())
        if problems:
            self.store.put_problems(problems)

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

    def finish(self, scope: Scope) -> None:
        """After a complete walk: renames/copies by content hash, removals of files
        confirmed gone under the walked roots, and problems that are over."""
        with self.store.transaction():
            self._apply_actions()
            self._resolve_candidates(scope)
            gone = [row.id for row in self.store.iter_rows()
                    if row.id not in self.seen and scope.removable(row.key)]
            self.n["removed"] += self.store.delete(gone)
            over = [p.key for p in self.store.problems() if p.key not in self.reported
                    and (p.key in self.resolved or scope.owns(p.key))]
            self.store.clear_problems(over)
        self._report()

    def _resolve_candidates(self, scope: Scope) -> None:
        """A new key whose bytes are indexed under a key this run walked and found gone is
        a rename; anything else (the source still there, or outside the walked roots, or
        not confirmed gone) is a copy: no re-encoding either way, and nothing lost."""
        sources = self.store.rows([c.source for c in self.candidates])
        for c in self.candidates:
            src, key = sources.get(c.source), c.item.key
            if src is None:  # cannot happen under the writer lock; the next run retries
                continue
            if c.source not in self.seen and scope.removable(src.key) and not \
                    self.store.lookup([key]):
                self.store.touch(c.source, c.size, c.mtime, key=key)
                self.seen.add(c.source)
                self._count("renamed")
                continue
            new_id = self.store.insert_copy(c.source, key, c.size, c.mtime)
            if new_id is not None:
                self.seen.add(new_id)
                self._count("added")
