"""Query parsing and combination, caption ranking, and the FAISS layer (exact + IVF-PQ)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clipsift.errors import UsageError
from clipsift.index.ann import AnnConfig, VectorIndex, auto_nlist, auto_pq_m
from clipsift.index.query import (
    Query,
    Term,
    combine,
    parse_query,
    query_vector,
    rank_captions,
    read_captions,
)
from clipsift.index.store import Store


# ---- query language ---------------------------------------------------------------------
@pytest.mark.parametrize(("text", "terms"), [
    ("a dog running on grass", [("a dog running on grass", 1.0, "text")]),
    ('"beach" - "people"', [("beach", 1.0, "text"), ("people", -1.0, "text")]),
    ('2:sunset + 0.5:"red sky"', [("sunset", 2.0, "text"), ("red sky", 0.5, "text")]),
    ("well-lit room", [("well-lit room", 1.0, "text")]),
    ("a dog -cat", [("a dog -cat", 1.0, "text")]),
    ('"a"-"b"', [("a", 1.0, "text"), ("b", -1.0, "text")]),
    ("- people", [("people", -1.0, "text")]),
    ("-2:x", [("x", -2.0, "text")]),
    ('image:"/tmp/my photo.jpg" - "text"', [("/tmp/my photo.jpg", 1.0, "image"),
                                            ("text", -1.0, "text")]),
    ("id:42 + img:q.png", [("42", 1.0, "id"), ("q.png", 1.0, "image")]),
    ('text:"image: a caption"', [("image: a caption", 1.0, "text")]),
    ('"a - b"', [("a - b", 1.0, "text")]),
    ("海滩 - 人", [("海滩", 1.0, "text"), ("人", -1.0, "text")]),
])
def test_parse_query(text, terms):
    assert [(t.value, t.weight, t.kind) for t in parse_query(text).terms] == terms


@pytest.mark.parametrize(("text", "message"), [
    ("", "empty query"),
    ("   ", "empty query"),
    ("beach -", "ends with an operator"),
    ('"beach', "unbalanced"),
    ("id:abc", "id term needs a number"),
    ('x + ""', "empty term"),
])
def test_parse_query_errors(text, message):
    with pytest.raises(UsageError, match=message):
        parse_query(text)


def test_combine_weights_and_cancellation():
    a, b = np.eye(4, dtype=np.float32)[:2]
    v = combine(np.stack([a * 3, b]), [2.0, -1.0])  # term vectors are normalised first
    np.testing.assert_allclose(v, np.array([2, -1, 0, 0]) / np.sqrt(5), rtol=1e-6)
    with pytest.raises(UsageError, match="cancel"):
        combine(np.stack([a, a]), [1.0, -1.0])


def test_query_vector_dispatches_by_kind():
    eye = np.eye(3, dtype=np.float32)
    calls = {}

    def texts(values):
        calls["text"] = values
        return np.stack([eye[0] for _ in values])

    def images(values):
        calls["image"] = values
        return np.stack([eye[1] for _ in values])

    def stored(ids):
        calls["id"] = ids
        return np.stack([eye[2] for _ in ids])

    q = Query((Term("sea"), Term("p.jpg", 2.0, "image"), Term("7", -1.0, "id")))
    v = query_vector(q, texts, images, stored)
    assert calls == {"text": ["sea"], "image": ["p.jpg"], "id": [7]}
    np.testing.assert_allclose(v, np.array([1, 2, -1]) / np.sqrt(6), rtol=1e-6)


def test_captions(tmp_path):
    f = tmp_path / "caps.txt"
    f.write_text("# comment\na dog\n\na cat\n", encoding="utf-8")
    caps = read_captions(f)
    assert caps == ["a dog", "a cat"]
    hits = rank_captions(np.array([0, 1.0], np.float32),
                         np.array([[1, 0], [0.6, 0.8]], np.float32), caps, k=5)
    assert [(h.line, h.text) for h in hits] == [(2, "a cat"), (1, "a dog")]
    assert rank_captions(np.array([0, 1.0], np.float32), np.array([[1, 0], [0.6, 0.8]],
                         np.float32), caps, k=5, threshold=0.5)[0].text == "a cat"
    (tmp_path / "empty.txt").write_text("\n# only a comment\n", encoding="utf-8")
    with pytest.raises(UsageError, match="no captions"):
        read_captions(tmp_path / "empty.txt")
    with pytest.raises(UsageError, match="cannot read"):
        read_captions(tmp_path / "missing.txt")


# ---- FAISS layer ------------------------------------------------------------------------
def clustered(n: int, dim: int, centers: int, noise: float, seed: int) -> np.ndarray:
    """Unit vectors around random centres (neighbourhoods like real embeddings have)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, centers, n)]
    x = x + noise * rng.standard_normal((n, dim)).astype(np.float32) / np.sqrt(dim)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def fill(store: Store, vectors: np.ndarray, start: int = 0) -> None:
    with store.transaction() as gen:
        store.db.executemany(
            "INSERT INTO items (key, size, mtime, hash, status) VALUES (?, 1, 0, NULL, 'ok')",
            [(f"k{start + i}",) for i in range(len(vectors))])
        first = store.db.execute("SELECT MAX(id) FROM items").fetchone()[0] - len(vectors) + 1
        store.db.executemany("INSERT INTO vectors (id, gen, vec) VALUES (?, ?, ?)",
                             [(first + i, gen, v.astype("<f2").tobytes())
                              for i, v in enumerate(vectors)])


