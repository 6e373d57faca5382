"""/v1/health tells the truth: 200 only while the model, every batcher thread and the index
work; 503 with a body naming the part that is down otherwise (a crashed or stopped batcher
thread, a closed index, an index file removed, replaced, overwritten or unreadable)."""

from __future__ import annotations

import os
import shutil

import pytest
from fastapi.testclient import TestClient

from clipsift.server import ServerSettings, create_app
from tests.support.serverkit import LOOPBACK, build_index

PARTS = {"model", "batcher:text", "batcher:image", "batcher:search", "index"}


@pytest.fixture(scope="module")
def source_index(photos, tmp_path_factory):
    return build_index(photos, tmp_path_factory.mktemp("health"), count=4)


@pytest.fixture
def served(source_index, tmp_path):
    """(client, service, index path) over a private copy of the index."""
    path = tmp_path / "photos.db"
    shutil.copy(source_index, path)
    app = create_app(path, "fake", ServerSettings())
    with TestClient(app, base_url=LOOPBACK) as client:
        yield client, app.state.service, path
    app.state.service.close()


def down(client, part: str, reason: str) -> dict:
    resp = client.get("/v1/health")
    assert resp.status_code == 503, resp.text
    body = resp.json()
    assert body["status"] == "down" and body["error"] == "unhealthy"
    assert reason in body["checks"][part], body
    assert part in body["detail"] and reason in body["detail"]
    assert set(body["checks"]) == PARTS
    return body


def test_healthy_server_lists_every_part(served):
    client, _, _ = served
    body = client.get("/v1/health").json()
    assert body["status"] == "ok" and body["checks"] == dict.fromkeys(PARTS, "ok")
    assert body["index"]["items"] == 4


def test_crashed_batcher_thread(served, monkeypatch):
    client, service, _ = served

    def boom(batch):
        raise RuntimeError("worker bug")

    monkeypatch.setattr(service.texts, "_process", boom)
    first = client.post("/v1/embed/texts", json={"texts": ["a dog"]})
    assert first.status_code == 503 and "worker bug" in first.json()["detail"]
    service.texts._thread.join(5)
    body = down(client, "batcher:text", "crashed")
    assert body["checks"]["batcher:image"] == "ok"
    again = client.post("/v1/search/text", json={"query": "a cat"})
    assert again.status_code == 503 and "not running" in again.json()["detail"]


def test_stopped_batcher_thread(served):
    client, service, _ = served
    service.images.close()
    down(client, "batcher:image", "shut down")
    up = client.post("/v1/search/image/upload", files={"file": ("x.jpg", b"\xff\xd8")})
    assert up.status_code in (422, 503)  # a broken JPEG fails decoding before the batcher


def test_closed_index(served):
    client, service, _ = served
    service.index.close()
    down(client, "index", "not readable")
    search = client.post("/v1/search/text", json={"query": "a fish"})
    assert search.status_code == 503 and search.json()["error"] == "index_unavailable"


def test_index_file_removed(served, tmp_path):
    client, _, path = served
    path.rename(tmp_path / "moved.db")
    down(client, "index", "is gone")


def test_index_file_replaced(served, tmp_path):
    client, _, path = served
    shutil.copy(path, tmp_path / "copy.db")
    os.replace(tmp_path / "copy.db", path)  # same name, another file
    down(client, "index", "was replaced")


def test_index_file_overwritten(served):
    client, _, path = served
    with open(path, "r+b") as fh:
        fh.write(b"garbage garbage garbage")
    body = down(client, "index", "")
    assert "not an SQLite file" in body["checks"]["index"] or "not readable" in \
        body["checks"]["index"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_index_file_unreadable(served):
    client, _, path = served
    path.chmod(0)
    try:
        down(client, "index", "not readable")
    finally:
        path.chmod(0o644)


def test_model_not_loaded(served, monkeypatch):
    client, service, _ = served
    monkeypatch.setattr(service, "model", None)
    down(client, "model", "not loaded")


def test_health_is_documented_with_its_503(served):
    client, _, _ = served
    op = client.get("/openapi.json").json()["paths"]["/v1/health"]["get"]
    schema = op["responses"]["503"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/UnhealthyResponse")
