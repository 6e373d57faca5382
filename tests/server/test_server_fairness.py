"""Heavy valid requests do not starve others: a long caption list runs in small background
jobs while text searches go first; text work per request is bounded in tokens (413 before
any model work); caption embeddings are cached, so a repeated list is not encoded again."""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from clipsift.server import ServerSettings, create_app
from clipsift.server.texts import _cut
from tests.support.fake_model import FakeModel
from tests.support.serverkit import LOOPBACK, build_index, jpeg_bytes

PER_CHUNK_S = 0.002  # model time per text chunk (a forward row)


class SlowTextModel(FakeModel):
    """FakeModel whose text tower costs PER_CHUNK_S per chunk and records its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.text_rows: list[int] = []
        self._lock = threading.Lock()

    def _text_features(self, texts):
        with self._lock:
            self.text_rows.append(len(texts))
        time.sleep(PER_CHUNK_S * len(texts))
        rows = [self._word_vector(t[:40]) for t in texts]  # cheap: one hash per chunk
        return torch.from_numpy(np.stack(rows))


@pytest.fixture(scope="module")
def index_path(photos, tmp_path_factory):
    return build_index(photos, tmp_path_factory.mktemp("fair"), count=4)


@pytest.fixture
def served(index_path):
    model = SlowTextModel()
    app = create_app(index_path, model, ServerSettings(request_timeout_s=60))
    with TestClient(app, base_url=LOOPBACK) as client:
        yield client, model, app.state.service
    app.state.service.close()


def captions(n: int, words: int, tag: str) -> list[str]:
    """`n` distinct captions of `words` tokens (FakeModel counts words), <= 4,000 chars."""
    return [f"{tag}{i} " + " ".join(f"w{j % 10}" for j in range(words - 1)) for i in range(n)]


def caption_request(caps: list[str]) -> dict:
    return {"image": {"data": base64.b64encode(jpeg_bytes()).decode()}, "captions": caps,
            "k": 3}


def test_text_search_answers_while_a_long_caption_list_is_encoded(served):
    client, model, _ = served
    heavy_caps = captions(240, 600, "h")  # 144,000 tokens = 1,920 chunks: ~4 s of model
    heavy: dict = {}

    def run_heavy() -> None:
        heavy["resp"] = client.post("/v1/image-to-text", json=caption_request(heavy_caps))

    thread = threading.Thread(target=run_heavy)
    thread.start()
    deadline = time.monotonic() + 20
    while sum(model.text_rows) < 200 and time.monotonic() < deadline:  # heavy work started
        time.sleep(0.01)
    waits = []
    for i in range(3):
        t0 = time.perf_counter()
        resp = client.post("/v1/search/text", json={"query": f"a red fish {i}", "k": 2})
        waits.append(time.perf_counter() - t0)
        assert resp.status_code == 200, resp.text
    still_running = thread.is_alive()
    thread.join(60)
    assert heavy["resp"].status_code == 200, heavy["resp"].text
    assert max(waits) < 1.0, waits
    assert still_running, "the heavy request finished before the searches: not measured"
    assert max(model.text_rows) <= 64  # no model call over one batch of chunks


def test_repeated_caption_list_is_not_encoded_again(served):
    client, model, _ = served
    caps = captions(100, 5, "r")
    first = client.post("/v1/image-to-text", json=caption_request(caps))
    rows = sum(model.text_rows)
    second = client.post("/v1/image-to-text", json=caption_request(caps))
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert sum(model.text_rows) == rows  # every caption came from the cache
    more = client.post("/v1/image-to-text", json=caption_request([*caps, "a new one"]))
    assert more.status_code == 200 and sum(model.text_rows) == rows + 1


def test_cached_vectors_equal_fresh_ones(served):
    client, _, _ = served
    texts = ["a dog on a beach", "a red car"]
    once = client.post("/v1/embed/texts", json={"texts": texts}).json()["embeddings"]
    twice = client.post("/v1/embed/texts", json={"texts": texts[::-1]}).json()["embeddings"]
    assert np.allclose(once, twice[::-1]) and np.allclose(once, SlowTextModel().encode_texts(texts))


def test_token_budget_refuses_before_model_work(served):
    client, model, _ = served
    huge = captions(2000, 1000, "b")  # 2,000 captions of ~4,000 characters: 2 M tokens
    t0 = time.perf_counter()
    resp = client.post("/v1/image-to-text", json=caption_request(huge))
    took = time.perf_counter() - t0
    assert resp.status_code == 413 and "150000 tokens" in resp.json()["detail"]
    assert model.text_rows == [] and took < 10
    long_texts = {"texts": [" ".join(["word"] * 800)] * 1 + captions(255, 800, "e")}
    assert client.post("/v1/embed/texts", json=long_texts).status_code == 413


def test_budget_counts_tokens_not_characters(index_path):
    settings = ServerSettings(max_request_tokens=1000)
    with TestClient(create_app(index_path, SlowTextModel(), settings), base_url=LOOPBACK) as c:
        short_words = c.post("/v1/embed/texts", json={"texts": ["a " * 1999]})  # 1999 tokens
        long_word = c.post("/v1/embed/texts", json={"texts": ["x" * 3999]})  # 1 token
    assert short_words.status_code == 413 and long_word.status_code == 200


def test_cache_is_bounded_by_bytes(index_path):
    settings = ServerSettings(text_cache_bytes=20_000)
    app = create_app(index_path, SlowTextModel(), settings)
    with TestClient(app, base_url=LOOPBACK) as c:
        for i in range(10):
            c.post("/v1/embed/texts", json={"texts": captions(8, 3, f"c{i}")})
        cache = app.state.service.text_encoder.cache
        assert 0 < cache.weight <= 20_000 and len(cache) < 80
    app.state.service.close()


def test_cut_groups_by_cost():
    assert _cut([0, 1, 2, 3], [30, 30, 30, 100], 64) == [[0, 1], [2], [3]]
    assert _cut([], [], 64) == []
