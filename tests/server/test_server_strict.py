"""Requests are taken as typed, not coerced; the OpenAPI document states the limits the
server applies; the API key is checked before the body is read; body-parsing failures
get their documented status; If-None-Match is parsed as HTTP defines it; bad `id:` terms
get 422."""

from __future__ import annotations

import asyncio
import json

import pytest
from fastapi.testclient import TestClient

from clipsift.errors import UsageError
from clipsift.server import ServerSettings, create_app
from clipsift.server.routes import etag_matches
from tests.support.serverkit import LOOPBACK, build_index, jpeg_bytes

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def index_path(photos, tmp_path_factory):
    return build_index(photos, tmp_path_factory.mktemp("strict"), count=6)


@pytest.fixture(scope="module")
def client(index_path):
    settings = ServerSettings(max_k=50, max_texts=8, max_images=4)
    with TestClient(create_app(index_path, "fake", settings), base_url=LOOPBACK) as c:
        yield c


# ---- strict types -----------------------------------------------------------------------
@pytest.mark.parametrize("body", [
    {"query": "x", "k": "5"}, {"query": "x", "k": True}, {"query": "x", "k": 5.0},
    {"query": "x", "plain": "yes"}, {"query": "x", "plain": 1}, {"query": 5},
    {"query": "x", "threshold": "0.5"}, {"query": "x", "threshold": True},
])
def test_json_values_are_not_coerced(client, body):
    resp = client.post("/v1/search/text", json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "invalid_request"


def test_json_values_of_the_right_type_pass(client):
    ok = client.post("/v1/search/text", json={"query": "x", "k": 5, "plain": True,
                                               "threshold": 0})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("path", ["/v1/items/1_0", "/v1/items/%D9%A3", "/v1/items/%C2%B2",
                                  "/v1/items/+1", "/v1/items/%201", "/v1/thumbnail/1_0",
                                  "/v1/thumbnail/1?size=1_28", "/v1/thumbnail/1?size=%D9%A3",
                                  "/v1/items/99999999999999999999"])
def test_path_and_query_numbers_are_ascii_digits(client, path):
    resp = client.get(path)
    assert resp.status_code == 422, (path, resp.text)


@pytest.mark.parametrize(("field", "value"), [("k", "1_0"), ("k", "٣"), ("k", " 3"),
                                              ("k", "3.0"), ("threshold", "nan"),
                                              ("threshold", "1_0"), ("threshold", "inf")])
def test_form_numbers_are_plain(client, field, value):
    resp = client.post("/v1/search/image/upload", files={"file": ("q.jpg", jpeg_bytes())},
                       data={field: value})
    assert resp.status_code == 422, resp.text


def test_form_numbers_in_ascii_pass(client):
    resp = client.post("/v1/search/image/upload", files={"file": ("q.jpg", jpeg_bytes())},
                       data={"k": "3", "threshold": "-0.5"})
    assert resp.status_code == 200 and len(resp.json()["hits"]) == 3


# ---- the OpenAPI document states the server's limits ------------------------------------
def _schema(spec: dict, name: str) -> dict:
    return spec["components"]["schemas"][name]["properties"]


def test_openapi_states_the_limits(client):
    spec = client.get("/openapi.json").json()
    assert _schema(spec, "TextSearchRequest")["k"]["maximum"] == 50
    assert _schema(spec, "CaptionsRequest")["k"]["maximum"] == 50
    assert _schema(spec, "EmbedTextsRequest")["texts"]["maxItems"] == 8
    assert _schema(spec, "EmbedImagesRequest")["images"]["maxItems"] == 4
    item = spec["paths"]["/v1/items/{item_id}"]["get"]["parameters"][0]["schema"]
    assert item["type"] == "integer" and item["maximum"] == 2**63 - 1
    for path, ops in spec["paths"].items():
        for op in ops.values():
            assert "401" not in op["responses"], path  # no key, no 401
            assert not op.get("security"), path


def test_default_limits_in_the_document(index_path):
    with TestClient(create_app(index_path, "fake"), base_url=LOOPBACK) as c:
        spec = c.get("/openapi.json").json()
    assert _schema(spec, "TextSearchRequest")["k"]["maximum"] == 200
    assert c.post("/v1/search/text", json={"query": "x", "k": 201}).status_code == 422


def test_openapi_declares_the_key_only_when_set(index_path):
    app = create_app(index_path, "fake", ServerSettings(api_key=KEY))
    with TestClient(app, base_url=LOOPBACK) as c:
        spec = c.get("/openapi.json").json()
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]
    op = spec["paths"]["/v1/search/text"]["post"]
    assert op["security"] and "401" in op["responses"]


# ---- the key is checked before the body is read -----------------------------------------
@pytest.fixture(scope="module")
def keyed_app(index_path):
    app = create_app(index_path, "fake", ServerSettings(api_key=KEY))
    with TestClient(app, base_url=LOOPBACK):  # lifespan: batchers running
        yield app


def _call(app, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, int, dict]:
    """(status, receive() calls, response headers) of one POST whose body never comes."""
    calls = 0
    out: dict = {}

    async def receive():
        nonlocal calls
        calls += 1
        await asyncio.sleep(30)  # a client still uploading
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
            out["headers"] = dict(message["headers"])

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "root_path": "", "query_string": b"", "server": ("127.0.0.1", 8000),
             "client": ("127.0.0.1", 5000),
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json"),
                         (b"content-length", str(20 * 1024 * 1024).encode()), *headers]}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 10))
    return out["status"], calls, out["headers"]


