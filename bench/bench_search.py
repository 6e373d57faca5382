"""Search benchmark: exact flat vs IVF-PQ + exact re-ranking over synthetic embeddings.

Builds a real clipsift store (SQLite, float16 vectors, catalog rows) with N synthetic unit
vectors, then measures in the same run:
  - p50 / p95 single-query latency of exact search (faiss IndexFlatIP, the library's path
    for small indexes) and of the ANN path (IVF-PQ candidates re-ranked from SQLite);
  - recall@10 of the ANN path against exact search, for the default settings and a sweep;
  - bytes per vector of the FAISS file and of the SQLite store; build times.
Optionally (--hnsw-n) an HNSW index on a subset, to back the IVF-PQ choice.

Synthetic data: `--centers` random directions; each vector is a centre plus isotropic
Gaussian noise of norm ~`--noise`, normalised (neighbourhoods like real CLIP embeddings,
where near neighbours are much closer than random pairs). Queries are held-out draws.

    .venv/bin/python bench/bench_search.py --n 1000000 --dim 512 --workdir /tmp/bench
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import load_avg, machine_info
from clipsift.index.ann import AnnConfig, VectorIndex
from clipsift.index.store import NewItem, Store


def synthetic(n: int, dim: int, centers: int, noise: float, seed: int,
              chunk: int = 50_000):
    """Yield float32 [<=chunk, dim] unit vectors around `centers` shared random centres."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        x = c[rng.integers(0, centers, m)]
        x += noise * rng.standard_normal((m, dim)).astype(np.float32) / np.sqrt(dim)
        yield x / np.linalg.norm(x, axis=1, keepdims=True)


def build_store(path: Path, args) -> tuple[Store, np.ndarray, float]:
    """Write N vectors (+ catalog rows) in 10k-item transactions; return store, queries."""
    t0 = time.perf_counter()
    store = Store.create(path, model=f"synthetic:{args.dim}", dim=args.dim)
    total = args.n + args.queries
    stream = synthetic(total, args.dim, args.centers, args.noise, args.seed, chunk=10_000)
    done, held = 0, []
    for x in stream:
        take = min(len(x), args.n - done)
        with store.transaction():
            for i in range(take):
                key = f"/photos/{(done + i) // 1000:04d}/IMG_{done + i:07d}.jpg"
                store.insert(NewItem(key, 2_000_000 + i, 1.7e9 + i, f"{done + i:032x}",
                                     x[i], None, 4032, 3024))
        done += take
        held.append(x[take:])
    return store, np.concatenate(held)[: args.queries], time.perf_counter() - t0


def timed_queries(vi: VectorIndex, queries: np.ndarray, k: int):
    """Single-query latencies (ms), [Q, k] ids and [Q, k] scores."""
    times, ids, scores = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        s, i = vi.search(q[None], k)
        times.append((time.perf_counter() - t0) * 1000)
        ids.append(i[0])
        scores.append(s[0])
    return np.asarray(times), np.stack(ids), np.stack(scores)


