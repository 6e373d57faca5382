"""`Index`: an image collection embedded into one SQLite store, searchable through FAISS.

    >>> import clipsift
    >>> idx = clipsift.Index("photos.db", model="mini")       # creates it if missing
    >>> summary = idx.add(["~/Pictures"])                       # incremental, crash-safe
    >>> idx.search('"beach" - "people"', k=5)                   # [Hit(id, path, score), ...]

`add` streams items (clipsift.sources) through the bulk pipeline (clipsift.pipeline) and
commits each batch (catalog rows + vectors) in one transaction, under a single-writer lock.
Unchanged files (same size, mtime) are skipped; changed ones are hashed (same bytes: no
work); content already indexed is copied, not re-encoded; a vanished file whose bytes
reappear under a new key is a rename (id and vector kept). Removals and renames are applied
after a complete walk, so a killed run simply redoes them next time.
"""

from __future__ import annotations

import glob
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsift.errors import ModelMismatch, UsageError
from clipsift.search import CaptionHit, Hit, Query, parse_query, query_vector, rank_captions
from clipsift.store import STATUS_ERROR, CatalogRow, NewItem, Store, content_hash, writer_lock
from clipsift.vectorindex import AnnConfig, VectorIndex

if TYPE_CHECKING:
    from PIL import Image

    from clipsift.engines import Engine
    from clipsift.models.base import ClipModel
    from clipsift.sources import Item

INDEX_SUFFIX = ".db"
_PLAN_CHUNK = 256
_COUNTS = ("added", "updated", "renamed", "removed", "unchanged", "errors", "encoded")


def resolve_index_path(name_or_path: str | os.PathLike) -> Path:
    """A bare name ("photos") lives in the index folder; anything else is a path.

    The index folder is $CLIPSIFT_INDEX_DIR, else $XDG_DATA_HOME/clipsift/indexes
    (~/.local/share/clipsift/indexes).
    """
    text = os.fspath(name_or_path)
    p = Path(text).expanduser()
    if p.suffix or os.sep in text or p.exists():
        return p
    base = os.environ.get("CLIPSIFT_INDEX_DIR")
    if not base:
        data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
        base = os.path.join(data, "clipsift", "indexes")
    return Path(base) / f"{text}{INDEX_SUFFIX}"


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


@dataclass(frozen=True)
class IndexInfo:
    """What `Index.info` reports."""

    path: Path
    model: str
    dim: int
    items: int
    errors: int
    schema_version: int


