"""Uniqueness: rank images by how unusual they are in their collection.

`uniqueness` scores each image by the mean cosine distance (1 - similarity) to its k
nearest neighbours, from an exact FAISS k-NN search over the `Collection`'s vectors.

    >>> coll = collection_from_index("photos.db")
    >>> write_unique_parquet(uniqueness(coll, k=10), coll, "unique.parquet")
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsift.errors import UsageError
from clipsift.inputs.keys import parquet_columns
from clipsift.sift.dedup import CHUNK_ROWS, Collection


@dataclass(frozen=True)
class UniqueResult:
    """Images ranked most unusual first.

    Attributes:
        order: collection row indexes, most unusual first.
        score: mean cosine distance to the k nearest neighbours, per row of `order`.
        nearest: the nearest neighbour's row index, per row of `order`.
        nearest_similarity: its cosine similarity.
        k: neighbours used.
    """

    order: np.ndarray
    score: np.ndarray
    nearest: np.ndarray
    nearest_similarity: np.ndarray
    k: int


def uniqueness(coll: Collection, k: int = 10) -> UniqueResult:
    """Rank images by mean cosine distance to their k nearest neighbours (exact FAISS).

    Raises:
        UsageError: fewer than 2 images, or k < 1.
    """
    import faiss

    if k < 1:
        raise UsageError(f"-k must be at least 1, got {k}")
    n = len(coll)
    if n < 2:
        raise UsageError(f"uniqueness needs at least 2 embedded images, got {n}")
    k = min(k, n - 1)
    x = np.ascontiguousarray(coll.vectors, np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    scores = np.zeros(n, np.float32)
    nearest = np.zeros(n, np.int64)
    near_sim = np.zeros(n, np.float32)
    for start in range(0, n, CHUNK_ROWS):
        sims, ids = index.search(x[start : start + CHUNK_ROWS], k + 1)  # [q, k+1]
        for row in range(len(ids)):
            me = start + row
            hit = np.flatnonzero(ids[row] == me)
            drop = hit[0] if len(hit) else k  # self missing: many exact twins; drop the last
            s = np.delete(sims[row], drop)
            nn = np.delete(ids[row], drop)
            scores[me] = float(np.mean(1.0 - s))
            nearest[me], near_sim[me] = nn[0], s[0]
    order = np.lexsort((np.arange(n), -scores))
    return UniqueResult(order, scores[order], nearest[order], near_sim[order], k)


def write_unique_parquet(result: UniqueResult, coll: Collection,
                         path: str | os.PathLike) -> Path:
    """Rank, path, uniqueness, nearest neighbour and its similarity, most unusual first."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "rank": pa.array(np.arange(1, len(result.order) + 1), pa.int64()),
        **parquet_columns("path", [coll.keys[i] for i in result.order]),
        "uniqueness": pa.array(result.score, pa.float32()),
        **parquet_columns("nearest_path", [coll.keys[i] for i in result.nearest]),
        "nearest_similarity": pa.array(result.nearest_similarity, pa.float32()),
    }).replace_schema_metadata({**coll.metadata(), "clipsift.k": str(result.k)})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return out
