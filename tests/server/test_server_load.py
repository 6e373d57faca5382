"""Load test: `clipsift serve` (a real uvicorn process on 127.0.0.1) with a tiny real CLIP
model, 16 concurrent clients for a bounded time, a mix of text, upload, item and thumbnail
requests. Zero errors, p50/p99 recorded, server memory stable between the two halves."""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest

from clipsift.index.index import Index
from clipsift.models import load
from tests.support.serverkit import LiveServer, build_index, jpeg_bytes, percentile

CLIENTS = 16
HALF_SECONDS = 3.0
WORDS = ["fish", "bird", "dog", "shark", "water", "a photo", "red", "green", "blue", "tree"]


@pytest.fixture(scope="module")
def tiny_index(photos, tiny_vit, tmp_path_factory):
    name = f"TinyViT-quickgelu:{tiny_vit['safetensors']}"
    path = build_index(photos, tmp_path_factory.mktemp("load"), model=load(name), count=20)
    with Index(path) as idx:
        n = len(idx)
    return path, name, n


def _client_loop(url: str, stop: threading.Event, n_items: int, seed: int,
                 out: list[tuple[float, float, int, str]]) -> None:
    rng = random.Random(seed)
    image = jpeg_bytes((96, 80), (rng.randrange(256), 90, 160))
    with httpx.Client(base_url=url, timeout=30.0) as c:
        while not stop.is_set():
            roll = rng.random()
            t0 = time.perf_counter()
            if roll < 0.6:
                kind = "text"
                q = " ".join(rng.sample(WORDS, 2))
                r = c.post("/v1/search/text", json={"query": q, "k": 10})
            elif roll < 0.75:
                kind = "image"
                r = c.post("/v1/search/image/upload", files={"file": ("q.jpg", image)})
            elif roll < 0.9:
                kind = "item"
                r = c.post("/v1/search/item", json={"id": rng.randint(1, n_items), "k": 8})
            else:
                kind = "thumb"
                r = c.get(f"/v1/thumbnail/{rng.randint(1, n_items)}", params={"size": 128})
            out.append((t0, time.perf_counter() - t0, r.status_code, kind))


def _run_half(server: LiveServer, n_items: int, seed: int) -> list[tuple]:
    stop = threading.Event()
    results: list[list] = [[] for _ in range(CLIENTS)]
    threads = [threading.Thread(target=_client_loop,
                                args=(server.url, stop, n_items, seed + i, results[i]))
               for i in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(HALF_SECONDS)
    stop.set()
    for t in threads:
        t.join(60)
    return [r for rs in results for r in rs]


@pytest.mark.slow  # ~30 s with server start-up: run with `pytest -m slow`
def test_sixteen_clients_no_errors_stable_memory(tiny_index, record_property):
    path, model_name, n_items = tiny_index
    with LiveServer([str(path), "--model", model_name]) as server:
        _run_half(server, n_items, seed=0)  # warm-up (allocator pools, caches), not measured
        rss_start = server.rss_mb()
        first = _run_half(server, n_items, seed=100)
        rss_mid = server.rss_mb()
        second = _run_half(server, n_items, seed=200)
        rss_end = server.rss_mb()
        metrics = httpx.get(f"{server.url}/metrics").text
        log = server.output()
    results = first + second
    errors = [r for r in results if r[2] != 200]
    assert not errors, f"{len(errors)} errors, e.g. {errors[:5]}\n{log[-3000:]}"
    latencies = [r[1] * 1000 for r in results]
    summary = {
        "requests": len(results), "rps": round(len(results) / (2 * HALF_SECONDS), 1),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "rss_mb": [round(rss_start), round(rss_mid), round(rss_end)],
    }
    for key, value in summary.items():
        record_property(key, value)
    print(f"\nload test: {summary}")
    assert len(results) > 50
    assert rss_end - rss_mid < 50, summary
    assert 'clipsift_batch_size_count{batcher="text"}' in metrics
