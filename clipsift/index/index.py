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

Only `Index` talks to the store: other modules read vectors and rows through its methods
(`iter_embeddings`, `embeddings`, `unembedded`, `rows`, `item`, `stored_vectors`, `count`;
defined in `clipsift.index.reading`) and search with `search` / `search_many`. The index
records its model's fingerprint (`clipsift.index.identity`): vectors of another model never
join it, unless it is re-embedded (`Index(path, model, reembed=True)`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clipsift.errors import UsageError
from clipsift.index import identity
from clipsift.index.ann import AnnConfig, VectorIndex
from clipsift.index.identity import IndexIdentity
from clipsift.index.reading import Embeddings, IndexReading
from clipsift.index.records import STATUS_ERROR, STATUS_STALE, CatalogRow, Problem
from clipsift.index.store import Store, writer_lock
from clipsift.index.update import AddProgress, AddRun, AddSummary
from clipsift.inputs.images import DECODE_EXACT
from clipsift.models.fingerprint import Fingerprint

if TYPE_CHECKING:
    from clipsift.engines import Engine
    from clipsift.models.base import ClipModel

__all__ = ["AnnConfig", "Embeddings", "Index", "IndexIdentity", "IndexInfo",
           "resolve_index_path"]

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
    decode: str | None = None  # "exact", "fast", "legacy", None: no vectors yet


class Index(IndexReading):
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
            (crash-safe: the index never holds a mix; an interrupted add resumes). Also
            when the next `add` decodes images in another mode than the index's vectors
            were made in (`fast_decode`; a "legacy" index): that add re-embeds everything.

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
        self._reembed_asked = reembed
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
    def identity(self) -> IndexIdentity:
        """What made the vectors: model name, dim, fingerprint, decode mode, uuid (cheap)."""
        meta = self.store.meta
        return IndexIdentity(meta.model, meta.dim, identity.recorded(meta),
                             identity.decode_of(meta, self.store.has_vectors()), meta.uuid)

    @property
    def info(self) -> IndexInfo:
        meta = self.store.meta
        ident = self.identity
        return IndexInfo(self.path, meta.model, meta.dim, self.store.count(),
                         self.store.count(STATUS_ERROR), meta.schema_version,
                         self.store.count(STATUS_STALE), len(self.store.problems()),
                         ident.fingerprint, meta.uuid, ident.decode)

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
        e.g. Ray, or a `LocalEngine` with `fast_decode`); planning and the atomic batch
        writes stay in this process. Its decode mode must be the index's (see
        `clipsift.index.identity`).
        Setting `stop` (e.g. from a Ctrl-C handler) ends the run after the current batch;
        committed work is kept and the summary says `interrupted`.

        Raises:
            IndexInUse: another writer holds the index.
            UsageError: an input does not exist.
            ModelMismatch: the engine decodes in another mode than the index's vectors were
                made in (and the index was not opened with `reembed`).
        """
        texts = [os.fspath(p) for p in inputs]
        _check_inputs(texts)
        mode = engine.decode_mode if engine is not None else DECODE_EXACT
        with writer_lock(self.path):
            notice = self._check_writer(self.model, mode)
            run = AddRun(self.store, self.model, stop or threading.Event(), progress)
            run.engine = engine
            summary = run.execute(texts, batch_size=batch_size, workers=workers,
                                  recursive=recursive)
        return dataclasses.replace(summary, notice=notice) if notice else summary

    def _check_writer(self, model: ClipModel, mode: str) -> str | None:
        """Refuse vectors of another fingerprint or decode mode (with `reembed`: re-embed
        in this mode); an index from an older clipsift records this model's fingerprint
        (it matched by name and dim) and says so once; the first vectors record `mode`."""
        self.require_same_vectors(model)
        notices = []
        if self.store.meta.fingerprint is None:
            fp = model.fingerprint
            with self.store.transaction():
                self.store.set_fingerprint(fp.to_json())
            notices.append(f"index {self.path} was made by an older clipsift and recorded no "
                           f"model fingerprint; it adopted that of {fp.describe()}, which "
                           "matches its model's name and dim")
        decode = identity.decode_of(self.store.meta, self.store.has_vectors())
        if decode not in (None, mode) and self._reembed_asked:
            fp = model.fingerprint
            with self.store.transaction():
                marked = self.store.switch_model(model.name, model.dim, fp.to_json())
            notices.append(f"index {self.path}: re-embedding {marked} items decoded "
                           f"{mode!r} instead of {decode!r}")
            decode = None
        if decode is None:
            with self.store.transaction():
                self.store.set_decode(mode)
        notices.append(identity.check_decode(self.path, decode, mode, writing=True) or "")
        return "\n".join(n for n in notices if n) or None

    def require_same_vectors(self, model: ClipModel, decode: str | None = None) -> None:
        """Before mixing `model`'s vectors with the stored ones: the same fingerprint
        (precision class included) and, when `decode` is given, vectors decoded in that
        mode ("exact" / "fast"; a "legacy" index is refused), else `ModelMismatch` naming
        both."""
        self._sync()
        identity.check_writable(self.path, self.store.meta, model)
        if decode is not None:
            ident = self.identity
            identity.check_decode(self.path, ident.decode, decode, writing=False)

    def errors(self) -> list[CatalogRow]:
        """Items that could not be embedded, with their reasons."""
        return list(self.store.iter_rows(status=STATUS_ERROR))

    def problems(self) -> list[Problem]:
        """Folders and files the last runs could not read (their entries were kept)."""
        return self.store.problems()


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
