"""Embedding a dataset's samples once: vectors come from a clipsift index (same model,
same decode mode), then the embedding cache (`clipsift.evaluation.cache`), then an engine
(source -> Engine -> sink, local or Ray, as every bulk verb)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from clipsift.errors import UsageError

if TYPE_CHECKING:
    from clipsift.engines import Engine
    from clipsift.evaluation.cache import EmbeddingCache
    from clipsift.evaluation.datasets import Dataset
    from clipsift.inputs.sources import Item
    from clipsift.models.base import ClipModel


@dataclass
class DatasetEmbeddings:
    """Image embeddings of a dataset's samples.

    Attributes:
        vectors: float32 [M, D], unit rows, one per sample that could be read.
        rows: int64 [M], index of each vector's sample in `Dataset.samples`.
        failures: (key, reason) of every sample that could not be read.
        encoded: images that went through the model in this run.
        from_cache: vectors read from the embedding cache.
        from_index: vectors read from a clipsift index.
        decode_mode: "exact", or "fast" when large JPEGs were decoded at reduced scale.
    """

    vectors: np.ndarray
    rows: np.ndarray
    failures: list[tuple[str, str]]
    encoded: int = 0
    from_cache: int = 0
    from_index: int = 0
    decode_mode: str = "exact"


def _index_vectors(index: str | os.PathLike, model: ClipModel, items: Sequence[Item],
                   mode: str) -> dict[str, np.ndarray]:
    """Vectors of `items` already in a clipsift index built with `model` (same fingerprint,
    precision included, and the same decode mode `mode`: they are mixed with vectors
    `model` makes; same size/mtime).

    Raises:
        UsageError: no index there.
        ModelMismatch: another model, or vectors decoded in another mode (or "legacy").
    """
    from clipsift.index.index import Index, resolve_index_path
    from clipsift.models.base import l2_normalize

    path = resolve_index_path(index)
    if not path.exists():
        raise UsageError(f"no clipsift index at {str(path)!r}; build one with "
                         "`clipsift index add` or leave --index out")
    with Index.open(path, model) as idx:
        idx.require_same_vectors(model, decode=mode)
        found = idx.embeddings([it.key for it in items])
    by_key = {it.key: it for it in items}
    keep = [i for i, r in enumerate(found.rows) if r.size == by_key[r.key].size
            and abs(r.mtime - (by_key[r.key].mtime or 0)) < 1e-6]
    unit = l2_normalize(found.vectors[keep]) if keep else found.vectors[:0]
    return {found.rows[i].key: v for i, v in zip(keep, unit, strict=True)}


@dataclass
class _Known:
    """What a run needs no model for: vectors and errors found in the index and cache."""

    vectors: dict[str, np.ndarray] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    from_index: int = 0
    from_cache: int = 0


def _known(model: ClipModel, items: list[Item], index: str | os.PathLike | None,
           cache: EmbeddingCache | None, cache_model: str, mode: str) -> _Known:
    known = _Known()
    if index is not None:
        known.vectors.update(_index_vectors(index, model, items, mode))
    known.from_index = len(known.vectors)
    if cache is not None:
        wanted = [i for i in items if i.key not in known.vectors]
        for key, (blob, err) in cache.get(cache_model, wanted).items():
            if blob is not None:
                known.vectors[key] = np.frombuffer(blob, "<f4").astype(np.float32)
            else:
                known.errors[key] = err or "unreadable"
    known.from_cache = len(known.vectors) - known.from_index + len(known.errors)
    return known


def embed_dataset(model: ClipModel, dataset: Dataset, *, cache: EmbeddingCache | None = None,
                  index: str | os.PathLike | None = None, batch_size: int = 64,
                  workers: int | None = None, progress=None,
                  fast_decode: bool = False, engine: Engine | None = None,
                  ) -> DatasetEmbeddings:
    """Embed every sample once: vectors come from `index`, then `cache`, then the model.

    Args:
        model: a ClipModel.
        dataset: from `load_dataset`.
        cache: where vectors are looked up and stored, keyed by the model's fingerprint
            and the decode mode (None: no caching).
        index: a clipsift index built with the same model (same fingerprint) and decode
            mode, read (never written).
        batch_size, workers, fast_decode: as for `clipsift.engines.local.embed_items`
            (vectors made with fast decoding are cached apart from exact ones).
        progress: called as progress(done, total) after each encoded batch.
        engine: where images are embedded (`clipsift.engines.make_engine`, e.g. Ray);
            None: a `LocalEngine` with `workers` and `fast_decode`.
    Returns:
        DatasetEmbeddings; unreadable images, and folders of the dataset that could not be
        listed ("cannot list folder: ..."), are listed in `failures`, not raised.
    Raises:
        ModelMismatch: `index` holds another model's vectors, or vectors decoded in
            another mode.
    """
    from clipsift.engines import engine_or_local
    from clipsift.evaluation.cache import cache_key

    eng = engine_or_local(engine, workers, fast_decode)
    mode = eng.decode_mode
    items = [s.item for s in dataset.samples]
    cache_model = cache_key(model, mode) if cache is not None else ""
    known = _known(model, items, index, cache, cache_model, mode)
    found, errors = known.vectors, known.errors
    todo = list({it.key: it for it in items if it.key not in found and it.key not in errors
                 }.values())
    done = 0
    for batch in eng.embed(model, todo, batch_size=batch_size):
        for r in batch:
            if r.vector is not None:
                found[r.item.key] = r.vector
            else:
                errors[r.item.key] = r.error or "unreadable"
        if cache is not None:
            cache.put(cache_model, [(r.item, r.vector, r.error) for r in batch])
        done += len(batch)
        if progress is not None:
            progress(done, len(todo))
    rows = [i for i, s in enumerate(dataset.samples) if s.key in found]
    vecs = (np.stack([found[dataset.samples[i].key] for i in rows]) if rows
            else np.zeros((0, model.dim), np.float32))
    failures = [(s.key, errors[s.key]) for s in dataset.samples if s.key in errors]
    failures += [(e.path, e.message) for e in dataset.unreadable]
    return DatasetEmbeddings(vecs.astype(np.float32), np.asarray(rows, np.int64), failures,
                             encoded=len(todo), from_cache=known.from_cache,
                             from_index=known.from_index, decode_mode=mode)
