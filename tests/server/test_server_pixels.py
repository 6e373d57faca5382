"""Uploads decode exactly (issue 15): the server's image routes give the vector of the same
file read from disk, to 1e-6, on every kind of file (reference:
`tests.support.imagekinds.reference_rgb` + the model's preprocess; TinyViT, random weights).
"""

from __future__ import annotations

import base64

import numpy as np
import pytest
from fastapi.testclient import TestClient

import clipsift
from clipsift.index.index import Index
from clipsift.server import ServerSettings, create_app
from tests.support.imagekinds import reference_rgb, write_kinds
from tests.support.serverkit import LOOPBACK


@pytest.fixture(scope="module")
def tiny(tiny_vit):
    return clipsift.load(f"TinyViT-quickgelu:{tiny_vit['safetensors']}")


@pytest.fixture(scope="module")
def kinds(tmp_path_factory):
    return write_kinds(tmp_path_factory.mktemp("kinds") / "images")


@pytest.fixture(scope="module")
def app(tiny, kinds):
    folder = next(iter(kinds.values())).parent
    path = folder.parent / "kinds.db"
    with Index(path, tiny) as idx:
        assert idx.add([folder], workers=0).errors == 0
    return create_app(path, tiny, ServerSettings())


def _close(route: str, name: str, got, ref: np.ndarray) -> None:
    diff = float(np.max(np.abs(np.asarray(got, np.float32) - ref)))
    assert diff <= 1e-6, f"{route} differs on {name}: max abs {diff:.2e}"


def test_upload_routes_give_the_file_vector(app, tiny, kinds, monkeypatch):
    svc = app.state.service
    queries: list[np.ndarray] = []
    search_vector = svc.search_vector

    async def spy(vector, k, threshold):
        queries.append(vector)
        return await search_vector(vector, k, threshold)

    monkeypatch.setattr(svc, "search_vector", spy)
    with TestClient(app, base_url=LOOPBACK) as client:
        for name, path in kinds.items():
            ref = tiny.encode_pixels(tiny.preprocess(reference_rgb(path))[None])[0]
            data = path.read_bytes()
            js = client.post("/v1/embed/images",
                             json={"images": [{"data": base64.b64encode(data).decode()}]})
            assert js.status_code == 200, js.text
            _close("/v1/embed/images", name, js.json()["embeddings"][0], ref)
            up = client.post("/v1/embed/images/upload", files={"files": (name, data)})
            assert up.status_code == 200, up.text
            _close("/v1/embed/images/upload", name, up.json()["embeddings"][0], ref)
            hits = client.post("/v1/search/image/upload", files={"file": (name, data)},
                               data={"k": "3"})
            assert hits.status_code == 200, hits.text
            _close("/v1/search/image/upload", name, queries.pop(), ref)
            assert hits.json()["hits"][0]["name"] == name  # itself, from the index
