"""`Index` is the one door to an index: rows, items, stored vectors, batched search and a
liveness read for the server; and the one search path: `Index.search(query, text=,
image=)` plans with `clipsift.index.query.plan` (the weight limit included), the same plan
the CLI and the server use."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from clipsift.cli.main import main
from clipsift.errors import ItemNotFound, NotFound, QueryError
from clipsift.index.index import Index
from clipsift.index.query import MAX_WEIGHT, Query, Term, combine, plan
from tests.support.fake_model import FakeModel


@pytest.fixture(scope="module")
def built(photos, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gw")
    for p in photos[:12]:
        shutil.copy(p, folder / p.name)
    path = folder / "i.db"
    with Index(path, FakeModel()) as idx:
        idx.add([folder], workers=0, batch_size=8)
    return path, sorted(folder.glob("*.JPEG"))


# ---- the plan ---------------------------------------------------------------------------
def test_plan_sorts_terms_by_what_they_need(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    p = plan('"beach" - 2:id:7 + image:~/q.jpg', text='5" screen', image="~/sea.jpg")
    assert p.texts == ("beach", '5" screen')  # the plain text is not parsed
    assert p.images == (str(tmp_path / "q.jpg"), str(tmp_path / "sea.jpg"))
    assert p.ids == (7,)
    assert p.weights == (1.0, -2.0, 1.0, 1.0, 1.0)
    eye = np.eye(5, dtype=np.float32)
    v = p.combine(eye[[0, 1]], eye[[2, 3]], eye[[4]])
    want = combine(eye[[0, 4, 2, 1, 3]], [1.0, -2.0, 1.0, 1.0, 1.0])  # in term order
    np.testing.assert_allclose(v, want, rtol=1e-6)


def test_plan_of_bytes_and_query_objects():
    p = plan(Query((Term("a"), Term("3", 2.0, "id"))), image=b"\xff\xd8")
    assert (p.texts, p.ids, p.images, p.weights) == (("a",), (3,), (b"\xff\xd8",),
                                                     (1.0, 2.0, 1.0))


@pytest.mark.parametrize("query", ["1001:a", '"a" - 5000:"b"', "2000.5:x"])
def test_weights_over_the_limit_are_query_errors(query):
    with pytest.raises(QueryError, match=f"over {MAX_WEIGHT:g}"):
        plan(query)
    with pytest.raises(QueryError, match="over"):
        plan(Query((Term("a", -1001.0),)))


@pytest.mark.parametrize("kwargs", [{}, {"text": "  "}])
def test_nothing_to_search_for(kwargs):
    with pytest.raises(QueryError):
        plan(**kwargs)


def test_plan_needs_the_vectors_it_asked_for():
    with pytest.raises(ValueError, match="image terms"):
        plan("a", image="x.jpg").combine(np.eye(2, dtype=np.float32)[:1])


# ---- Index as the one door --------------------------------------------------------------
def test_rows_items_and_stored_vectors(built):
    path, files = built
    with Index.open(path) as idx:
        hits = idx.search_image(files[0], k=3)
        row = idx.item(hits[0].id)
        assert row.key == str(files[0]) and row.status == "ok"
        assert set(idx.rows([h.id for h in hits])) == {h.id for h in hits}
        vecs = idx.stored_vectors([hits[1].id, hits[0].id])
        assert vecs.shape == (2, idx.identity.dim) and vecs.dtype == np.float32
        assert idx.search(f"id:{hits[1].id}", k=1)[0].id == hits[1].id
        for bad in (lambda: idx.item(10**9), lambda: idx.stored_vectors([hits[0].id, 10**9])):
            with pytest.raises(ItemNotFound, match="no indexed item with id 1000000000"):
                bad()
        assert issubclass(ItemNotFound, NotFound) and ItemNotFound.exit_code == 2
        assert isinstance(idx.ping(), int)
        ident = idx.identity
        assert (ident.model, ident.decode, ident.fingerprint) == (
            "fake", "exact", idx.fingerprint)


def test_search_many_is_one_search_per_query(built):
    path, _ = built
    with Index.open(path) as idx:
        q = idx.stored_vectors([1, 2, 3])
        many = idx.search_many(q, 4)
        assert [hits[0].id for hits in many] == [1, 2, 3]
        assert many == [idx.search_vector(v, 4) for v in q]
        assert all(len({h.id for h in hits}) == len(hits) == 4 for hits in many)


def test_search_sums_query_text_and_image(built):
    path, files = built
    with Index.open(path) as idx:
        model = idx.model
        got = idx.search('"fish" - "water"', text="a dog", image=files[2], k=5)
        vecs = np.concatenate([model.encode_texts(["fish", "water", "a dog"]),
                               model.encode_images([str(files[2])])])
        want = idx.search_vector(combine(vecs, [1.0, -1.0, 1.0, 1.0]), k=5)
        assert got == want
        assert idx.search(image=files[2].read_bytes(), k=1)[0].path == str(files[2])
        with pytest.raises(QueryError, match="over 1000"):
            idx.search("1001:fish")


def test_cli_search_is_index_search(built, capsys):
    path, files = built
    with Index.open(path) as idx:
        want = idx.search('"fish" + 2:"water"', image=files[3], k=4)
    assert main(["search", str(path), '"fish" + 2:"water"', "--image", str(files[3]),
                 "-k", "4", "--json"]) == 0
    got = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(g["id"], g["path"]) for g in got] == [(h.id, h.path) for h in want]
    assert [g["score"] for g in got] == pytest.approx([h.score for h in want], abs=1e-6)
    assert main(["search", str(path), "1001:fish"]) == 2
    assert "over 1000" in capsys.readouterr().err
