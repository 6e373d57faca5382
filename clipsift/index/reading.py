"""The read side of `Index`: stored vectors, catalog rows, and search (inherited by `Index`).

Every read goes through these methods: the CLI, export, dedup, filter, evaluation and the
server never open the store themselves. A search is planned by `clipsift.index.query.plan`
(the one place a query becomes a vector), embedded with the index's model, and answered by
the FAISS layer (`clipsift.index.ann`), with catalog rows read from the store: cli -> index
-> ann/store, always downward.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsift.errors import ItemNotFound, UsageError
from clipsift.index.query import CaptionHit, Hit, Query, QueryPlan, plan, rank_captions
from clipsift.index.records import STATUS_OK, STATUS_STALE, CatalogRow

if TYPE_CHECKING:
    from PIL import Image

    from clipsift.index.ann import VectorIndex
    from clipsift.index.query import ImageInput
    from clipsift.index.store import Store
    from clipsift.models.base import ClipModel


@dataclass(frozen=True)
class Embeddings:
    """Stored vectors with their catalog rows.

    Attributes:
        rows: catalog rows (id, key, size, mtime, hash, width, height...).
        vectors: float32 [n, D], row i for `rows[i]`, as stored (float16, so unit length
            to about 1e-3; normalise again where exact unit rows matter).
    """

    rows: list[CatalogRow]
    vectors: np.ndarray

    @property
    def ids(self) -> np.ndarray:
        return np.fromiter((r.id for r in self.rows), np.int64, len(self.rows))

    @property
    def keys(self) -> list[str]:
        return [r.key for r in self.rows]


class IndexReading:
    """Reads and searches of an `Index` (which provides the attributes declared here)."""

    path: Path
    store: Store
    vectors: VectorIndex
    model: ClipModel

    def _sync(self) -> None:  # Index: follow a model switch made by another process
        raise NotImplementedError

    # ---- stored vectors and rows --------------------------------------------------------
    def iter_embeddings(self, chunk: int = 8192) -> Iterator[Embeddings]:
        """Every stored vector with its catalog row, in id order, `chunk` at a time
        (memory stays flat). Items without a vector are in `unembedded()`."""
        self._sync()
        for ids, vecs in self.store.iter_vectors(chunk=chunk):
            rows = self.store.rows(ids.tolist())
            keep = [i for i, item_id in enumerate(ids.tolist()) if item_id in rows]
            yield Embeddings([rows[int(ids[i])] for i in keep],
                             vecs[keep].astype(np.float32))

    def embeddings(self, keys: Sequence[str]) -> Embeddings:
        """The stored vectors of the items with these keys (those that have one)."""
        self._sync()
        rows = [r for r in self.store.lookup(keys).values() if r.status == STATUS_OK]
        found, vecs = self.store.get_vectors([r.id for r in rows])
        by_id = {int(i): n for n, i in enumerate(found)}
        rows = [r for r in rows if r.id in by_id]
        return Embeddings(rows, vecs[[by_id[r.id] for r in rows]].astype(np.float32))

    def unembedded(self) -> Iterator[CatalogRow]:
        """Catalog entries without a vector: errors (with their reason) and items waiting
        to be embedded again after a model switch (reason says so)."""
        for row in self.store.iter_rows():
            if row.status == STATUS_STALE:
                yield dataclasses.replace(row, error="not embedded yet by the index's new "
                                          "model (run `clipsift index` on its folder)")
            elif row.status != STATUS_OK:
                yield row

    def rows(self, ids: Sequence[int]) -> dict[int, CatalogRow]:
        """Catalog rows of these item ids (ids not in the catalog are absent)."""
        return self.store.rows([int(i) for i in ids])

    def item(self, item_id: int) -> CatalogRow:
        """The catalog row of an indexed item (one with a vector: status "ok").

        Raises:
            ItemNotFound: no such item, or it has no vector (an error, or stale).
        """
        row = self.store.rows([int(item_id)]).get(int(item_id))
        if row is None or row.status != STATUS_OK:
            raise ItemNotFound(f"no indexed item with id {item_id}")
        return row

    def stored_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of items, in the order of `ids` -> float32 [n, D].

        Raises:
            ItemNotFound: an id has no stored vector (no such item, or not embedded).
        """
        found, vecs = self.store.get_vectors([int(i) for i in ids])
        by_id = dict(zip(found.tolist(), vecs, strict=True))
        missing = [i for i in ids if int(i) not in by_id]
        if missing:
            raise ItemNotFound(f"no indexed item with id {missing[0]}")
        if not len(ids):
            return np.zeros((0, self.store.meta.dim), np.float32)
        return np.stack([by_id[int(i)] for i in ids]).astype(np.float32)

    def ping(self) -> int:
        """A cheap real read of the index file (its generation counter), for health checks.

        Raises:
            sqlite3.Error: the index cannot be read (closed, gone, damaged).
        """
        return self.store.generation()

    # ---- search -------------------------------------------------------------------------
    def search(self, query: str | Query | np.ndarray | None = None, *, text: str | None = None,
               image: ImageInput | None = None, k: int = 10,
               threshold: float | None = None) -> list[Hit]:
        """Search by a query (the query language: `"beach" - "people"`, `2:sunset`,
        `image:q.jpg`, `id:42`), a plain `text` (not parsed), an example `image` (path,
        bytes or PIL image), or several of them summed; a numpy vector [D] is searched as is.

        Raises:
            QueryError: nothing to search for, a bad query, a weight over 1000.
            ItemNotFound: an `id:` term names no indexed item.
            ImageError: an image cannot be read.

        Example:
            >>> idx.search("a dog on grass", k=3)
            [Hit(id=12, path='/photos/dog.jpg', score=0.31), ...]
            >>> idx.search('"beach" - "people"', image="sea.jpg", k=5)
        """
        if isinstance(query, np.ndarray):
            return self.search_vector(query, k, threshold)
        return self.search_vector(self.query_vector(plan(query, text=text, image=image)), k,
                                  threshold)

    def query_vector(self, query_plan: QueryPlan) -> np.ndarray:
        """Embed a plan's texts and images with the index's model, read its stored vectors,
        and combine them -> unit float32 [D]."""
        model = self.model
        p = query_plan
        return p.combine(model.encode_texts(list(p.texts)) if p.texts else None,
                         model.encode_images(list(p.images)) if p.images else None,
                         self.stored_vectors(p.ids) if p.ids else None)

    def search_image(self, image: str | os.PathLike | Image.Image, k: int = 10,
                     threshold: float | None = None) -> list[Hit]:
        """Image→image: items closest to an image file or PIL image."""
        return self.search(image=image, k=k, threshold=threshold)

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
        (hits,) = self.search_many(np.asarray(vector, np.float32).reshape(1, -1), k)
        return [h for h in hits if threshold is None or h.score >= threshold]

    def search_many(self, queries: np.ndarray, k: int) -> list[list[Hit]]:
        """Top-k hits of each query vector [Q, D] (one FAISS search, one catalog read);
        each id at most once per list; items deleted meanwhile are left out."""
        if k < 1:
            raise UsageError(f"k must be at least 1, got {k}")
        self._sync()
        q = np.asarray(queries, np.float32)
        if q.ndim != 2 or q.shape[1] != self.store.meta.dim:
            raise UsageError(f"query vectors have shape {tuple(q.shape)}, the index needs "
                             f"[n, {self.store.meta.dim}]")
        scores, ids = self.vectors.search(q, k)  # [Q, k] each
        rows = self.store.rows(sorted({int(i) for i in ids.ravel() if i >= 0}))
        return [[Hit(int(i), rows[int(i)].key, float(s))
                 for s, i in zip(srow, irow, strict=True) if int(i) in rows]
                for srow, irow in zip(scores, ids, strict=True)]

    def refresh(self) -> None:
        """Bring the FAISS index up to date with the store now (searches do it too): to
        build or load it before the first search."""
        self._sync()
        self.vectors.refresh()

    def image_vector(self, image: ImageInput) -> np.ndarray:
        """Embed one image (path, bytes or PIL image) with the index's model -> float32 [D]."""
        src: Any = os.fspath(image) if isinstance(image, str | os.PathLike) else image
        return self.model.encode_images([src])[0]
