"""Searches over HTTP while another process-like writer deletes and re-adds every item:
never a 5xx (fewer hits are fine), with the exact (flat) and the IVF-PQ FAISS paths."""

from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient

from clipsift.index.ann import AnnConfig
from clipsift.index.store import STATUS_OK, NewItem, Store
from clipsift.server import ServerSettings, create_app
from tests.support.serverkit import LOOPBACK, build_index


@pytest.mark.parametrize("ann", [None, AnnConfig(threshold=10, nlist=4)], ids=["flat", "ivfpq"])
def test_search_while_items_are_deleted(photos, tmp_path, ann):
    path = build_index(photos, tmp_path, count=20)
    app = create_app(path, "fake", ServerSettings(batch_window_ms=0, search_threads=1))
    if ann is not None:
        app.state.service.index.vectors.config = ann
    writer = Store.open(path)
    rows = [r for r in writer.iter_rows(status=STATUS_OK)]
    vectors = dict(zip(*writer.get_vectors([r.id for r in rows]), strict=True))
    stop, failures, rounds = threading.Event(), [], [0]

    def churn() -> None:  # what `clipsift index` does when files vanish and come back
        try:
            while not stop.is_set():
                rounds[0] += 1
                with writer.transaction():
                    writer.delete([r.id for r in writer.iter_rows()])
                with writer.transaction():
                    for r in rows:
                        writer.insert(NewItem(r.key, r.size, r.mtime, r.hash,
                                              vectors[r.id], None, r.width, r.height))
        except BaseException as ex:
            failures.append(ex)

    statuses: list[int] = []
    with TestClient(app, base_url=LOOPBACK) as client:
        thread = threading.Thread(target=churn)
        thread.start()
        try:
            for i in range(40):
                body = {"query": f"a fish {i}", "k": 5 + i % 16}
                statuses.append(client.post("/v1/search/text", json=body).status_code)
        finally:
            stop.set()
            thread.join(30)
    app.state.service.close()
    writer.close()
    assert not failures, failures
    assert set(statuses) == {200}, statuses
    assert rounds[0] > 3  # the searches really ran while items came and went


def test_search_threads_apply_in_the_search_worker(photos, tmp_path):
    import faiss

    path = build_index(photos, tmp_path, count=4)
    app = create_app(path, "fake", ServerSettings(search_threads=1))
    with TestClient(app, base_url=LOOPBACK) as client:
        assert client.post("/v1/search/text", json={"query": "x"}).status_code == 200
        searches = app.state.service.searches
        searches.fn = lambda items: [faiss.omp_get_max_threads()] * len(items)
        assert searches.run([None]) == [1]  # in the worker thread that ran the search
    app.state.service.close()