@pytest.mark.parametrize("headers", [[], [(b"x-api-key", b"wrong-key-123")],
                                     [(b"authorization", b"Bearer nope-nope")]])
def test_no_key_gets_401_before_the_body_is_read(keyed_app, headers):
    status, reads, response_headers = _call(keyed_app, "/v1/search/image/upload", headers)
    assert (status, reads) == (401, 0)
    assert response_headers[b"connection"] == b"close"


def test_malformed_json_without_key_is_401(keyed_app):
    with TestClient(keyed_app, base_url=LOOPBACK) as c:
        resp = c.post("/v1/search/text", content=b"{not json",
                      headers={"content-type": "application/json"})
        assert resp.status_code == 401 and "API key" in resp.json()["detail"]
        good = c.post("/v1/search/text", json={"query": "x"}, headers={"X-API-Key": KEY})
        assert good.status_code == 200
        assert c.get("/openapi.json").status_code == 200  # documentation stays public


@pytest.mark.parametrize("key", ["", " ", "        ", "\t\n  \t", " s3cret-key-for-tests",
                                 "s3cret-key-for-tests "])
def test_blank_or_padded_keys_are_refused(key):
    with pytest.raises(UsageError, match="whitespace"):
        ServerSettings(api_key=key)


def test_cli_refuses_a_blank_key(monkeypatch, capsys):
    from clipsift.cli.main import main

    monkeypatch.setenv("CLIPSIFT_API_KEY", "   ")
    assert main(["serve", "--model", "fake"]) == 2
    assert "API key is empty" in capsys.readouterr().err
    monkeypatch.setenv("CLIPSIFT_API_KEY", "")
    assert main(["serve", "--host", "0.0.0.0", "--model", "fake"]) == 2


# ---- bodies the parsers refuse get documented statuses ----------------------------------
def test_body_parse_failures_have_documented_statuses(client):
    bad_utf8 = client.post("/v1/search/text", content=b'{"query": "\xff\xfe"}',
                           headers={"content-type": "application/json"})
    assert bad_utf8.status_code == 422 and "UTF-8" in bad_utf8.json()["detail"]
    deep = client.post("/v1/search/text", content=b"[" * 100_000 + b"]" * 100_000,
                       headers={"content-type": "application/json"})
    assert deep.status_code == 422 and "nested" in deep.json()["detail"]
    fields = {"captions": [f"c{i}" for i in range(2100)]}
    many = client.post("/v1/image-to-text/upload", files=[("file", ("x.jpg", jpeg_bytes()))],
                       data=fields)
    assert many.status_code == 413 and "Too many fields" in many.json()["detail"]
    files = [("files", (f"{i}.jpg", jpeg_bytes())) for i in range(6)]
    too_many_files = client.post("/v1/embed/images/upload", files=files)
    assert too_many_files.status_code == 413 and "files" in too_many_files.json()["detail"]
    for resp in (bad_utf8, deep, many, too_many_files):
        assert set(resp.json()) >= {"error", "detail"}


# ---- If-None-Match ----------------------------------------------------------------------
@pytest.mark.parametrize(("header", "expected"), [
    ('"abc-1-256"', True), ('W/"abc-1-256"', True), ("*", True), (" * ", True),
    ('"x", "abc-1-256"', True), ('"x",W/"abc-1-256" , "y"', True),
    ('"abc-1-25"', False), ('"abc-1-256', False), ("abc-1-256", False),
    ('"abc-1-256x"', False), ('xx"abc-1-256"', False), ("", False),
    ('"a", *', False), ('w/"abc-1-256"', False),
])
def test_etag_matching(header, expected):
    assert etag_matches(header, '"abc-1-256"') is expected


def test_if_none_match_list_and_weak(client):
    first = client.get("/v1/thumbnail/2", params={"size": 64})
    etag = first.headers["etag"]
    for header in (f'"nope", {etag}', f"W/{etag}", "*"):
        resp = client.get("/v1/thumbnail/2", params={"size": 64},
                          headers={"If-None-Match": header})
        assert resp.status_code == 304, header
    substring = client.get("/v1/thumbnail/2", params={"size": 64},
                           headers={"If-None-Match": f'"x{etag[1:-1]}y"'})
    assert substring.status_code == 200  # not a match just because it contains the tag


# ---- id: terms --------------------------------------------------------------------------
@pytest.mark.parametrize("query", ["id:٣", "id:²", "id:" + "9" * 19, "id:" + "9" * 40,
                                   '"dog" + id:١'])
def test_bad_id_terms_are_422(client, query):
    resp = client.post("/v1/search/text", json={"query": query})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "invalid_query" and "id term" in resp.json()["detail"]


def test_documented_error_statuses(client):
    op = client.get("/openapi.json").json()["paths"]["/v1/image-to-text/upload"]["post"]
    assert {"408", "413", "422", "503"} <= set(op["responses"])
    assert json.dumps(op["responses"]["413"]).count("ErrorResponse") == 1
