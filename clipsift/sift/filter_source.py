"""What `clipsift filter` scores: image inputs embedded by an engine, or the stored vectors of
a clipsift index (read through `Index`, never re-encoded).

Inputs are walked with `clipsift.inputs.sources.Walk`: a folder that cannot be listed is not
skipped silently, it is in `FilterSource.unreadable` (the summary and the manifest say so).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from clipsift.errors import UsageError
from clipsift.models.base import l2_normalize
from clipsift.sift.workdir import Row

if TYPE_CHECKING:
    from clipsift.engines import Engine
    from clipsift.index.index import Embeddings
    from clipsift.inputs.sources import WalkError
    from clipsift.models.base import ClipModel

_INDEX_BATCH = 4096


@dataclass
class FilterSource:
    """A description of the input (for the resume fingerprint) and its batch generator.

    Attributes:
        describe: what the input is (inputs, or the index and its uuid).
        roots: input folders (placement keeps paths relative to them).
        batches: `(done keys, stop) -> batches of rows` for the items not done yet.
        unreadable: folders the walk could not list (filled while batches are read).
        close: releases what the source holds (an open index).
    """

    describe: dict
    roots: list[str]
    batches: Callable[[set[str], threading.Event], Iterator[list[Row]]]
    unreadable: list[WalkError] = field(default_factory=list)
    close: Callable[[], None] = field(default=lambda: None)


def make_source(model: ClipModel, inputs: Sequence[str | os.PathLike],
                index: str | os.PathLike | None, engine: Engine | None,
                batch_size: int) -> FilterSource:
    """The source of a filter run: `inputs` embedded by `engine`, or `index`'s vectors.

    Raises:
        UsageError: both or neither given, or an input does not exist.
        ModelMismatch: `model` is not the index's model.
    """
    texts = [os.fspath(p) for p in inputs]
    if (index is None) == (not texts):
        raise UsageError("give either inputs (files, folders, globs, tar shards, lists) or "
                         "an index, not both and not neither")
    if index is not None:
        return _index_source(model, index)
    from clipsift.engines import engine_or_local
    from clipsift.inputs.sources import Walk

    eng = engine_or_local(engine)
    for text in texts:
        if not os.path.exists(text) and not any(c in text for c in "*?["):
            raise UsageError(f"input not found: {text!r} (expected a file, folder, glob, "
                             "tar shard or file list)")
    roots = [os.path.abspath(t) for t in texts if os.path.isdir(t)]
    walk = Walk(texts)

    def fresh_items(done: set[str]) -> Iterator:
        for item in walk:
            if item.key not in done:  # done by an earlier run, or named twice in this one
                done.add(item.key)
                yield item

    def batches(done: set[str], stop: threading.Event) -> Iterator[list[Row]]:
        items = fresh_items(set(done))
        for batch in eng.embed(model, items, batch_size=batch_size, stop=stop):
            yield [(r.item.key, r.item.size, r.item.mtime, r.width, r.height, r.error,
                    r.vector) for r in batch]

    return FilterSource({"inputs": [os.path.abspath(t) for t in texts]}, roots, batches,
                        walk.errors)


def _index_source(model: ClipModel, index: str | os.PathLike) -> FilterSource:
    from clipsift.index.index import Index

    idx = Index.open(index, model)  # ModelMismatch for another model
    info = idx.info

    def batches(done: set[str], stop: threading.Event) -> Iterator[list[Row]]:
        for chunk in idx.iter_embeddings(chunk=_INDEX_BATCH):
            rows = _embedded_rows(chunk, done)
            if rows:
                yield rows
            if stop.is_set():
                return
        missing = [_row(r, None, r.error or "no stored vector") for r in idx.unembedded()
                   if r.key not in done]
        for start in range(0, len(missing), _INDEX_BATCH):
            yield missing[start:start + _INDEX_BATCH]

    return FilterSource({"index": str(info.path.resolve()), "uuid": info.uuid}, [], batches,
                        close=idx.close)


def _embedded_rows(chunk: Embeddings, done: set[str]) -> list[Row]:
    unit = l2_normalize(chunk.vectors)
    return [_row(r, unit[i], None) for i, r in enumerate(chunk.rows) if r.key not in done]


def _row(r, vec, error: str | None) -> Row:
    size = None if r.size < 0 else r.size
    mtime = None if r.mtime < 0 else r.mtime
    return (r.key, size, mtime, r.width, r.height, error, vec)