@pytest.fixture
def one_thread():
    """faiss' OpenMP threads crawl when the test machine is oversubscribed: use one."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def recall_at_k(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got, want, strict=True)]))


def test_auto_parameters():
    assert auto_pq_m(512) == 64 and auto_pq_m(64) == 8 and auto_pq_m(100) == 10
    assert auto_nlist(1_000_000) == 2048 and auto_nlist(20_000) == 256
    assert auto_nlist(100) == 2


def test_flat_search_is_exact_and_follows_the_store(tmp_path):
    store = Store.create(tmp_path / "f.db", "fake:32", 32)
    data = clustered(3020, 32, 30, 1.0, 0)
    fill(store, data[:3000])
    vi = VectorIndex(store)
    q = data[3000:]
    scores, ids = vi.search(q, 10)
    assert vi.kind == "flat"
    want_s, want_i = vi.exact_search(q, 10)
    np.testing.assert_array_equal(ids, want_i)
    np.testing.assert_allclose(scores, want_s, rtol=1e-5)
    with store.transaction():  # remove the best hit of query 0: it must disappear
        store.delete([int(ids[0, 0])])
    _, ids2 = vi.search(q, 10)
    assert ids[0, 0] not in ids2[0] and vi.rebuilt is False
    _, few = vi.search(q[:1], 5000)
    assert (few[0] == -1).sum() == 5000 - 2999


def test_ann_recall_and_cache(tmp_path, one_thread):
    path = tmp_path / "a.db"
    store = Store.create(path, "fake", 64)
    data = clustered(20_700, 64, 200, 1.0, 0)  # 20k indexed, 500 added later, 200 queries
    fill(store, data[:20_000])
    cfg = AnnConfig(threshold=5000, nlist=128)
    vi = VectorIndex(store, cfg)
    q = data[20_500:]
    _, ids = vi.search(q, 10)
    assert vi.kind == "ivfpq" and vi.rebuilt
    _, exact = vi.exact_search(q, 10)
    assert recall_at_k(ids, exact) >= 0.95
    side = json.loads((tmp_path / "a.db.faiss.json").read_text())
    assert side["generation"] == store.generation() and side["count"] == 20_000

    fresh = VectorIndex(Store.open(path), cfg)  # a new process: loads the saved file
    _, ids_again = fresh.search(q, 10)
    assert not fresh.rebuilt
    np.testing.assert_array_equal(ids_again, ids)

    fill(store, data[20_000:20_500], start=20_000)  # stale: catches up
    extra = np.asarray(store.get_vectors([20_001])[1], np.float32)
    late = VectorIndex(Store.open(path), cfg)
    _, hit = late.search(extra, 1)
    assert hit[0, 0] == 20_001 and not late.rebuilt
    assert json.loads((tmp_path / "a.db.faiss.json").read_text())["count"] == 20_500

    (tmp_path / "a.db.faiss").write_bytes(b"garbage")  # corrupt: rebuilt automatically
    broken = VectorIndex(Store.open(path), cfg)
    _, hit = broken.search(extra, 1)
    assert broken.rebuilt and hit[0, 0] == 20_001


def test_ann_cache_of_another_store_is_ignored(tmp_path, one_thread):
    cfg = AnnConfig(threshold=500, nlist=16)
    first = Store.create(tmp_path / "x.db", "fake:16", 16)
    fill(first, clustered(1000, 16, 10, 1.0, 0))
    VectorIndex(first, cfg).refresh()
    first.close()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"x.db{suffix}").unlink(missing_ok=True)
    second = Store.create(tmp_path / "x.db", "fake:16", 16)  # same path, new store
    fill(second, clustered(1000, 16, 10, 1.0, 5))
    vi = VectorIndex(second, cfg)
    vi.refresh()
    assert vi.rebuilt
