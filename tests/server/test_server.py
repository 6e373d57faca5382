"""HTTP API behaviour with the fake model over a small index of real photos (TestClient):
search (text, query language, upload, base64, item), embeddings, classification,
image→text, thumbnails, validation and limits, metrics, and serving without an index."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipsift.server import ServerSettings, create_app
from tests.support.fake_model import FakeModel
from tests.support.serverkit import LOOPBACK, build_index, jpeg_bytes


@pytest.fixture(scope="module")
def index_path(photos, tmp_path_factory):
    return build_index(photos, tmp_path_factory.mktemp("srv"), count=20)


@pytest.fixture(scope="module")
def client(index_path):
    app = create_app(index_path, "fake", ServerSettings(max_k=50, max_texts=8))
    with TestClient(app, base_url=LOOPBACK) as c:
        yield c


@pytest.fixture(scope="module")
def photo(photos) -> bytes:
    return photos[0].read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def ok(resp, status: int = 200):
    assert resp.status_code == status, resp.text
    return resp.json()


# ---- health and page --------------------------------------------------------------------
def test_health(client):
    h = ok(client.get("/v1/health"))
    assert (h["status"], h["model"], h["dim"], h["index"]["items"]) == ("ok", "fake", 64, 20)
    assert h["auth"] is False and h["url_fetch"] is False and h["batching"] is True


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "clipsift" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "clipsift"
    assert client.get("/docs").status_code == 200


# ---- search -----------------------------------------------------------------------------
def test_text_search_hits_sorted_with_thumbnails(client, photos):
    hits = ok(client.post("/v1/search/text", json={"query": "a fish", "k": 5}))["hits"]
    assert len(hits) == 5
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    names = {p.name for p in photos[:20]}
    assert all(h["name"] in names and h["thumbnail"] == f"/v1/thumbnail/{h['id']}"
               for h in hits)


def test_text_search_threshold_and_k(client):
    all_hits = ok(client.post("/v1/search/text", json={"query": "fish", "k": 50}))["hits"]
    assert len(all_hits) == 20  # fewer items than k
    cut = all_hits[4]["score"]
    kept = ok(client.post("/v1/search/text", json={"query": "fish", "k": 50,
                                                   "threshold": cut}))["hits"]
    assert [h["id"] for h in kept] == [h["id"] for h in all_hits[:5]]
    over = client.post("/v1/search/text", json={"query": "fish", "k": 51})  # the schema
    assert over.status_code == 422 and "less than or equal to 50" in over.json()["detail"]
    for bad in (0, -1, 10**6, "many", None):
        assert client.post("/v1/search/text", json={"query": "x", "k": bad}).status_code == 422


def test_query_language(client):
    combined = ok(client.post("/v1/search/text", json={"query": '"fish" - "water"', "k": 3}))
    assert len(combined["hits"]) == 3
    by_id = ok(client.post("/v1/search/text", json={"query": "id:1", "k": 1}))["hits"]
    assert by_id[0]["id"] == 1 and by_id[0]["score"] == pytest.approx(1.0, abs=1e-2)
    plain = ok(client.post("/v1/search/text", json={"query": '5" screen', "plain": True}))
    assert plain["hits"]
    # a weight over 1000 breaks a rule of the query language (clipsift.index.query.plan,
    # the same in the CLI): an invalid query, 422, like an unbalanced quote
    cases = {'"unbalanced': 422, "image:/etc/passwd": 400, "img:x.jpg - a": 400,
             "id:999999": 404, '"a" - "a"': 400, "99999999:a": 422, "1001:a - b": 422}
    for query, status in cases.items():
        resp = client.post("/v1/search/text", json={"query": query})
        assert resp.status_code == status, (query, resp.text)
        assert resp.json()["detail"]


def test_search_by_uploaded_image_finds_itself(client, photos, photo):
    hits = ok(client.post("/v1/search/image/upload", files={"file": ("q.jpg", photo)},
                          data={"k": "3"}))["hits"]
    assert hits[0]["name"] == photos[0].name and hits[0]["score"] > 0.99


@pytest.mark.parametrize("encode", [
    b64,
    lambda d: "data:image/jpeg;base64," + b64(d),
    lambda d: base64.urlsafe_b64encode(d).decode().rstrip("="),
    lambda d: "\n".join(b64(d)[i:i + 76] for i in range(0, len(b64(d)), 76)),
])
def test_search_by_base64_image(client, photos, photo, encode):
    hits = ok(client.post("/v1/search/image", json={"image": {"data": encode(photo)},
                                                    "k": 2}))["hits"]
    assert hits[0]["name"] == photos[0].name


def test_search_by_item_more_like_this(client):
    hits = ok(client.post("/v1/search/item", json={"id": 3, "k": 4}))["hits"]
    assert len(hits) == 4 and 3 not in [h["id"] for h in hits]
    with_self = ok(client.post("/v1/search/item", json={"id": 3, "k": 4,
                                                        "include_self": True}))["hits"]
    assert with_self[0]["id"] == 3
    assert client.post("/v1/search/item", json={"id": 424242}).status_code == 404
    assert client.post("/v1/search/item", json={"id": 0}).status_code == 422


def test_item_details(client, photos):
    item = ok(client.get("/v1/items/1"))
    assert item["name"] in {p.name for p in photos} and item["width"] > 0
    assert client.get("/v1/items/777").status_code == 404


# ---- embeddings, classification, captions -----------------------------------------------
def test_embed_texts_match_the_library(client):
    out = ok(client.post("/v1/embed/texts", json={"texts": ["a red car", "a dog"]}))
    assert (out["model"], out["dim"]) == ("fake", 64)
    expected = FakeModel().encode_texts(["a red car", "a dog"])
    assert np.allclose(np.asarray(out["embeddings"]), expected, atol=1e-5)
    too_many = client.post("/v1/embed/texts", json={"texts": ["x"] * 9})  # the schema
    assert too_many.status_code == 422 and "at most 8 items" in too_many.json()["detail"]
    assert client.post("/v1/embed/texts", json={"texts": ["x"] * 300}).status_code == 422
    assert client.post("/v1/embed/texts", json={"texts": []}).status_code == 422


def test_embed_images_upload_and_base64_agree(client, photos, photo):
    up = ok(client.post("/v1/embed/images/upload",
                        files=[("files", ("a.jpg", photo)), ("files", ("b.jpg", photo))]))
    js = ok(client.post("/v1/embed/images", json={"images": [{"data": b64(photo)}]}))
    assert len(up["embeddings"]) == 2
    assert np.allclose(up["embeddings"][0], js["embeddings"][0], atol=1e-6)
    expected = FakeModel().encode_images([str(photos[0])])[0]
    assert np.allclose(js["embeddings"][0], expected, atol=1e-4)


def test_classify_json_and_upload(client, photo):
    body = {"image": {"data": b64(photo)}, "labels": ["fish", "dog", "car"],
            "templates": ["a photo of a {}."]}
    res = ok(client.post("/v1/classify", json=body))
    probs = [lab["probability"] for lab in res["labels"]]
    assert sorted(probs, reverse=True) == probs and sum(probs) == pytest.approx(1, abs=1e-4)
    up = ok(client.post("/v1/classify/upload", files={"file": ("x.jpg", photo)},
                        data={"labels": ["fish", "dog", "car"],
                              "templates": ["a photo of a {}."], "top_k": "2"}))
    assert len(up["labels"]) == 2 and up["labels"][0] == res["labels"][0]
    named = ok(client.post("/v1/classify", json={**body, "templates": None,
                                                 "template_set": "simple"}))
    assert len(named["labels"]) == 3


@pytest.mark.parametrize(("change", "status", "message"), [
    ({"templates": ["no placeholder"]}, 422, "exactly one"),
    ({"templates": ["{} and {}"]}, 422, "exactly one"),
    ({"templates": ["a {} in {style}"]}, 422, "placeholder '{style}'"),
    ({"labels": ["cat", "cat"]}, 400, "duplicate"),
    ({"labels": []}, 422, "labels"),
    ({"template_set": "nope"}, 422, "template_set"),
    ({"labels": [f"l{i}" for i in range(100)], "template_set": "imagenet80"}, 413, "prompts"),
])
def test_classify_errors(client, photo, change, status, message):
    body = {"image": {"data": b64(photo)}, "labels": ["fish", "dog"], **change}
    resp = client.post("/v1/classify", json=body)
    assert resp.status_code == status and message in resp.text


def test_classify_template_with_other_braces_is_refused(client, photo):
    body = {"image": {"data": b64(photo)}, "labels": ["fish"], "templates": ["{x} {} {0}"]}
    resp = client.post("/v1/classify", json=body)
    assert resp.status_code == 422 and "placeholder '{x}'" in resp.text
    body["templates"] = ["{{x}} {c}"]  # literal braces and CLIP_benchmark's placeholder
    assert ok(client.post("/v1/classify", json=body))["labels"][0]["label"] == "fish"


def test_image_to_text(client, photo):
    caps = ["a red car", "a fish", "a fish in water", "a house"]
    res = ok(client.post("/v1/image-to-text", json={"image": {"data": b64(photo)},
                                                     "captions": caps, "k": 3}))["hits"]
    assert len(res) == 3 and all(caps[h["line"] - 1] == h["text"] for h in res)
    up = ok(client.post("/v1/image-to-text/upload", files={"file": ("x.jpg", photo)},
                        data={"captions": caps, "k": "3"}))["hits"]
    assert up == res


# ---- bad inputs -------------------------------------------------------------------------
def bomb_png(width: int = 4000, height: int = 4000) -> bytes:
    out = io.BytesIO()
    Image.new("1", (width, height)).save(out, format="PNG")  # tiny file, many pixels
    return out.getvalue()


@pytest.mark.parametrize(("data", "status"), [
    (b"this is not an image", 422),
    (b"", 400),
    (jpeg_bytes()[:60], 422),  # truncated
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422),
])
def test_bad_uploads_are_4xx(client, data, status):
    resp = client.post("/v1/search/image/upload", files={"file": ("bad.jpg", data)})
    assert resp.status_code == status, resp.text
    assert resp.json()["detail"]


def test_bomb_and_oversized_images(index_path):
    app = create_app(index_path, "fake", ServerSettings(max_pixels=1_000_000,
                                                        max_image_bytes=50_000))
    with TestClient(app, base_url=LOOPBACK) as c:
        bomb = c.post("/v1/search/image/upload", files={"file": ("b.png", bomb_png())})
        assert bomb.status_code == 422 and "pixels" in bomb.json()["detail"]
        big = c.post("/v1/search/image/upload", files={"file": ("b.jpg", b"\xff" * 60_000)})
        assert big.status_code == 413
        big64 = c.post("/v1/search/image", json={"image": {"data": b64(b"\xff" * 60_000)}})
        assert big64.status_code == 413


@pytest.mark.parametrize(("body", "status"), [
    ({"query": "x", "extra": 1}, 422),
    ({"query": ""}, 422),
    ({"query": "a\x00b"}, 422),
    ({"query": "x", "threshold": 2}, 422),
    ({}, 422),
    ([], 422),
])
def test_json_validation(client, body, status):
    assert client.post("/v1/search/text", json=body).status_code == status


def test_malformed_bodies(client):
    bad_json = client.post("/v1/search/text", content=b"{not json",
                           headers={"content-type": "application/json"})
    assert bad_json.status_code == 422
    surrogate = client.post("/v1/embed/texts", content=b'{"texts": ["\\ud800"]}',
                            headers={"content-type": "application/json"})
    assert surrogate.status_code == 422
    wrong_type = client.post("/v1/search/text", content=b"query=x",
                             headers={"content-type": "text/plain"})
    assert wrong_type.status_code == 422
    bad64 = client.post("/v1/search/image", json={"image": {"data": "!!!notbase64"}})
    assert bad64.status_code == 400 and "base64" in bad64.json()["detail"]
    both = client.post("/v1/search/image", json={"image": {"data": "AA==", "url": "http://x"}})
    assert both.status_code == 422
    missing = client.post("/v1/classify/upload", data={"labels": ["a"]})
    assert missing.status_code == 422
    assert client.get("/v1/search/text").status_code == 405


def test_url_inputs_are_off_by_default(client):
    resp = client.post("/v1/search/image", json={"image": {"url": "http://127.0.0.1/x.jpg"}})
    assert resp.status_code == 400 and "--allow-url-fetch" in resp.json()["detail"]


# ---- thumbnails -------------------------------------------------------------------------
def test_thumbnail_jpeg_with_cache_headers(client):
    resp = client.get("/v1/thumbnail/2", params={"size": 128})
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    assert "max-age" in resp.headers["cache-control"] and resp.headers["etag"]
    im = Image.open(io.BytesIO(resp.content))
    assert im.format == "JPEG" and max(im.size) <= 128
    again = client.get("/v1/thumbnail/2", params={"size": 128},
                       headers={"If-None-Match": resp.headers["etag"]})
    assert again.status_code == 304 and not again.content
    assert client.get("/v1/thumbnail/2", params={"size": 5000}).status_code == 422


# ---- metrics and no-index mode ----------------------------------------------------------
def test_metrics_count_requests_and_batches(client):
    client.post("/v1/search/text", json={"query": "metrics probe"})
    text = client.get("/metrics").text
    assert 'clipsift_http_requests_total{method="POST",route="/v1/search/text",status="200"}' \
        in text
    assert 'clipsift_batch_size_count{batcher="text"}' in text
    assert 'clipsift_batch_size_count{batcher="search"}' in text
    assert "clipsift_http_request_duration_seconds_bucket" in text
    client.get("/no/such/path/12345")
    assert "/no/such/path" not in client.get("/metrics").text  # no per-path series


def test_server_without_index(photo):
    app = create_app(None, FakeModel(), ServerSettings())
    with TestClient(app, base_url=LOOPBACK) as c:
        assert ok(c.get("/v1/health"))["index"] is None
        resp = c.post("/v1/search/text", json={"query": "x"})
        assert resp.status_code == 404 and "no index" in resp.json()["detail"]
        assert c.get("/v1/thumbnail/1").status_code == 404
        assert ok(c.post("/v1/embed/texts", json={"texts": ["x"]}))["dim"] == 64
        assert ok(c.post("/v1/classify/upload", files={"file": ("x.jpg", photo)},
                         data={"labels": ["a", "b"]}))["labels"]


def test_model_mismatch_is_refused(index_path):
    from clipsift.errors import ModelMismatch

    with pytest.raises(ModelMismatch):
        create_app(index_path, FakeModel(32), ServerSettings())


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_thumbnails_of_tar_members(photos, tmp_path, suffix):
    import tarfile

    from clipsift.index.index import Index

    shard = tmp_path / f"shard{suffix}"
    with tarfile.open(shard, "w:gz" if suffix.endswith("gz") else "w") as tf:
        for p in photos[:2]:
            tf.add(p, arcname=f"imgs/{p.name}")
    with Index(tmp_path / "t.db", FakeModel()) as idx:
        idx.add([shard], workers=0)
    with TestClient(create_app(tmp_path / "t.db", "fake"), base_url=LOOPBACK) as c:
        hits = ok(c.post("/v1/search/text", json={"query": "x", "k": 2}))["hits"]
        assert {h["name"] for h in hits} == {p.name for p in photos[:2]}
        for h in hits:
            thumb = c.get(h["thumbnail"])
            assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"
