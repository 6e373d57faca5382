"""FAISS search over a store's vectors: exact for small indexes, IVF-PQ + exact re-ranking
for large ones.

- Below `AnnConfig.threshold` vectors: an in-memory `IndexIDMap(IndexFlatIP)` built from the
  store's float16 vectors; exact inner product.
- From the threshold up: an `IndexIVFPQ` (inner-product metric, native int64 ids = SQLite
  rowids) finds `rerank` candidates, which are re-scored exactly from the float16 vectors in
  SQLite. The trained index is a derived cache saved next to the store as `INDEX.faiss` with
  a sidecar `INDEX.faiss.json` recording the store uuid, the store generation it reflects,
  its vector count and a checksum of the FAISS file. A missing, corrupt or foreign file is
  rebuilt; a file a few generations behind is brought up to date from the store's
  generation stamps and tombstones, and re-trained when the collection has grown a lot.

IVF-PQ was chosen over HNSW after measuring both (docs/benchmarks-search.md): HNSW answers
a query faster (~0.5 ms vs ~2 ms) but its file holds full vectors (~2.3 kB/vector against
~80 B), which every `clipsift search` process would have to read, and it cannot remove ids,
so each incremental update would force a rebuild. IVF-PQ loads in a fraction of a second
at 1M vectors and follows the store with `remove_ids` / `add_with_ids`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clipsift.index.store import Store

CACHE_FORMAT = "clipsift-faiss/1"


@dataclass(frozen=True)
class AnnConfig:
    """When and how to use approximate search.

    Attributes:
        threshold: vector count from which the IVF-PQ index is used (below: exact flat).
        nlist: IVF cells; None picks ~2*sqrt(n) rounded to a power of two.
        pq_m: PQ sub-quantizers (bytes per code); None picks dim // 8.
        nprobe: IVF cells visited per query.
        rerank: candidates re-scored exactly from the stored vectors (at least 4*k are used).
        max_train: training sample size cap.
        regrow: re-train when the store holds more than `regrow` x the vectors trained on.
    """

    threshold: int = 200_000
    nlist: int | None = None
    pq_m: int | None = None
    nprobe: int = 32
    rerank: int = 256
    max_train: int = 65_536
    regrow: float = 4.0


@dataclass(frozen=True)
class CacheInfo:
    """Contents of the sidecar JSON next to a saved FAISS file."""

    store_uuid: str
    generation: int
    count: int
    trained_on: int
    dim: int
    nlist: int
    pq_m: int
    checksum: str
    format: str = CACHE_FORMAT


def auto_nlist(n: int) -> int:
    """~2*sqrt(n) rounded to a power of two, at least 16 and at most n // 39.

    Adding a vector costs one search over the nlist centroids, so this halves the build
    time of the common 4*sqrt(n) while a query still scans only ~nprobe*sqrt(n)/2 codes.
    """
    target = max(16, 2 * math.sqrt(max(n, 1)))
    nlist = 2 ** round(math.log2(target))
    return int(max(1, min(nlist, max(1, n // 39))))


def auto_pq_m(dim: int) -> int:
    """Largest divisor of `dim` not above dim // 8: sub-vectors of >= 8 dims (faiss k-means
    on 4-dim sub-vectors is over 10x slower to train, measured)."""
    want = max(1, dim // 8)
    return max(m for m in range(1, want + 1) if dim % m == 0)


class VectorIndex:
    """Top-k inner-product search over a `Store`, kept in step with its generation.

    Example:
        >>> vi = VectorIndex(store)
        >>> scores, ids = vi.search(query_vectors, k=10)  # [Q, k] float32, [Q, k] int64 (-1 pad)
    """

    def __init__(self, store: Store, config: AnnConfig | None = None) -> None:
        self.store = store
        self.config = config or AnnConfig()
        self.cache_path = Path(str(store.path) + ".faiss")
        self.sidecar_path = Path(str(store.path) + ".faiss.json")
        self._index: Any = None
        self._kind = ""
        self._gen = -1
        self._trained_on = 0
        self.rebuilt = False  # set when the last refresh had to build from scratch

    @property
    def kind(self) -> str:
        """'flat' or 'ivfpq' after `refresh()`."""
        return self._kind

    @property
    def ann_params(self) -> tuple[int, int] | None:
        """(nlist, PQ bytes per vector) of the IVF-PQ index in use, None when flat."""
        if self._kind != "ivfpq":
            return None
        return int(self._index.nlist), int(self._index.pq.M)

    # ---- keeping up to date -------------------------------------------------------------
    def refresh(self) -> None:
        """Bring the FAISS index up to the store's current generation."""
        gen = self.store.generation()  # read first: later reads see at least this state
        if self._index is not None and gen == self._gen:
            return
        n = self.store.vector_count()
        want = "ivfpq" if n >= self.config.threshold else "flat"
        self.rebuilt = False
        if self._index is None and want == "ivfpq":
            self._load_cache()
        if self._index is None or self._kind != want or self._needs_retrain(n):
            self._build(want, gen, n)
        elif gen != self._gen:
            self._catch_up()
        if self._kind == "ivfpq":
            self._save_cache(n)

    def _needs_retrain(self, n: int) -> bool:
        return self._kind == "ivfpq" and n > self.config.regrow * max(self._trained_on, 1)

    def _build(self, kind: str, gen: int, n: int) -> None:
        import faiss

        index = self._train_ivfpq(n) if kind == "ivfpq" else None
        if index is None:  # flat wanted, or the store emptied while it was being read
            index, kind = faiss.IndexIDMap(faiss.IndexFlatIP(self.store.meta.dim)), "flat"
            self._trained_on = 0
        for ids, vecs in self.store.iter_vectors():
            index.add_with_ids(vecs.astype(np.float32), ids)
        self._index, self._kind, self._gen, self.rebuilt = index, kind, gen, True

    def _train_ivfpq(self, n: int) -> Any:
        """A trained, empty IVF-PQ index; None when the store holds under 2 vectors now
        (items deleted since `n` was counted: the caller builds a flat index instead)."""
        import faiss

        cfg, dim = self.config, self.store.meta.dim
        nlist = cfg.nlist or auto_nlist(n)
        m = cfg.pq_m or auto_pq_m(dim)
        stride = max(1, n // cfg.max_train)
        train = _stack([v for _, v in self.store.iter_vectors(stride=stride)], dim)
        train = train[: cfg.max_train]  # [T, D]
        if len(train) < nlist:  # ids with gaps: fall back to a prefix
            train = _stack([v for _, v in self.store.iter_vectors()], dim)[: cfg.max_train]
        if len(train) < 2:
            return None
        nlist = min(nlist, len(train))
        nbits = min(8, int(math.log2(len(train))))  # k-means needs >= 2**nbits points
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = 10  # candidates are re-ranked exactly: coarse cells suffice
        index.cp.min_points_per_centroid = 1  # small collections: no warnings
        index.pq.cp.min_points_per_centroid = 1
        index.train(train)
        self._trained_on = len(train) * stride if stride > 1 else n
        return index

    def _catch_up(self) -> None:
        """Apply writes made after `self._gen`: drop removed/replaced ids, add new vectors.

        The generation and the changes are read in one read transaction: a writer that
        commits meanwhile is seen by the next refresh, never half (which would list a
        replaced id twice)."""
        import faiss

        since = self._gen
        with self.store.snapshot():
            gen = self.store.generation()
            changed = self.store.changed_ids_since(since)
            gone = np.concatenate([self.store.tombstones_since(since), changed])
            if len(gone):
                self._index.remove_ids(faiss.IDSelectorBatch(gone.astype(np.int64)))
            for ids, vecs in self.store.iter_vectors(since_gen=since):
                self._index.add_with_ids(vecs.astype(np.float32), ids)
        self._gen = gen

    # ---- cache file ---------------------------------------------------------------------
    def _load_cache(self) -> None:
        import faiss

        info = self.read_sidecar()
        meta = self.store.meta
        if info is None or info.store_uuid != meta.uuid or info.dim != meta.dim:
            return
        if info.generation > self.store.generation():
            return  # written for a store state we cannot see: rebuild
        try:
            if _file_checksum(self.cache_path) != info.checksum:
                return
            index = faiss.read_index(str(self.cache_path))
        except (OSError, RuntimeError):
            return
        self._index, self._kind, self._gen = index, "ivfpq", info.generation
        self._trained_on = info.trained_on

    def read_sidecar(self) -> CacheInfo | None:
        """The sidecar of the saved FAISS file, or None when missing/unreadable."""
        try:
            raw = json.loads(self.sidecar_path.read_text(encoding="utf-8"))
            if raw.get("format") != CACHE_FORMAT:
                return None
            return CacheInfo(**raw)
        except (OSError, ValueError, TypeError):
            return None

    def _save_cache(self, n: int) -> None:
        """Write FAISS file + sidecar atomically; a read-only location is not an error."""
        import faiss

        info = self.read_sidecar()
        if info and info.store_uuid == self.store.meta.uuid and info.generation == self._gen:
            return
        tmp = self.cache_path.with_name(f"{self.cache_path.name}.{os.getpid()}.tmp")
        try:
            faiss.write_index(self._index, str(tmp))
            info = CacheInfo(
                store_uuid=self.store.meta.uuid, generation=self._gen, count=n,
                trained_on=self._trained_on, dim=self.store.meta.dim,
                nlist=int(self._index.nlist), pq_m=int(self._index.pq.M),
                checksum=_file_checksum(tmp),
            )
            os.replace(tmp, self.cache_path)
            side_tmp = self.sidecar_path.with_name(f"{self.sidecar_path.name}.{os.getpid()}.tmp")
            side_tmp.write_text(json.dumps(info.__dict__, indent=1) + "\n", encoding="utf-8")
            os.replace(side_tmp, self.sidecar_path)
        except OSError:
            tmp.unlink(missing_ok=True)

    # ---- search -------------------------------------------------------------------------
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product. queries float32 [Q, D] -> (scores [Q, k], ids [Q, k]).

        Each id appears at most once per row; rows with fewer than k results are padded
        with score -inf and id -1.
        """
        self.refresh()
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)  # [Q, D]
        if self._kind == "flat":
            return self._flat_search(q, k)
        self._index.nprobe = min(self.config.nprobe, self._index.nlist)
        cand_k = max(self.config.rerank, 4 * k)
        _, cand = self._index.search(q, cand_k)  # [Q, R]
        return self.rerank(q, cand, k)

    def _flat_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k, each id once: should an id be in FAISS twice (it never stays so: see
        `_catch_up`), search deeper until k distinct ids are found or all were seen."""
        fetch = k
        while True:
            scores, ids = _unique_rows(*_pad_scores(*self._index.search(q, fetch)))
            if fetch >= self._index.ntotal or (ids[:, : min(k, fetch)] >= 0).all():
                return scores[:, :k], ids[:, :k]
            fetch = min(2 * fetch, int(self._index.ntotal))

    def rerank(self, q: np.ndarray, cand: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact scores of candidate ids [Q, R] from the stored vectors; keep the top k."""
        uniq = np.unique(cand[cand >= 0])
        found, vecs = self.store.get_vectors(uniq)
        order = np.argsort(found)
        found, vecs = found[order], vecs[order].astype(np.float32)  # [U], [U, D]
        out_s = np.full((len(q), k), -np.inf, np.float32)
        out_i = np.full((len(q), k), -1, np.int64)
        if not len(found):  # every candidate was deleted since the FAISS index was updated
            return out_s, out_i
        for row in range(len(q)):
            ids = np.unique(cand[row][cand[row] >= 0])  # each id once
            pos = np.searchsorted(found, ids)
            pos = pos[(pos < len(found)) & (found[np.minimum(pos, len(found) - 1)] == ids)]
            if not len(pos):
                continue
            scores = vecs[pos] @ q[row]  # [R]
            top = np.argsort(-scores, kind="stable")[:k]
            out_s[row, : len(top)] = scores[top]
            out_i[row, : len(top)] = found[pos[top]]
        return out_s, out_i

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Brute force over the store, chunk by chunk (no index kept); for checking recall."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        best_s = np.full((len(q), 0), -np.inf, np.float32)
        best_i = np.full((len(q), 0), -1, np.int64)
        for ids, vecs in self.store.iter_vectors():
            scores = q @ vecs.astype(np.float32).T  # [Q, n]
            all_s = np.concatenate([best_s, scores], axis=1)
            all_i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], axis=1)
            top = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
            best_s = np.take_along_axis(all_s, top, 1)
            best_i = np.take_along_axis(all_i, top, 1)
        pad = k - best_s.shape[1]
        if pad > 0:
            best_s = np.pad(best_s, ((0, 0), (0, pad)), constant_values=-np.inf)
            best_i = np.pad(best_i, ((0, 0), (0, pad)), constant_values=-1)
        return best_s, best_i


def _stack(chunks: list[np.ndarray], dim: int) -> np.ndarray:
    """Concatenate float16 vector chunks -> float32 [N, D]; [0, D] when there are none."""
    if not chunks:
        return np.zeros((0, dim), np.float32)
    return np.concatenate(chunks).astype(np.float32)


def _pad_scores(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = scores.astype(np.float32, copy=True)
    scores[ids < 0] = -np.inf
    return scores, ids.astype(np.int64)


def _unique_rows(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each id once per row (its first, best-scored place), the rest padded with -1/-inf."""
    out_s = np.full_like(scores, -np.inf)
    out_i = np.full_like(ids, -1)
    for row in range(len(ids)):
        _, first = np.unique(ids[row], return_index=True)
        keep = np.sort(first)
        keep = keep[ids[row][keep] >= 0]
        out_s[row, : len(keep)] = scores[row][keep]
        out_i[row, : len(keep)] = ids[row][keep]
    return out_s, out_i


def _file_checksum(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