class Index:
    """An image index: one SQLite file plus a derived FAISS cache next to it.

    Args:
        path: index file, or a bare name resolved by `resolve_index_path`.
        model: a loaded `ClipModel`, a model name, or None to use the one recorded in the
            index (loaded on first need). Required to create a new index.
        ann: when/how to use approximate search (default: IVF-PQ from 200k vectors).
        create: create the index when missing (needs `model`).

    Raises:
        ModelMismatch: the index was built with another model.
        UsageError: no index at `path` (and not creating), or no model to create one.
    """

    def __init__(self, path: str | os.PathLike, model: ClipModel | str | None = None, *,
                 ann: AnnConfig | None = None, create: bool = True) -> None:
        self.path = resolve_index_path(path)
        self._model: ClipModel | None = None
        if not self.path.exists() and create and model is not None:
            self.store = self._create(model)
        else:
            self.store = Store.open(self.path)
            if model is not None:
                self._check_model(model)
        self.vectors = VectorIndex(self.store, ann)

    def _create(self, model: ClipModel | str) -> Store:
        loaded = _load_model(model) if isinstance(model, str) else model
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with writer_lock(self.path):
            if self.path.exists():  # created meanwhile by another process
                store = Store.open(self.path)
            else:
                store = Store.create(self.path, model=loaded.name, dim=loaded.dim)
        self._model = loaded
        self._check_model_on(store, loaded)
        return store

    def _check_model(self, model: ClipModel | str) -> None:
        if isinstance(model, str) and model == self.store.meta.model:
            return
        loaded = _load_model(model) if isinstance(model, str) else model
        self._check_model_on(self.store, loaded)
        self._model = loaded

    def _check_model_on(self, store: Store, model: ClipModel) -> None:
        meta = store.meta
        if model.name != meta.model or model.dim != meta.dim:
            raise ModelMismatch(
                f"index {self.path} was built with model {meta.model!r} (dim {meta.dim}), "
                f"not {model.name!r} (dim {model.dim}); use --model {meta.model} (or leave "
                "--model out), or choose another index for the new model"
            )

    @property
    def model(self) -> ClipModel:
        """The index's model, loaded on first use from the name it records."""
        if self._model is None:
            loaded = _load_model(self.store.meta.model)
            self._check_model_on(self.store, loaded)
            self._model = loaded
        return self._model

    @property
    def info(self) -> IndexInfo:
        meta = self.store.meta
        return IndexInfo(self.path, meta.model, meta.dim, self.store.count(),
                         self.store.count(STATUS_ERROR), meta.schema_version)

    def __len__(self) -> int:
        return self.store.vector_count()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()

    # ---- indexing -----------------------------------------------------------------------
    def add(self, inputs: Sequence[str | os.PathLike], *, batch_size: int = 64,
            workers: int | None = None, recursive: bool = True,
            stop: threading.Event | None = None,
            progress: Callable[[AddProgress], None] | None = None,
            engine: Engine | None = None) -> AddSummary:
        """Bring the index up to date with `inputs` (files, folders, globs, tars, lists).

        `engine` runs the decode/encode stages elsewhere (`clipsift.engines.make_engine`,
        e.g. Ray); planning and the atomic batch writes stay in this process.
        Setting `stop` (e.g. from a Ctrl-C handler) ends the run after the current batch;
        committed work is kept and the summary says `interrupted`.

        Raises:
            IndexInUse: another writer holds the index.
            UsageError: an input does not exist.
        """
        texts = [os.fspath(p) for p in inputs]
        _check_inputs(texts)
        with writer_lock(self.path):
            run = _AddRun(self.store, self.model, stop or threading.Event(), progress)
            run.engine = engine
            return run.execute(texts, batch_size=batch_size, workers=workers,
                               recursive=recursive)

    def errors(self) -> list[CatalogRow]:
        """Items that could not be embedded, with their reasons."""
        return list(self.store.iter_rows(status=STATUS_ERROR))

    # ---- search -------------------------------------------------------------------------
    def search(self, query: str | Query | np.ndarray, k: int = 10,
               threshold: float | None = None) -> list[Hit]:
        """Text, combined (`"beach" - "people"`, `2:sunset`), image or id query -> hits.

        Example:
            >>> idx.search("a dog on grass", k=3)
            [Hit(id=12, path='/photos/dog.jpg', score=0.31), ...]
        """
        if isinstance(query, np.ndarray):
            return self.search_vector(query, k, threshold)
        parsed = parse_query(query) if isinstance(query, str) else query
        vec = query_vector(parsed, self.model.encode_texts, self.model.encode_images,
                           self._stored_vectors)
        return self.search_vector(vec, k, threshold)

    def search_image(self, image: str | os.PathLike | Image.Image, k: int = 10,
                     threshold: float | None = None) -> list[Hit]:
        """Image→image: items closest to an image file or PIL image."""
        return self.search_vector(self.image_vector(image), k, threshold)

    def search_captions(self, image: str | os.PathLike | Image.Image, captions: Sequence[str],
                        k: int = 5, threshold: float | None = None) -> list[CaptionHit]:
        """Image→text: rank `captions` by similarity to `image` with the index's model."""
        if not captions:
            raise UsageError("no captions to rank; give at least one")
        cap_vecs = self.model.encode_texts(list(captions))  # [N, D]
        return rank_captions(self.image_vector(image), cap_vecs, captions, k, threshold)

    def search_vector(self, vector: np.ndarray, k: int = 10,
                      threshold: float | None = None) -> list[Hit]:
        """Items closest to a unit vector [D] by inner product."""
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        vec = np.asarray(vector, np.float32).reshape(1, -1)
        if vec.shape[1] != self.store.meta.dim:
            raise UsageError(
                f"query vector has dim {vec.shape[1]}, the index has {self.store.meta.dim}"
            )
        scores, ids = self.vectors.search(vec, k)
        rows = self.store.rows([int(i) for i in ids[0] if i >= 0])
        hits = [Hit(int(i), rows[int(i)].key, float(s))
                for s, i in zip(scores[0], ids[0], strict=True) if int(i) in rows]
        return [h for h in hits if threshold is None or h.score >= threshold]

    def image_vector(self, image: str | os.PathLike | Image.Image) -> np.ndarray:
        """Embed one image (path or PIL image) with the index's model -> float32 [D]."""
        src: Any = os.fspath(image) if isinstance(image, str | os.PathLike) else image
        return self.model.encode_images([src])[0]

    def _stored_vectors(self, ids: list[int]) -> np.ndarray:
        found, vecs = self.store.get_vectors(ids)
        by_id = dict(zip(found.tolist(), vecs, strict=True))
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise UsageError(f"no indexed item with id {missing[0]} in {self.path}")
        return np.stack([by_id[i] for i in ids]).astype(np.float32)


def _load_model(name: str) -> ClipModel:
    from clipsift.models import load

    return load(name)


def _check_inputs(texts: list[str]) -> None:
    if not texts:
        raise UsageError("nothing to index: give files, folders, globs, tar shards or lists")
    for text in texts:
        if not os.path.exists(text) and not glob.glob(text, recursive=True):
            raise UsageError(f"input not found: {text!r} (expected a file, folder, glob, "
                             "tar shard or file list)")


def _in_scope(inputs: list[str], recursive: bool) -> Callable[[str], bool]:
    """Predicate: is a catalog key inside a folder/shard this run walked completely?"""
    from clipsift.sources import MEMBER_SEP, TAR_SUFFIXES

    folders: list[str] = []
    prefixes: list[str] = []
    for text in inputs:
        for p in [text] if os.path.exists(text) else glob.glob(text, recursive=True):
            full = os.path.abspath(p)
            if os.path.isdir(full):
                folders.append(os.path.join(full, ""))
            elif full.lower().endswith(TAR_SUFFIXES):
                prefixes.append(full + MEMBER_SEP)

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
    from clipsift.sources import MEMBER_SEP

    return in_scope(key) or not os.path.exists(key.split(MEMBER_SEP, 1)[0])


@dataclass
class _Candidate:
    """A new key whose bytes are already indexed: a rename or a copy, decided at the end."""

    item: Item
    size: int
    mtime: float
    digest: str
    source: int


class _AddRun:
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
        from clipsift.sources import iter_items

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
        from clipsift.pipeline import embed_items

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
