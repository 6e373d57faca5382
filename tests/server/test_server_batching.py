"""Micro-batching: concurrent requests share forward passes (counted), results go back to
the right caller, failures stay isolated, and batching can be switched off."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from clipsift.errors import Overloaded
from clipsift.server import ServerSettings, create_app
from clipsift.server.batcher import MicroBatcher
from tests.support.serverkit import LOOPBACK, CountingModel, build_index, jpeg_bytes


# ---- the batcher on its own -------------------------------------------------------------
def test_concurrent_jobs_share_one_call():
    calls: list[list[int]] = []

    def double(xs):
        calls.append(list(xs))
        return [x * 2 for x in xs]

    b = MicroBatcher(double, name="t", window_ms=100, max_batch=64)

    async def run():
        return await asyncio.gather(*(b.submit([i, i + 100]) for i in range(10)))

    results = asyncio.run(run())
    b.close()
    assert results == [[2 * i, 2 * (i + 100)] for i in range(10)]
    assert len(calls) <= 2 and sum(map(len, calls)) == 20
    assert b.stats.largest >= 10 and b.stats.jobs == 10


def test_max_batch_splits_and_big_jobs_run_alone():
    sizes: list[int] = []
    b = MicroBatcher(lambda xs: sizes.append(len(xs)) or list(xs), name="t", window_ms=50,
                     max_batch=4)
    futures = [b.submit_future([i] * 3) for i in range(4)] + [b.submit_future(list(range(9)))]
    assert [f.result(5) for f in futures[:4]] == [[i] * 3 for i in range(4)]
    assert futures[4].result(5) == list(range(9))
    b.close()
    assert max(sizes) == 9 and all(s <= 4 for s in sizes if s != 9)


def test_a_failing_job_does_not_fail_its_batch_mates():
    def fn(xs):
        if "bad" in xs:
            raise ValueError("bad item")
        return [x.upper() for x in xs]

    b = MicroBatcher(fn, name="t", window_ms=100)
    good, bad, good2 = (b.submit_future(x) for x in (["a"], ["bad"], ["b", "c"]))
    assert good.result(5) == ["A"] and good2.result(5) == ["B", "C"]
    with pytest.raises(ValueError, match="bad item"):
        bad.result(5)
    b.close()
    assert b.pending == 0


def test_disabled_runs_one_call_per_job():
    calls: list[int] = []
    b = MicroBatcher(lambda xs: calls.append(len(xs)) or list(xs), name="t", window_ms=100,
                     enabled=False)
    futures = [b.submit_future([i, i]) for i in range(6)]
    assert [f.result(5) for f in futures] == [[i, i] for i in range(6)]
    b.close()
    assert calls == [2] * 6


def test_overload_and_cancelled_jobs():
    gate = threading.Event()
    b = MicroBatcher(lambda xs: gate.wait(5) and list(xs), name="t", window_ms=0,
                     max_queue=3)
    first = b.submit_future([1, 2])
    time.sleep(0.05)  # the worker is now blocked on `first`
    queued = b.submit_future([3])
    with pytest.raises(Overloaded, match="busy"):
        b.submit_future([4, 5])
    queued.cancel()  # a caller that timed out: dropped, not computed
    gate.set()
    assert first.result(5) == [1, 2]
    b.close()
    assert b.pending == 0 and b.stats.items == 2


def test_closed_batcher_refuses_work():
    b = MicroBatcher(list, name="t")
    b.close()
    with pytest.raises(Overloaded):
        b.submit_future([1])


# ---- through the app --------------------------------------------------------------------
@pytest.fixture(scope="module")
def index_path(photos, tmp_path_factory):
    return build_index(photos, tmp_path_factory.mktemp("batch"), count=8)


async def _burst(app, n: int, make_request) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url=LOOPBACK) as c:
        return await asyncio.gather(*(make_request(c, i) for i in range(n)))


@pytest.mark.parametrize("batching", [True, False])
def test_concurrent_text_searches_are_batched(index_path, batching):
    model = CountingModel(delay=0.02)
    settings = ServerSettings(batching=batching, batch_window_ms=30)
    app = create_app(index_path, model, settings)
    service = app.state.service

    def search(c, i):
        return c.post("/v1/search/text", json={"query": f"query number {i}", "k": 3})

    responses = asyncio.run(_burst(app, 16, search))
    service.close()
    assert all(r.status_code == 200 for r in responses)
    assert sum(model.text_calls) == 16
    if batching:
        assert len(model.text_calls) <= 4, model.text_calls  # 16 requests, few passes
        assert service.searches.stats.calls < 16
    else:
        assert model.text_calls == [1] * 16


def test_batched_results_go_to_the_right_request(index_path):
    model = CountingModel()
    app = create_app(index_path, model, ServerSettings(batch_window_ms=30))

    def embed(c, i):
        return c.post("/v1/embed/texts", json={"texts": [f"text {i}", f"other {i}"]})

    responses = asyncio.run(_burst(app, 12, embed))
    app.state.service.close()
    for i, r in enumerate(responses):
        expected = CountingModel().encode_texts([f"text {i}", f"other {i}"])
        assert np.allclose(r.json()["embeddings"], expected, atol=1e-5)
    assert len(model.text_calls) < 12


def test_concurrent_image_uploads_are_batched_and_bad_ones_isolated(index_path):
    model = CountingModel(delay=0.02)
    app = create_app(index_path, model, ServerSettings(batch_window_ms=40))
    good = jpeg_bytes()

    def upload(c, i):
        data = b"broken" if i == 3 else good
        return c.post("/v1/embed/images/upload", files={"files": (f"{i}.jpg", data)})

    responses = asyncio.run(_burst(app, 10, upload))
    app.state.service.close()
    codes = [r.status_code for r in responses]
    assert codes == [422 if i == 3 else 200 for i in range(10)]
    assert sum(model.image_calls) == 9 and len(model.image_calls) < 9
