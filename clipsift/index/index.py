"""`Index`: an image collection embedded into one SQLite store, searchable through FAISS.

    >>> import clipsift
    >>> idx = clipsift.Index("photos.db", model="mini")       # creates it if missing
    >>> summary = idx.add(["~/Pictures"])                       # incremental, crash-safe
    >>> idx.search('"beach" - "people"', k=5)                   # [Hit(id, path, score), ...]

`add` streams items (clipsift.inputs.sources) through the bulk pipeline (clipsift.engines.local) and
commits each batch (catalog rows + vectors) in one transaction, under a single-writer lock.
Unchanged files (same size, mtime) are skipped; changed ones are hashed (same bytes: no
work); content already indexed is copied, not re-encoded; a vanished file whose bytes
reappear under a new key is a rename (id and vector kept). Removals and renames are applied
after a complete walk, so a killed run simply redoes them next time.
"""

from __future__ import annotations

import glob
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsift.errors import ModelMismatch, UsageError
from clipsift.index.ann import AnnConfig, VectorIndex
from clipsift.index.query import CaptionHit, Hit, Query, parse_query, query_vector, rank_captions
from clipsift.index.store import STATUS_ERROR, CatalogRow, Store, writer_lock
from clipsift.index.update import AddProgress, AddRun, AddSummary

if TYPE_CHECKING:
    from PIL import Image

    from clipsift.engines import Engine
    from clipsift.models.base import ClipModel

INDEX_SUFFIX = ".db"


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
            run = AddRun(self.store, self.model, stop or threading.Event(), progress)
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
