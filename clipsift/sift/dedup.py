"""Near-duplicate groups over image embeddings.

`find_duplicates` links every pair of images whose embeddings have cosine similarity at
least `threshold`, found with a FAISS range search (exact inner product on unit vectors,
or an IVF index for large collections), and joins linked images into groups with
union-find (single linkage: A~B and B~C put A, B and C in one group even if A and C are
further apart; each member's similarity to the keeper is reported). One keeper per group
is chosen by an ordered policy, by default the largest resolution, then the oldest file.

    >>> coll = collection_from_index("photos.db")
    >>> result = find_duplicates(coll, threshold=0.95)
    >>> write_groups_parquet(result, coll, "dups.parquet")

The HTML page of the groups is `clipsift.sift.dedup_page`; the uniqueness ranking over a
`Collection` is `clipsift.sift.unique`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from clipsift.errors import UsageError
from clipsift.inputs.keys import parquet_columns
from clipsift.models.base import l2_normalize
from clipsift.models.fingerprint import parquet_metadata

if TYPE_CHECKING:
    from clipsift.engines import Engine
    from clipsift.models.base import ClipModel

KEEP_CRITERIA = ("resolution", "oldest", "newest", "largest-file", "smallest-file", "path")
DEFAULT_KEEP = ("resolution", "oldest")
#: From this many vectors `method="auto"` uses an IVF index instead of exact search.
IVF_FROM = 200_000
#: Similarities are float32 sums: identical unit vectors score 0.99999994, not 1.0. A pair
#: counts from `threshold - SIM_TOLERANCE` on, so `threshold=1.0` finds identical copies.
SIM_TOLERANCE = 1e-5
#: Query rows per FAISS search call (bounds the memory of one call).
CHUNK_ROWS = 4096


@dataclass
class Collection:
    """Embedded images and what the keeper policy needs (one row per readable image).

    Attributes:
        keys: paths (or "shard.tar::member" keys).
        vectors: float32 [N, D], unit rows.
        width, height: int64 [N], -1 when unknown.
        mtime: float64 [N], NaN when unknown. size: int64 [N] bytes, -1 when unknown.
        errors: (key, reason) of images that could not be embedded, and of folders that
            could not be listed.
        model: the model name the vectors come from; fingerprint: that model's digest.
    """

    keys: list[str]
    vectors: np.ndarray
    width: np.ndarray
    height: np.ndarray
    mtime: np.ndarray
    size: np.ndarray
    errors: list[tuple[str, str]] = field(default_factory=list)
    model: str = ""
    dim: int = 0
    fingerprint: str = ""  # digest of the model the vectors come from

    def __len__(self) -> int:
        return len(self.keys)

    def metadata(self) -> dict[str, str]:
        """The model keys of every Parquet file written from this collection."""
        return parquet_metadata(self.model, self.dim or self.vectors.shape[1], self.fingerprint)


def collection_from_index(index: str | os.PathLike) -> Collection:
    """Read the stored vectors and catalog of a clipsift index (nothing is re-encoded)."""
    from clipsift.index.index import Index

    with Index.open(index) as idx:
        rows, parts = [], []
        for chunk in idx.iter_embeddings():
            rows += chunk.rows
            parts.append(chunk.vectors)
        info = idx.info
        vectors = np.concatenate(parts) if parts else np.zeros((0, info.dim), np.float32)
        errors = [(r.key, r.error or "") for r in idx.unembedded()]
    return Collection(
        keys=[r.key for r in rows], vectors=l2_normalize(vectors),
        width=np.array([r.width if r.width is not None else -1 for r in rows], np.int64),
        height=np.array([r.height if r.height is not None else -1 for r in rows], np.int64),
        mtime=np.array([r.mtime if r.mtime >= 0 else np.nan for r in rows], np.float64),
        size=np.array([r.size for r in rows], np.int64), errors=errors, model=info.model,
        dim=info.dim, fingerprint=info.fingerprint.digest if info.fingerprint else "")


def collection_from_inputs(model: ClipModel, inputs: Sequence[str | os.PathLike], *,
                           engine: Engine | None = None, batch_size: int = 64) -> Collection:
    """Embed files, folders, globs, tar shards or file lists into a `Collection`."""
    from clipsift.engines.local import LocalEngine
    from clipsift.inputs.sources import Walk

    eng = engine if engine is not None else LocalEngine()
    keys, vecs, w, h, mt, sz, errors = [], [], [], [], [], [], []
    walk = Walk(inputs)
    for batch in eng.embed(model, walk, batch_size=batch_size):
        for r in batch:
            if r.vector is None:
                errors.append((r.item.key, r.error or ""))
                continue
            keys.append(r.item.key)
            vecs.append(r.vector)
            w.append(-1 if r.width is None else r.width)
            h.append(-1 if r.height is None else r.height)
            mt.append(np.nan if r.item.mtime is None else r.item.mtime)
            sz.append(-1 if r.item.size is None else r.item.size)
    errors += [(e.path, f"cannot list folder: {e.reason}") for e in walk.errors]
    vectors = np.stack(vecs) if vecs else np.zeros((0, model.dim), np.float32)
    return Collection(keys, l2_normalize(vectors), np.array(w, np.int64), np.array(h, np.int64),
                      np.array(mt, np.float64), np.array(sz, np.int64), errors, model.name,
                      model.dim, model.fingerprint.digest)


# ---- near-duplicates -------------------------------------------------------------------------
@dataclass(frozen=True)
class DupGroup:
    """One group of near-duplicates: indexes into the collection, keeper first.

    Attributes:
        members: collection row indexes, the keeper first, then by similarity to it.
        similarity: cosine of each member to the keeper (1.0 for the keeper itself).
    """

    members: tuple[int, ...]
    similarity: tuple[float, ...]

    @property
    def keeper(self) -> int:
        return self.members[0]


@dataclass(frozen=True)
class DedupResult:
    """Groups found by `find_duplicates` (largest first) and counts.

    Attributes:
        groups: groups of 2+ images.
        items: images compared; duplicates: images that are not keepers of their group.
        pairs: linked pairs found by the range search.
    """

    groups: list[DupGroup]
    items: int
    duplicates: int
    pairs: int
    threshold: float
    keep: tuple[str, ...]
    method: str
    seconds: float


def parse_keep(text: str | Sequence[str]) -> tuple[str, ...]:
    """"resolution,oldest" -> ("resolution", "oldest"); checks every criterion."""
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text)]
    parts = [p for p in parts if p]
    bad = [p for p in parts if p not in KEEP_CRITERIA]
    if bad or not parts:
        raise UsageError(f"unknown keeper criterion {bad[0] if bad else text!r}; use a "
                         f"comma-separated list of: {', '.join(KEEP_CRITERIA)}")
    return tuple(parts)


def _index(vectors: np.ndarray, method: str, nprobe: int) -> tuple[Any, str]:
    import faiss

    n, dim = vectors.shape
    if method == "auto":
        method = "ivf" if n >= IVF_FROM else "exact"
    if method == "exact":
        index = faiss.IndexFlatIP(dim)
    elif method == "ivf":
        nlist = max(1, min(int(4 * np.sqrt(n)), n // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist,
                                   faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = vectors[rng.choice(n, min(n, 256 * nlist), replace=False)]
        index.train(sample)
        index.nprobe = min(nprobe, nlist)
    else:
        raise UsageError(f"unknown search method {method!r}; choose auto, exact or ivf")
    index.add(vectors)
    return index, method


def similar_pairs(vectors: np.ndarray, threshold: float, *, method: str = "auto",
                  nprobe: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """All pairs (i < j) with cosine >= threshold - SIM_TOLERANCE, via FAISS range search.

    Args:
        vectors: float32 [N, D], unit rows.
        threshold: the similarity from which a pair is kept, up to float rounding
            (`SIM_TOLERANCE`); FAISS's own range search keeps only scores above its radius.
        method: "exact", "ivf" or "auto" (see `find_duplicates`).
        nprobe: IVF cells searched per query.

    Returns:
        (i int64 [M], j int64 [M], similarity float32 [M], method used).
    """
    x = np.ascontiguousarray(vectors, np.float32)  # [N, D]
    if len(x) < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), "exact"
    index, used = _index(x, method, nprobe)
    # the largest float32 below the tolerant threshold: FAISS keeps scores > radius
    radius = float(np.nextafter(np.float32(threshold - SIM_TOLERANCE), np.float32(-np.inf)))
    out_i, out_j, out_s = [], [], []
    for start in range(0, len(x), CHUNK_ROWS):
        lims, sims, ids = index.range_search(x[start : start + CHUNK_ROWS], radius)
        query = np.repeat(np.arange(start, start + len(lims) - 1), np.diff(lims).astype(np.int64))
        forward = ids > query  # each pair once, no self-matches
        out_i.append(query[forward])
        out_j.append(ids[forward].astype(np.int64))
        out_s.append(sims[forward])
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_s), used


def _components(n: int, i: np.ndarray, j: np.ndarray) -> list[list[int]]:
    """Union-find over the pairs -> lists of row indexes of components with 2+ members."""
    parent = np.arange(n)

    def find(a: int) -> int:
        root = a
        while parent[root] != root:
            root = parent[root]
        while parent[a] != root:  # path compression
            parent[a], a = root, parent[a]
        return int(root)

    for a, b in zip(i.tolist(), j.tolist(), strict=True):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for a in np.unique(np.concatenate([i, j])).tolist():
        groups.setdefault(find(a), []).append(a)
    return [g for g in groups.values() if len(g) > 1]


def rank_key(coll: Collection, keep: tuple[str, ...], row: int) -> tuple:
    """Sort key of a member under the keeper policy: smaller is a better keeper.

    One value per criterion of `keep`, in order, then the key (the final tie-break)."""
    pixels = int(coll.width[row]) * int(coll.height[row]) if coll.width[row] >= 0 else -1
    mtime = float(coll.mtime[row])
    mtime = np.inf if np.isnan(mtime) else mtime
    values = {"resolution": -pixels, "oldest": mtime,
              "newest": -mtime if np.isfinite(mtime) else np.inf,
              "largest-file": -int(coll.size[row]),
              "smallest-file": int(coll.size[row]) if coll.size[row] >= 0 else np.inf,
              "path": coll.keys[row]}
    return (*(values[c] for c in keep), coll.keys[row])


def find_duplicates(coll: Collection, threshold: float = 0.95, *,
                    keep: str | Sequence[str] = DEFAULT_KEEP, method: str = "auto",
                    nprobe: int = 16) -> DedupResult:
    """Group near-duplicate images and pick a keeper per group.

    Args:
        coll: the embedded images.
        threshold: cosine similarity from which two images are duplicates (0.9-0.97 is
            typical for CLIP models: resized/re-encoded copies score ~0.97-0.99), with a
            tolerance of SIM_TOLERANCE (1e-5) for float rounding: 1.0 groups identical
            vectors (byte-identical files).
        keep: keeper policy, criteria in order (see KEEP_CRITERIA); ties end on the path.
        method: "exact", "ivf" (approximate, for millions) or "auto".
        nprobe: IVF cells searched per query (ivf only).

    Returns:
        A `DedupResult`, groups largest first (then by keeper path).

    Raises:
        UsageError: threshold outside (0, 1], unknown criterion or method.
    """
    if not 0.0 < threshold <= 1.0:
        raise UsageError(f"--threshold must be a cosine in (0, 1], got {threshold}")
    policy = parse_keep(keep)
    t0 = time.perf_counter()
    i, j, _, used = similar_pairs(coll.vectors, threshold, method=method, nprobe=nprobe)
    groups = []
    for members in _components(len(coll), i, j):
        ranked = sorted(members, key=lambda r: rank_key(coll, policy, r))
        keeper = ranked[0]
        sims = coll.vectors[ranked] @ coll.vectors[keeper]  # [m]
        order = [0, *sorted(range(1, len(ranked)), key=lambda k: (-sims[k], ranked[k]))]
        groups.append(DupGroup(tuple(ranked[k] for k in order),
                               tuple(1.0 if k == 0 else float(sims[k]) for k in order)))
    groups.sort(key=lambda g: (-len(g.members), coll.keys[g.keeper]))
    duplicates = sum(len(g.members) - 1 for g in groups)
    return DedupResult(groups, len(coll), duplicates, len(i), threshold, policy, used,
                       time.perf_counter() - t0)


def write_groups_parquet(result: DedupResult, coll: Collection, path: str | os.PathLike) -> Path:
    """One row per grouped image: group, path (+ path_bytes, see clipsift.inputs.keys),
    keeper, similarity to the keeper, width, height, size, mtime. Images in no group are
    not listed."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(g_id, m, k == 0, s) for g_id, g in enumerate(result.groups)
            for k, (m, s) in enumerate(zip(g.members, g.similarity, strict=True))]
    idx = np.array([r[1] for r in rows], np.int64)

    def opt(values: np.ndarray, bad: np.ndarray, typ: Any) -> pa.Array:
        return pa.array(values[idx], typ, mask=bad[idx])

    table = pa.table({
        "group": pa.array([r[0] for r in rows], pa.int32()),
        **parquet_columns("path", [coll.keys[r[1]] for r in rows]),
        "keeper": pa.array([r[2] for r in rows], pa.bool_()),
        "similarity": pa.array([r[3] for r in rows], pa.float32()),
        "width": opt(coll.width, coll.width < 0, pa.int32()),
        "height": opt(coll.height, coll.height < 0, pa.int32()),
        "size": opt(coll.size, coll.size < 0, pa.int64()),
        "mtime": opt(coll.mtime, np.isnan(coll.mtime), pa.float64()),
    }).replace_schema_metadata({
        **coll.metadata(),
        "clipsift.threshold": str(result.threshold), "clipsift.keep": ",".join(result.keep),
        "clipsift.method": result.method,
        "clipsift.summary": json.dumps({"items": result.items, "groups": len(result.groups),
                                        "duplicates": result.duplicates}),
    })
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    return out
