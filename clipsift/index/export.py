"""Export an index to Parquet for pandas / duckdb / Spark users.

Columns: id int64, path string, path_bytes binary (the exact name where it is not valid
UTF-8, else null: see clipsift.inputs.keys), size int64, mtime float64 (seconds since the epoch),
hash string (blake2b-128 hex), width int32, height int32, embedding list<float32>.
Only items with a vector are written; errors are listed by `clipsift errors`. The schema
metadata records `model`, `dim` and `clipsift_index_schema`. Rows are written in chunks,
so memory stays flat for large indexes.

    >>> import pandas as pd
    >>> df = pd.read_parquet("photos.parquet")
    >>> pq.read_schema("photos.parquet").metadata[b"model"]
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsift.errors import UsageError
from clipsift.index.store import STATUS_OK, Store

_CHUNK = 20_000


@dataclass(frozen=True)
class ExportSummary:
    path: Path
    rows: int
    model: str
    dim: int


def parquet_schema(model: str, dim: int, schema_version: int):  # -> pyarrow.Schema
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
    meta = {"model": model, "dim": str(dim), "clipsift_index_schema": str(schema_version)}
    return pa.schema(fields, metadata=meta)


def export_parquet(store: Store, out: str | os.PathLike) -> ExportSummary:
    """Write every embedded item of `store` to a Parquet file at `out` (atomically).

    Raises:
        UsageError: `out` cannot be written.
    """
    import pyarrow.parquet as pq

    meta = store.meta
    schema = parquet_schema(meta.model, meta.dim, meta.schema_version)
    out_path = Path(out)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    rows = 0
    try:
        with pq.ParquetWriter(str(tmp), schema) as writer:
            for table in _tables(store, schema):
                writer.write_table(table)
                rows += table.num_rows
        os.replace(tmp, out_path)
    except OSError as ex:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {out_path}: {ex.strerror or ex}") from ex
    return ExportSummary(out_path, rows, meta.model, meta.dim)


def _tables(store: Store, schema):  # -> Iterator[pyarrow.Table]
    import pyarrow as pa

    batch = []
    for row in store.iter_rows(status=STATUS_OK):
        batch.append(row)
        if len(batch) >= _CHUNK:
            yield _table(store, batch, schema, pa)
            batch = []
    if batch:
        yield _table(store, batch, schema, pa)


def _table(store: Store, rows: list, schema, pa):  # -> pyarrow.Table
    found, vecs = store.get_vectors([r.id for r in rows])
    by_id = {int(i): n for n, i in enumerate(found)}
    rows = [r for r in rows if r.id in by_id]
    flat = np.ascontiguousarray(vecs[[by_id[r.id] for r in rows]], dtype=np.float32)  # [n, D]
    dim = store.meta.dim
    offsets = pa.array(np.arange(0, (len(rows) + 1) * dim, dim, dtype=np.int32))
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
