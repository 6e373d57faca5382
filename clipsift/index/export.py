"""Export an index to Parquet for pandas / duckdb / Spark users.

Columns: id int64, path string, path_bytes binary (the exact name where it is not valid
UTF-8, else null: see clipsift.inputs.keys), size int64, mtime float64 (seconds since the epoch),
hash string (blake2b-128 hex), width int32, height int32, embedding list<float32>.
Only items with a vector are written; errors are listed by `clipsift errors`. The schema
metadata carries the keys every clipsift Parquet file has (`clipsift.model`, `clipsift.dim`,
`clipsift.fingerprint`: the digest of the model the vectors come from), `clipsift.decode`
(how the index's images were decoded: "exact", "fast" or "legacy"; absent for an index
with no vectors) and `clipsift.index_schema`. Rows are written in chunks, so memory stays flat.

    >>> import pandas as pd
    >>> df = pd.read_parquet("photos.parquet")
    >>> pq.read_schema("photos.parquet").metadata[b"clipsift.model"]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clipsift.errors import UsageError
from clipsift.models.fingerprint import parquet_metadata

if TYPE_CHECKING:
    from clipsift.index.index import Embeddings, Index

_CHUNK = 20_000


@dataclass(frozen=True)
class ExportSummary:
    """What `export_parquet` wrote: rows (items with a vector) and `missing` (items
    without one: errors, or waiting for a new model)."""

    path: Path
    rows: int
    model: str
    dim: int
    fingerprint: str = ""
    missing: int = 0


def parquet_schema(model: str, dim: int, schema_version: int, fingerprint: str = "",
                   decode: str | None = None):
    """The Arrow schema of an export (-> pyarrow.Schema)."""
    import pyarrow as pa

    fields = [
        pa.field("id", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),
        pa.field("path_bytes", pa.binary()),
        pa.field("size", pa.int64()),
        pa.field("mtime", pa.float64()),
        pa.field("hash", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        pa.field("embedding", pa.list_(pa.float32())),
    ]
    meta = {**parquet_metadata(model, dim, fingerprint, decode),
            "clipsift.index_schema": str(schema_version)}
    return pa.schema(fields, metadata=meta)


def export_parquet(index: Index, out: str | os.PathLike) -> ExportSummary:
    """Write every embedded item of `index` to a Parquet file at `out` (atomically).

    Raises:
        UsageError: `out` cannot be written.
    """
    import pyarrow.parquet as pq

    info = index.info
    digest = info.fingerprint.digest if info.fingerprint else ""
    schema = parquet_schema(info.model, info.dim, info.schema_version, digest, info.decode)
    out_path = Path(out)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    rows = 0
    try:
        with pq.ParquetWriter(str(tmp), schema) as writer:
            for chunk in index.iter_embeddings(chunk=_CHUNK):
                writer.write_table(_table(chunk, schema))
                rows += len(chunk.rows)
        os.replace(tmp, out_path)
    except OSError as ex:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {out_path}: {ex.strerror or ex}") from ex
    return ExportSummary(out_path, rows, info.model, info.dim, digest, info.items - rows)


def _table(chunk: Embeddings, schema):  # -> pyarrow.Table
    import pyarrow as pa

    rows, n = chunk.rows, len(chunk.rows)
    flat = np.ascontiguousarray(chunk.vectors, dtype=np.float32)  # [n, D]
    dim = flat.shape[1]
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int32))
    emb = pa.ListArray.from_arrays(offsets, pa.array(flat.reshape(-1), pa.float32()))
    from clipsift.inputs.keys import parquet_columns

    cols = {
        "id": pa.array([r.id for r in rows], pa.int64()),
        **parquet_columns("path", [r.key for r in rows]),
        "size": pa.array([r.size for r in rows], pa.int64()),
        "mtime": pa.array([r.mtime for r in rows], pa.float64()),
        "hash": pa.array([r.hash for r in rows], pa.string()),
        "width": pa.array([r.width for r in rows], pa.int32()),
        "height": pa.array([r.height for r in rows], pa.int32()),
        "embedding": emb,
    }
    return pa.Table.from_pydict(cols, schema=schema)
