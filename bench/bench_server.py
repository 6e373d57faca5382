"""Server benchmark: text-search requests/s, latency and server memory with 16 and 32
concurrent clients on a 100,000-vector index, micro-batching ON vs OFF in the same run.

The index is a real clipsift store (SQLite catalog + float16 vectors) of synthetic unit
vectors whose model is the deterministic `fake:DIM` embedder, so the text side costs
almost nothing and the measurement is the server itself: HTTP + validation + batching +
FAISS exact search (flat inner product; the library's path below 200k vectors) + catalog
reads. For each (clients, mode) a fresh `clipsift serve` process is started on 127.0.0.1;
clients are threads of this process with keep-alive connections, posting distinct random
queries. The server's resident memory (VmRSS) is read from /proc after the warm-up and at
the end, with its peak (VmHWM).

    .venv/bin/python bench/bench_server.py --n 100000 --dim 512 --clients 16,32 \
        --seconds 15 --search-threads 1 --json bench/results/server.json

Prints a table and, with --json FILE, writes the numbers with the machine (CPU model and
flags, cores, load average before and after).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from bench._common import load_avg, machine_info
from clipsift.index.store import NewItem, Store

#: The deterministic `fake` model is a test plugin; the server loads it via CLIPSIFT_PLUGINS.
FAKE_PLUGIN = Path(__file__).resolve().parents[1] / "tests" / "support" / "fake_model.py"

WORDS = ["dog", "cat", "bird", "fish", "car", "tree", "house", "beach", "mountain", "sunset",
         "river", "city", "street", "night", "snow", "forest", "flower", "red", "blue",
         "green", "yellow", "old", "small", "big", "running", "sleeping", "people", "boat",
         "train", "plane", "bicycle", "horse", "cow", "sheep", "kitchen", "table", "chair",
         "window", "door"]


def build_store(path: Path, n: int, dim: int, seed: int = 0) -> float:
    """Write `n` synthetic unit vectors (+ catalog rows) in 10k-item transactions."""
    t0 = time.perf_counter()
    store = Store.create(path, model=f"fake:{dim}", dim=dim)
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((256, dim)).astype(np.float32)
    for start in range(0, n, 10_000):
        m = min(10_000, n - start)
        x = centers[rng.integers(0, 256, m)] + rng.standard_normal((m, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        with store.transaction():
            for i in range(m):
                j = start + i
                store.insert(NewItem(f"/photos/{j // 1000:04d}/IMG_{j:07d}.jpg", 2_000_000 + j,
                                     1.7e9 + j, f"{j:032x}", x[i], None, 4032, 3024))
    store.close()
    return time.perf_counter() - t0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, args, batching: bool, log: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "clipsift", "serve", str(db), "--model", f"fake:{args.dim}",
           "--port", str(port), "--log-level", "warning",
           "--batch-window-ms", str(args.window_ms),
           "--batching" if batching else "--no-batching"]
    if args.search_threads:
        cmd += ["--search-threads", str(args.search_threads)]
    env = {**os.environ, "CLIPSIFT_PLUGINS": str(FAKE_PLUGIN)}  # registers `fake:DIM`
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v1/health")
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise RuntimeError("server did not start")


def client(port: int, seed: int, stop: threading.Event, record: threading.Event,
           out: list[float], errors: list[str], k: int) -> None:
    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Content-Type": "application/json"}
    while not stop.is_set():
        query = " ".join(rng.sample(WORDS, rng.randint(2, 4)))
        body = json.dumps({"query": query, "k": k})
        t0 = time.perf_counter()
        try:
            conn.request("POST", "/v1/search/text", body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException) as ex:
            ok = False
            resp = None
            errors.append(repr(ex))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        took = time.perf_counter() - t0
        if record.is_set():
            if ok:
                out.append(took)
            elif resp is not None:
                errors.append(f"HTTP {resp.status}")
    conn.close()


def batch_means(port: int) -> dict[str, float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    out = {}
    for name in ("text", "search"):
        s = re.search(rf'clipsift_batch_size_sum{{batcher="{name}"}} ([\d.e+]+)', text)
        c = re.search(rf'clipsift_batch_size_count{{batcher="{name}"}} ([\d.e+]+)', text)
        if s and c and float(c.group(1)):
            out[name] = float(s.group(1)) / float(c.group(1))
    return out


def memory_mb(pid: int) -> dict[str, float]:
    """VmRSS (now) and VmHWM (peak) of a process, in MB, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def run_mode(db: Path, args, clients: int, batching: bool) -> dict:
    log = Path(args.workdir) / f"server-{clients}-{'on' if batching else 'off'}.log"
    t0 = time.perf_counter()
    proc, port = start_server(db, args, batching, log)
    startup = time.perf_counter() - t0
    stop, record = threading.Event(), threading.Event()
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    threads = [threading.Thread(target=client, args=(port, 1000 * i + batching, stop, record,
                                                      lat[i], errors, args.k))
               for i in range(clients)]
    try:
        for t in threads:
            t.start()
        time.sleep(args.warmup)
        rss_start = memory_mb(proc.pid)["VmRSS"]
        record.set()
        t_start = time.perf_counter()
        time.sleep(args.seconds)
        record.clear()
        elapsed = time.perf_counter() - t_start
        stop.set()
        for t in threads:
            t.join(60)
        means = batch_means(port)
        mem = memory_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    ms = np.asarray([x for xs in lat for x in xs]) * 1000
    return {"clients": clients, "batching": batching, "requests": len(ms),
            "errors": len(errors), "rps": len(ms) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "mean_ms": float(ms.mean()), "mean_batch": means, "startup_s": startup,
            "rss_mb_start": rss_start, "rss_mb_end": mem["VmRSS"], "rss_mb_peak": mem["VmHWM"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clients", default="16,32", help="comma-separated client counts")
    ap.add_argument("--modes", default="on,off", help="batching modes to run: on,off")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--window-ms", type=float, default=5.0)
    ap.add_argument("--search-threads", type=int, default=None,
                    help="passed to `clipsift serve --search-threads` (FAISS threads)")
    ap.add_argument("--workdir", default="/tmp/clipsift-bench-server")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    db = Path(args.workdir) / f"synthetic-{args.n}-{args.dim}.db"
    if not db.exists():
        print(f"building {db} ({args.n} vectors)...", flush=True)
        print(f"  built in {build_store(db, args.n, args.dim):.1f} s", flush=True)
    load_before = load_avg()
    runs = [(int(c), mode == "on") for c in args.clients.split(",")
            for mode in args.modes.split(",")]
    results = [run_mode(db, args, clients, batching) for clients, batching in runs]
    env = {"n": args.n, "dim": args.dim, "clients": args.clients, "seconds": args.seconds,
           "warmup": args.warmup, "k": args.k, "window_ms": args.window_ms,
           "search_threads": args.search_threads, "loadavg_before": load_before,
           "loadavg_after": load_avg(),
           "command": "python bench/bench_server.py " + " ".join(sys.argv[1:])}
    print(f"\n{args.n} vectors x {args.dim} dims, k={args.k}, {args.seconds:g} s per run, "
          f"search threads {args.search_threads or 'default'}, load average before "
          f"{load_before[0]:.2f}")
    print(f"{'clients':>7} {'batching':<9}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'errors':>7}"
          f"{'text b.':>8}{'search b.':>10}  {'RSS MB start->end (peak)':>18}")
    for r in results:
        b = r["mean_batch"]
        rss = f"{r['rss_mb_start']:.0f}->{r['rss_mb_end']:.0f} ({r['rss_mb_peak']:.0f})"
        print(f"{r['clients']:>7} {'on' if r['batching'] else 'off':<9}{r['rps']:>8.1f}"
              f"{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['errors']:>7}{b.get('text', 0):>8.1f}"
              f"{b.get('search', 0):>10.1f}  {rss:>18}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine_info(), "env": env,
                                               "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
