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
after a complete walk, so a killed run simply redoes them next time; only files confirmed
gone under the roots walked are removed, and unreadable folders keep their entries.

Only `Index` talks to the store: other modules read vectors through `iter_embeddings`,
`embeddings`, `unembedded` and `count`. The index records its model's fingerprint
(`clipsift.index.identity`): vectors of another model never join it, unless it is
re-embedded (`Index(path, model, reembed=True)`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsift.errors import UsageError
from clipsift.index import identity
from clipsift.index.ann import AnnConfig, VectorIndex
from clipsift.index.query import CaptionHit, Hit, Query, parse_query, query_vector, rank_captions
from clipsift.index.records import STATUS_ERROR, STATUS_OK, STATUS_STALE, CatalogRow, Problem
from clipsift.index.store import Store, writer_lock
from clipsift.index.update import AddProgress, AddRun, AddSummary
from clipsift.models.fingerprint import Fingerprint

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
    """What `Index.info` reports: items in the catalog, `errors` (items that could not be
    embedded), `stale` (waiting to be embedded again by a new model), `problems` (folders
    and files that could not be read), and the model's fingerprint (None: an index from an
    older clipsift that has not recorded one yet)."""

    path: Path
    model: str
    dim: int
    items: int
    errors: int
    schema_version: int
    stale: int = 0
    problems: int = 0
    fingerprint: Fingerprint | None = None
    uuid: str = ""  # changes when the index is re-embedded with another model


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


class Index:
    """An image index: one SQLite file plus a derived FAISS cache next to it.

    Args:
        path: index file, or a bare name resolved by `resolve_index_path`.
        model: a loaded `ClipModel`, a model name, or None to use the one recorded in the
            index (loaded on first need, at the precision of its vectors). Required to
            create a new index.
        ann: when/how to use approximate search (default: IVF-PQ from 200k vectors).
        create: create the index when missing (needs `model`).
        precision: load `model` (a name), or the recorded model, at this precision.
        device: where a model loaded by name (or the recorded one) runs ("cpu", "cuda").
        reembed: when `model` is not the index's model, make it the index's model: every
            vector is dropped now and every item is embedded again by the next `add`
            (crash-safe: the index never holds a mix; an interrupted add resumes).

    Raises:
        ModelMismatch: the index was built with another model (and `reembed` is False).
        UsageError: no index at `path` (and not creating), or no model to create one.
        NotAnIndex: `path` is a file that is not a clipsift index (left untouched).
    """

    def __init__(self, path: str | os.PathLike, model: ClipModel | str | None = None, *,
                 ann: AnnConfig | None = None, create: bool = True,
                 precision: str | None = None, reembed: bool = False,
                 device: str = "cpu") -> None:
        self.path = resolve_index_path(path)
        self._model: ClipModel | None = None
        self._device = device
        #: a message for the user (the model switched by `reembed`), None when nothing to say
        self.notice: str | None = None
        if not self.path.exists() and create and model is not None:
            self.store = self._create(model, precision)
        else:
            self.store = Store.open(self.path)
            try:
                self._use(model, precision, reembed)
            except BaseException:
                self.store.close()
                raise
        self.vectors = VectorIndex(self.store, ann)

    @classmethod
    def open(cls, path: str | os.PathLike, model: ClipModel | str | None = None, *,
             precision: str | None = None, reembed: bool = False,
             ann: AnnConfig | None = None, device: str = "cpu") -> Index:
        """Open an existing index (never creates one); see the class for the arguments.

        Example:
            >>> with Index.open("photos.db") as idx:
            ...     idx.count(), idx.fingerprint.short
        """
        return cls(path, model, ann=ann, create=False, precision=precision, reembed=reembed,
                   device=device)

    def _create(self, model: ClipModel | str, precision: str | None) -> Store:
        loaded = (identity.load_model(model, precision, self._device) if isinstance(model, str)
                  else model)
        fp = loaded.fingerprint
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with writer_lock(self.path):
            if self.path.exists():  # created meanwhile by another process
                store = Store.open(self.path)
            else:
                store = Store.create(self.path, model=loaded.name, dim=loaded.dim,
                                     fingerprint=fp.to_json())
        self._model = loaded
        identity.check_readable(self.path, store.meta, loaded)
        return store

    def _use(self, model: ClipModel | str | None, precision: str | None,
             reembed: bool) -> None:
        """Check (or, with `reembed`, adopt) the model the index is opened with."""
        if model is None and precision is None and not reembed:
            return  # the recorded model, loaded on first need
        if isinstance(model, str) and model == self.store.meta.model and precision is None \
                and not reembed:
            return  # its own name: checked when loaded
        if model is None:
            loaded = identity.load_recorded(self.store.meta, precision, self._device)
        elif isinstance(model, str):
            loaded = identity.load_model(model, precision, self._device)
        else:
            loaded = model
        if reembed:
            self._reembed(loaded)
        identity.check_readable(self.path, self.store.meta, loaded)
        self._model = loaded

    def _reembed(self, model: ClipModel) -> None:
        """Make `model` the index's model: drop every vector, mark every item stale."""
        old = identity.recorded(self.store.meta)
        fp = model.fingerprint
        if old == fp:
            return
        with writer_lock(self.path), self.store.transaction():
            marked = self.store.switch_model(model.name, model.dim, fp.to_json())
        was = old.describe() if old else repr(self.store.meta.model)
        self.notice = (f"index {self.path}: re-embedding with {fp.describe()} instead of "
                       f"{was}: {marked} items will be embedded again by the next add run")

    @property
    def model(self) -> ClipModel:
        """The index's model, loaded on first use from what it records (at the precision
        its vectors were made at), and checked against the recorded fingerprint."""
        if self._model is None:
            loaded = identity.load_recorded(self.store.meta, device=self._device)
            identity.check_readable(self.path, self.store.meta, loaded)
            self._model = loaded
        return self._model

    @property
    def fingerprint(self) -> Fingerprint | None:
        """The fingerprint of the model the vectors come from (None: not recorded yet)."""
        return identity.recorded(self.store.meta)

    @property
    def info(self) -> IndexInfo:
        meta = self.store.meta
        return IndexInfo(self.path, meta.model, meta.dim, self.store.count(),
                         self.store.count(STATUS_ERROR), meta.schema_version,
                         self.store.count(STATUS_STALE), len(self.store.problems()),
                         identity.recorded(meta), meta.uuid)

    def count(self, status: str | None = None) -> int:
        """Catalog entries (all, or those with `status`: "ok", "error", "stale")."""
        return self.store.count(status)

    def __len__(self) -> int:
        return self.store.vector_count()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()

    def _sync(self) -> None:
        """Follow a model switch made by another process since this index was opened."""
        if self.store.current_uuid() == self.store.meta.uuid:
            return
        self.store.reload_meta()
        self.vectors = VectorIndex(self.store, self.vectors.config)
        if self._model is not None:
            identity.check_readable(self.path, self.store.meta, self._model)

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
            notice = self._check_writer(self.model)
            run = AddRun(self.store, self.model, stop or threading.Event(), progress)
            run.engine = engine
            summary = run.execute(texts, batch_size=batch_size, workers=workers,
                                  recursive=recursive)
        return dataclasses.replace(summary, notice=notice) if notice else summary

    def _check_writer(self, model: ClipModel) -> str | None:
        """Refuse vectors of another fingerprint; an index from an older clipsift records
        this model's (it matched by name and dim) and says so once."""
        self.require_same_vectors(model)
        if self.store.meta.fingerprint is not None:
            return None
        fp = model.fingerprint
        with self.store.transaction():
            self.store.set_fingerprint(fp.to_json())
        return (f"index {self.path} was made by an older clipsift and recorded no model "
                f"fingerprint; it adopted that of {fp.describe()}, which matches its "
                "model's name and dim")

    def require_same_vectors(self, model: ClipModel) -> None:
        """Before mixing `model`'s vectors with the stored ones: the same fingerprint
        (precision class included), else `ModelMismatch` naming both."""
        self._sync()
        identity.check_writable(self.path, self.store.meta, model)

    def errors(self) -> list[CatalogRow]:
        """Items that could not be embedded, with their reasons."""
        return list(self.store.iter_rows(status=STATUS_ERROR))

    def problems(self) -> list[Problem]:
        """Folders and files the last runs could not read (their entries were kept)."""
        return self.store.problems()

    # ---- reading vectors ----------------------------------------------------------------
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
        self._sync()
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


def _check_inputs(texts: list[str]) -> None:
    import glob

    from clipsift.inputs.sources import GONE_ERRNOS

    if not texts:
        raise UsageError("nothing to index: give files, folders, globs, tar shards or lists")
    for text in texts:
        try:
            os.stat(text)
        except OSError as ex:
            if ex.errno not in GONE_ERRNOS:  # exists but cannot be checked: say why
                raise UsageError(f"cannot read input {text!r}: {ex.strerror or ex}") from ex
            if not glob.glob(text, recursive=True):
                raise UsageError(f"input not found: {text!r} (expected a file, folder, glob, "
                                 "tar shard or file list)") from None
