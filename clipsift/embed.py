"""Embed images and texts, and write them to Parquet for pandas/duckdb users.

Both verbs run source -> Engine -> sink: the inputs are walked (`clipsift.inputs.sources.Walk`),
embedded by an engine (`clipsift.engines`: local by default, or Ray), and written or
gathered here. Folders that cannot be listed are failures of the run, never skipped.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from clipsift.engines import EmbedResult, Engine
    from clipsift.models.base import ClipModel


@dataclass
class EmbedSummary:
    """What `embed_to_parquet` wrote."""

    output: str
    images: int = 0
    texts: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    decode_mode: str = "exact"  # "fast": large JPEGs decoded at reduced scale (approximate)


def embed_to_parquet(
    model,
    inputs: Sequence[str],
    texts: Sequence[str],
    output: str | Path,
    *,
    batch_size: int = 64,
    workers: int | None = None,
    on_progress=None,
    fast_decode: bool = False,
    engine: Engine | None = None,
) -> EmbedSummary:
    """Embed image inputs (files, folders, globs, shards, lists) and texts into Parquet.

    Columns: `kind` ("image" | "text"), `source` (path or the text), `source_bytes` (the
    exact name as bytes where it is not valid UTF-8, else null: see clipsift.inputs.keys),
    `embedding` (list<float32>). The schema metadata holds the model keys of every clipsift
    Parquet file: `clipsift.model`, `clipsift.dim`, `clipsift.fingerprint` (the digest of
    weights + preprocessing + tokenizer + precision class, `ClipModel.fingerprint`), and
    `clipsift.decode`, how images were decoded ("exact", or "fast" with --fast-decode).
    Images are streamed and written in row groups, so memory stays flat.

    Args:
        on_progress: optional callback `(done: int, failed: int) -> None` after each batch.
        fast_decode: decode large JPEGs at reduced scale (faster, approximate vectors).
        engine: where images are embedded (`clipsift.engines.make_engine`); None: a
            `LocalEngine` with `workers` and `fast_decode`.

    Returns:
        What was written; `failed` lists unreadable images and folders that could not be
        listed ("cannot list folder: ...").
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipsift.engines import engine_or_local
    from clipsift.models.fingerprint import parquet_metadata

    eng = engine_or_local(engine, workers, fast_decode)
    mode = eng.decode_mode
    schema = pa.schema(
        [("kind", pa.string()), ("source", pa.string()), ("source_bytes", pa.binary()),
         ("embedding", pa.list_(pa.float32()))],
        metadata=parquet_metadata(model.name, model.dim, model.fingerprint.digest, mode),
    )
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = EmbedSummary(str(out), decode_mode=mode)
    tmp = out.with_name(out.name + ".part")
    with pq.ParquetWriter(str(tmp), schema) as writer:
        if texts:
            _write(writer, schema, "text", list(texts), model.encode_texts(list(texts)))
            summary.texts = len(texts)
        if inputs:
            for batch in _embedded(model, inputs, eng, batch_size, summary.failed):
                good = [r for r in batch if r.vector is not None]
                summary.failed += [(r.item.key, r.error or "") for r in batch if r.vector is None]
                if good:
                    _write(writer, schema, "image", [r.item.key for r in good],
                           np.stack([r.vector for r in good]))
                summary.images += len(good)
                if on_progress:
                    on_progress(summary.images, len(summary.failed))
    tmp.replace(out)
    return summary


def _embedded(model: ClipModel, inputs: Sequence[str], engine: Engine, batch_size: int,
              failed: list[tuple[str, str]]) -> Iterator[list[EmbedResult]]:
    """Batches of `engine`'s results for the images of `inputs`; when the walk is over, the
    folders it could not list are appended to `failed` as (folder, "cannot list folder: ...")."""
    from clipsift.inputs.sources import Walk

    walk = Walk(inputs)
    yield from engine.embed(model, iter(walk), batch_size=batch_size)
    failed.extend((e.path, e.message) for e in walk.errors)


def _write(writer, schema, kind: str, sources: list[str], vectors: np.ndarray) -> None:
    import pyarrow as pa

    flat = pa.array(vectors.astype(np.float32).ravel(), pa.float32())
    emb = pa.ListArray.from_arrays(pa.array(np.arange(0, len(flat) + 1, vectors.shape[1],
                                                      dtype=np.int32)), flat)
    from clipsift.inputs.keys import parquet_columns

    cols = parquet_columns("source", sources)
    table = pa.Table.from_arrays(
        [pa.array([kind] * len(sources)), cols["source"], cols["source_bytes"], emb],
        schema=schema)
    writer.write_table(table)


@dataclass
class SimilarityMatrix:
    """Cosine similarities between images (rows) and texts (columns)."""

    images: list[str]
    texts: list[str]
    cosine: np.ndarray  # [len(images), len(texts)]
    failed: list[tuple[str, str]] = field(default_factory=list)


def similarity(model, images: Sequence[str], texts: Sequence[str], *, workers: int | None = 0,
               fast_decode: bool = False, engine: Engine | None = None) -> SimilarityMatrix:
    """Cosine matrix between image inputs and texts; failed images (and folders that could
    not be listed) are listed in `failed`, not fatal.

    `fast_decode` decodes large JPEGs at reduced scale (faster, approximate); `engine` runs
    the embedding (None: a `LocalEngine` with `workers` and `fast_decode`)."""
    from clipsift.engines import engine_or_local

    eng = engine_or_local(engine, workers, fast_decode)
    keys: list[str] = []
    vecs: list[np.ndarray] = []
    failed: list[tuple[str, str]] = []
    for batch in _embedded(model, images, eng, 64, failed):
        for r in batch:
            if r.vector is None:
                failed.append((r.item.key, r.error or ""))
            else:
                keys.append(r.item.key)
                vecs.append(r.vector)
    tv = model.encode_texts(list(texts))
    iv = np.stack(vecs) if vecs else np.zeros((0, model.dim), np.float32)
    return SimilarityMatrix(keys, list(texts), iv @ tv.T, failed)
