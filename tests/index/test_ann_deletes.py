"""The FAISS layer while items are being deleted: a search that meets a store emptied since
its FAISS index was updated (or since the vectors were counted) returns fewer hits, never
an exception. Deterministic cases first (the exact state a race produces), then a threaded
stress test with a writer deleting and re-adding everything."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from clipsift.index.ann import AnnConfig, VectorIndex
from clipsift.index.store import NewItem, Store

DIM = 16


def _add(store: Store, n: int, rng: np.random.Generator, tag: str) -> list[int]:
    vecs = rng.standard_normal((n, DIM)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    with store.transaction():
        return [store.insert(NewItem(f"{tag}-{i}", 1, 0.0, f"h{tag}{i}", vecs[i], None, 1, 1))
                for i in range(n)]


def _delete_all(store: Store) -> None:
    with store.transaction():
        store.delete([row.id for row in store.iter_rows()])


@pytest.fixture
def stores(tmp_path):
    """(reader, writer): two connections to one store, as a server and an `index` run."""
    writer = Store.create(tmp_path / "s.db", model="fake", dim=DIM)
    reader = Store.open(tmp_path / "s.db")
    yield reader, writer
    reader.close()
    writer.close()


def _query(rng: np.random.Generator, n: int = 3) -> np.ndarray:
    return rng.standard_normal((n, DIM)).astype(np.float32)


def test_rerank_of_candidates_that_were_all_deleted(stores):
    reader, writer = stores
    rng = np.random.default_rng(0)
    ids = _add(writer, 60, rng, "a")
    vi = VectorIndex(reader, AnnConfig(threshold=10, nlist=4))
    vi.refresh()
    assert vi.kind == "ivfpq"
    _delete_all(writer)  # after the refresh, before the candidates are re-scored
    cand = np.asarray([ids[:20], ids[20:40]], np.int64)  # what the stale IVF index returns
    scores, out = vi.rerank(_query(rng, 2), cand, k=5)
    assert out.shape == (2, 5) and (out == -1).all() and np.isneginf(scores).all()


def test_rerank_keeps_the_candidates_that_survive(stores):
    reader, writer = stores
    rng = np.random.default_rng(1)
    ids = _add(writer, 40, rng, "a")
    vi = VectorIndex(reader, AnnConfig(threshold=10, nlist=4))
    vi.refresh()
    with writer.transaction():
        writer.delete(ids[1:])
    _, out = vi.rerank(_query(rng, 1), np.asarray([ids[:10]], np.int64), k=3)
    assert out.tolist() == [[ids[0], -1, -1]]


def test_ivfpq_build_on_a_store_emptied_after_counting(stores, monkeypatch):
    reader, writer = stores
    rng = np.random.default_rng(2)
    _add(writer, 30, rng, "a")
    _delete_all(writer)
    vi = VectorIndex(reader, AnnConfig(threshold=10, nlist=4))
    monkeypatch.setattr(reader, "vector_count", lambda: 30)  # counted before the deletes
    scores, out = vi.search(_query(rng), k=4)
    assert (out == -1).all() and np.isneginf(scores).all()


@pytest.mark.parametrize("threshold", [10, 10**9], ids=["ivfpq", "flat"])
def test_search_while_everything_is_deleted_and_re_added(stores, threshold):
    reader, writer = stores
    rng = np.random.default_rng(3)
    _add(writer, 50, rng, "start")
    vi = VectorIndex(reader, AnnConfig(threshold=threshold, nlist=4))
    vi.refresh()
    stop = threading.Event()
    failures: list[BaseException] = []
    live_ids: set[int] = set()

    def churn() -> None:
        wrng = np.random.default_rng(4)
        try:
            round_ = 0
            while not stop.is_set():
                _delete_all(writer)
                live_ids.update(_add(writer, int(wrng.integers(0, 40)), wrng, f"r{round_}"))
                round_ += 1
        except BaseException as ex:  # reported by the main thread
            failures.append(ex)

    thread = threading.Thread(target=churn)
    thread.start()
    searches, deadline = 0, time.monotonic() + 2.0
    try:
        while time.monotonic() < deadline:
            _, out = vi.search(_query(rng), k=8)
            for row in out:
                got = [int(i) for i in row if i >= 0]
                assert len(got) == len(set(got)), row  # no id twice
            searches += 1
    finally:
        stop.set()
        thread.join(30)
    assert not failures, failures
    assert searches > 5


@pytest.mark.parametrize("threshold", [10, 10**9], ids=["ivfpq", "flat"])
def test_catch_up_racing_a_writer_lists_each_id_once(stores, monkeypatch, threshold):
    """A writer commits while the FAISS index catches up (between its reads of the changed
    vectors and of the tombstones): the catch-up reads one consistent state, so no id is
    in FAISS twice, and the next refresh brings the late write in."""
    reader, writer = stores
    rng = np.random.default_rng(5)
    ids = _add(writer, 40, rng, "a")
    vi = VectorIndex(reader, AnnConfig(threshold=threshold, nlist=4))
    vi.refresh()
    _add(writer, 3, rng, "b")  # the reader now has something to catch up on
    moved = np.zeros(DIM, np.float32)
    moved[0] = 1.0
    original = reader.tombstones_since
    raced: list[int] = []

    def racing_write(gen: int) -> np.ndarray:
        if not raced:  # once: replace item ids[0] with a new vector mid catch-up
            with writer.transaction():
                writer.replace(ids[0], NewItem("a-0", 2, 1.0, "new", moved, None, 1, 1))
            raced.append(ids[0])
        return original(gen)

    monkeypatch.setattr(reader, "tombstones_since", racing_write)
    vi.refresh()
    assert raced
    assert vi._index.ntotal == reader.vector_count()  # not 44: ids[0] is there once
    _, out = vi.search(moved[None], k=reader.vector_count())
    got = [int(i) for i in out[0] if i >= 0]
    assert len(got) == len(set(got)) == reader.vector_count()
    vi.refresh()  # the next refresh sees the replaced vector
    assert vi._index.ntotal == reader.vector_count()
    scores, out = vi.search(moved[None], k=1)
    assert int(out[0, 0]) == ids[0] and scores[0, 0] > 0.99


@pytest.mark.parametrize("threshold", [10, 10**9], ids=["ivfpq", "flat"])
def test_hits_are_unique_by_id_even_if_faiss_holds_an_id_twice(stores, threshold):
    reader, writer = stores
    rng = np.random.default_rng(6)
    ids = _add(writer, 40, rng, "a")
    vi = VectorIndex(reader, AnnConfig(threshold=threshold, nlist=4))
    vi.refresh()
    _, vecs = reader.get_vectors(ids[:5])
    vi._index.add_with_ids(vecs.astype(np.float32), np.asarray(ids[:5], np.int64))  # twice now
    scores, out = vi.search(vecs[:2].astype(np.float32), k=10)
    for srow, row in zip(scores, out, strict=True):
        got = [int(i) for i in row if i >= 0]
        assert len(got) == len(set(got)) == 10
        assert list(srow) == sorted(srow, reverse=True)