def recall(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


def run_exact(store: Store, queries: np.ndarray, k: int) -> dict:
    vi = VectorIndex(store, AnnConfig(threshold=10**12))  # always flat
    t0 = time.perf_counter()
    vi.refresh()
    build = time.perf_counter() - t0
    vi.search(queries[:2], k)  # warm-up
    times, ids, scores = timed_queries(vi, queries, k)
    del vi
    sample = np.random.default_rng(1).integers(1, store.vector_count() + 1, 2000)
    rand = queries @ store.get_vectors(sample)[1].astype(np.float32).T  # [Q, 2000]
    return {"build_s": build, "p50_ms": float(np.median(times)),
            "p95_ms": float(np.percentile(times, 95)), "ids": ids,
            "top1_cos": float(scores[:, 0].mean()), "top10_cos": float(scores[:, -1].mean()),
            "random_cos": float(rand.mean())}


def run_ann(store: Store, queries: np.ndarray, k: int, exact_ids: np.ndarray, cfg: AnnConfig,
            sweep: list[tuple[int, int]]) -> dict:
    vi = VectorIndex(store, cfg)
    t0 = time.perf_counter()
    vi.refresh()
    build = time.perf_counter() - t0
    assert vi.kind == "ivfpq", vi.kind
    nlist, pq_m = vi.ann_params or (0, 0)
    out = {"build_s": build, "nlist": nlist, "pq_m": pq_m,
           "faiss_bytes": os.path.getsize(vi.cache_path), "sweep": []}
    for nprobe, rerank in sweep:
        vi.config = dataclasses.replace(cfg, nprobe=nprobe, rerank=rerank)
        vi.search(queries[:2], k)
        times, ids, _ = timed_queries(vi, queries, k)
        out["sweep"].append({"nprobe": nprobe, "rerank": rerank,
                             "p50_ms": float(np.median(times)),
                             "p95_ms": float(np.percentile(times, 95)),
                             "recall10": recall(ids, exact_ids)})
    t0 = time.perf_counter()
    VectorIndex(Store.open(store.path), cfg).refresh()  # a new process: load from the file
    out["load_s"] = time.perf_counter() - t0
    return out


def run_hnsw(store: Store, queries: np.ndarray, n: int, k: int) -> dict:
    """HNSW32 (flat storage) on the first n vectors, efSearch swept; exact on the same set."""
    import faiss

    data = np.concatenate([v for _, v in store.iter_vectors()])[:n].astype(np.float32)
    flat = faiss.IndexFlatIP(data.shape[1])
    flat.add(data)
    _, want = flat.search(queries, k)
    index = faiss.IndexHNSWFlat(data.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    t0 = time.perf_counter()
    index.add(data)
    out = {"n": n, "build_s": time.perf_counter() - t0, "sweep": []}
    path = store.path.with_suffix(".hnsw")
    faiss.write_index(index, str(path))
    out["bytes_per_vector"] = os.path.getsize(path) / n
    path.unlink()
    for ef in (16, 32, 64, 128):
        index.hnsw.efSearch = ef
        times, got = [], []
        for q in queries:
            t1 = time.perf_counter()
            got.append(index.search(q[None], k)[1][0])
            times.append((time.perf_counter() - t1) * 1000)
        out["sweep"].append({"efSearch": ef, "p50_ms": float(np.median(times)),
                             "recall10": recall(np.stack(got), want)})
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--centers", type=int, default=2000)
    p.add_argument("--noise", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--hnsw-n", type=int, default=0, help="also measure HNSW on n vectors")
    p.add_argument("--workdir", default="/tmp/clipsift-bench-search")
    p.add_argument("--json-out", default="")
    return p.parse_args(argv)


def report(res: dict) -> None:
    e, a = res["exact"], res["ann"]
    n = res["n"]
    print(f"\nN={n} dim={res['dim']} queries={res['queries']} centers={res['centers']} "
          f"noise={res['noise']}")
    print(f"store: {res['store_bytes'] / n:.0f} B/vector ({res['store_bytes'] / 1e9:.2f} GB), "
          f"built in {res['store_s']:.0f} s")
    print(f"exact flat: build {e['build_s']:.1f} s, p50 {e['p50_ms']:.2f} ms, "
          f"p95 {e['p95_ms']:.2f} ms")
    print(f"neighbourhoods: mean cos to 1st NN {e['top1_cos']:.3f}, 10th NN "
          f"{e['top10_cos']:.3f}, random item {e['random_cos']:.3f}")
    print(f"IVF-PQ nlist={a['nlist']} m={a['pq_m']}: build {a['build_s']:.1f} s, load "
          f"{a['load_s']:.2f} s, file {a['faiss_bytes'] / n:.1f} B/vector")
    print("| nprobe | rerank | p50 ms | p95 ms | recall@10 | speed-up (p50) |")
    print("|---|---|---|---|---|---|")
    for s in a["sweep"]:
        print(f"| {s['nprobe']} | {s['rerank']} | {s['p50_ms']:.2f} | {s['p95_ms']:.2f} | "
              f"{s['recall10']:.3f} | {e['p50_ms'] / s['p50_ms']:.0f}x |")
    if "hnsw" in res:
        h = res["hnsw"]
        print(f"HNSW32 on {h['n']}: build {h['build_s']:.0f} s, "
              f"{h['bytes_per_vector']:.0f} B/vector")
        for s in h["sweep"]:
            print(f"  efSearch {s['efSearch']}: p50 {s['p50_ms']:.2f} ms, "
                  f"recall@10 {s['recall10']:.3f}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store, queries, store_s = build_store(work / "bench.db", args)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    res = {"machine": machine_info(), "argv": sys.argv[1:], "load_before": load_avg()}
    res.update({k: getattr(args, k) for k in ("n", "dim", "queries", "centers", "noise")})
    res["store_s"] = store_s
    res["store_bytes"] = os.path.getsize(store.path)
    print(f"store built: {store_s:.0f} s", flush=True)
    exact = run_exact(store, queries, args.k)
    print(f"exact: p50 {exact['p50_ms']:.2f} ms", flush=True)
    sweep = [(8, 128), (16, 128), (16, 256), (32, 256), (32, 512), (64, 512)]
    cfg = AnnConfig(threshold=min(AnnConfig().threshold, args.n))  # defaults otherwise
    res["ann"] = run_ann(store, queries, args.k, exact["ids"], cfg, sweep)
    res["exact"] = {k: v for k, v in exact.items() if k != "ids"}
    res["default"] = {"nprobe": AnnConfig().nprobe, "rerank": AnnConfig().rerank}
    if args.hnsw_n:
        res["hnsw"] = run_hnsw(store, queries, args.hnsw_n, args.k)
    res["load_after"] = load_avg()
    report(res)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
    return res


if __name__ == "__main__":
    main()
