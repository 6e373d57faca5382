"""Safe defaults of the server: path traversal, API keys, Host checks, binding, CORS, body
limits, URL fetching rules, timeouts and overload answers."""

from __future__ import annotations

import http.server
import os
import threading

import pytest
from fastapi.testclient import TestClient

from clipsift.cli.main import main
from clipsift.errors import FetchError, UsageError
from clipsift.server import ServerSettings, create_app
from clipsift.server.fetch import check_url
from clipsift.server.security import check_bind, is_loopback
from tests.support.serverkit import LOOPBACK, CountingModel, build_index

KEY = "s3cret-key-for-tests"


@pytest.fixture(scope="module")
def index_path(photos, tmp_path_factory):
    return build_index(photos, tmp_path_factory.mktemp("sec"), count=6)


@pytest.fixture(scope="module")
def client(index_path):
    with TestClient(create_app(index_path, "fake", ServerSettings()), base_url=LOOPBACK) as c:
        yield c


# ---- path traversal ---------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    "/v1/thumbnail/../../etc/passwd",
    "/v1/thumbnail/..%2F..%2Fetc%2Fpasswd",
    "/v1/thumbnail/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "/v1/thumbnail/1%2F..%2F..%2Fetc%2Fpasswd",
    "/v1/thumbnail/%2Fetc%2Fpasswd",
    "/v1/thumbnail/1;/etc/passwd",
    "/v1/thumbnail/0",
    "/v1/thumbnail/-1",
    "/v1/thumbnail/1.5",
    "/v1/thumbnail/99999",
    "/v1/thumbnail/%00",
    "/v1/thumbnail/1?path=/etc/passwd&size=../../x",
    "/v1/items/..%2F..%2Fetc%2Fpasswd",
    "/static/../../../../etc/passwd",
    "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
])
def test_path_traversal_never_reads_files(client, path):
    resp = client.get(path)
    assert resp.status_code in (400, 404, 422), (path, resp.status_code)
    assert b"root:" not in resp.content


def test_thumbnail_of_a_swapped_file_leaks_nothing(photos, tmp_path):
    path = build_index(photos, tmp_path, count=2)
    victim = sorted((tmp_path / "photos").iterdir())[0]
    victim.unlink()
    os.symlink("/etc/passwd", victim)  # the indexed key now points at a secret
    with TestClient(create_app(path, "fake"), base_url=LOOPBACK) as c:
        ids = [c.get(f"/v1/thumbnail/{i}") for i in (1, 2)]
    assert sorted(r.status_code for r in ids) == [200, 404]
    assert all(b"root:" not in r.content for r in ids)


# ---- API key ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(index_path):
    app = create_app(index_path, "fake", ServerSettings(api_key=KEY, host="0.0.0.0"))
    with TestClient(app, base_url="http://photos.example") as c:
        yield c


@pytest.mark.parametrize("headers", [
    {}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}, {"X-API-Key": KEY + "x"},
    {"Authorization": "Bearer nope"}, {"Authorization": KEY}, {"X-API-Key": ""},
    {"X-API-Key": "é".encode() * 20},
])
def test_missing_or_wrong_key_is_401(keyed, headers):
    for method, path in (("GET", "/v1/health"), ("POST", "/v1/search/text"),
                         ("GET", "/v1/thumbnail/1"), ("GET", "/metrics")):
        resp = keyed.request(method, path, headers=headers, json={"query": "x"})
        assert resp.status_code == 401, (path, headers)
        assert "API key" in resp.json()["detail"]


def test_right_key_passes(keyed):
    assert keyed.get("/v1/health", headers={"X-API-Key": KEY}).json()["auth"] is True
    bearer = keyed.post("/v1/search/text", json={"query": "x"},
                        headers={"Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200
    assert keyed.get("/metrics", headers={"X-API-Key": KEY}).status_code == 200
    assert keyed.get("/").status_code == 200  # the page itself is static and public


def test_openapi_declares_the_key(keyed):
    spec = keyed.get("/openapi.json").json()
    assert "APIKeyHeader" in spec["components"]["securitySchemes"]


# ---- Host header (DNS rebinding) --------------------------------------------------------
@pytest.mark.parametrize(("host", "status"), [
    ("127.0.0.1:8000", 200), ("localhost:8000", 200), ("[::1]:8000", 200),
    ("LOCALHOST", 200), ("evil.example", 400), ("127.0.0.1.evil.example", 400), ("", 400),
])
def test_loopback_server_checks_host_header(client, host, status):
    assert client.get("/v1/health", headers={"host": host}).status_code == status


# ---- binding ----------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_binds_without_key(host):
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com", ""])
def test_other_binds_need_a_key(host):
    with pytest.raises(UsageError, match="--api-key"):
        check_bind(host, None)
    check_bind(host, KEY)


def test_cli_refuses_public_bind_without_key(capsys, monkeypatch):
    monkeypatch.delenv("CLIPSIFT_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--model", "fake"]) == 2
    assert "refusing to bind" in capsys.readouterr().err


def test_settings_refuse_wildcard_cors_and_short_keys():
    with pytest.raises(UsageError, match="'\\*' is refused"):
        ServerSettings(cors_origins=("*",))
    with pytest.raises(UsageError, match="8 characters"):
        ServerSettings(api_key="short")
    with pytest.raises(UsageError, match="refusing to bind"):
        ServerSettings(host="0.0.0.0")


# ---- CORS -------------------------------------------------------------------------------
def test_cors_off_by_default(client):
    resp = client.get("/v1/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in resp.headers


def test_cors_only_for_listed_origins(index_path):
    settings = ServerSettings(cors_origins=("http://localhost:3000",))
    with TestClient(create_app(index_path, "fake", settings), base_url=LOOPBACK) as c:
        good = c.options("/v1/search/text", headers={
            "Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"})
        assert good.headers["access-control-allow-origin"] == "http://localhost:3000"
        bad = c.get("/v1/health", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in bad.headers


# ---- body limits ------------------------------------------------------------------------
def test_body_too_large_is_413(index_path):
    settings = ServerSettings(max_body_bytes=100_000)
    with TestClient(create_app(index_path, "fake", settings), base_url=LOOPBACK) as c:
        declared = c.post("/v1/embed/texts", content=b"x" * 100_001,
                          headers={"content-type": "application/json"})
        assert declared.status_code == 413

        def stream():  # chunked: no Content-Length, the cap is enforced while reading
            for _ in range(30):
                yield b"y" * 10_000

        streamed = c.post("/v1/search/image/upload", content=stream(),
                          headers={"content-type": "multipart/form-data; boundary=x"})
        assert streamed.status_code == 413
        assert c.post("/v1/embed/texts", json={"texts": ["fits"]}).status_code == 200


# ---- URL fetching -----------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.com/x.jpg", "http://127.0.0.1:1/x.jpg",
    "http://localhost/x.jpg", "http://[::1]/x.jpg", "http://169.254.169.254/latest/",
    "http://10.0.0.1/x", "http://user:pw@example.com/x.jpg", "http:///nohost", "gopher://x",
])
def test_url_checks_block_private_and_odd_urls(url):
    with pytest.raises(FetchError):
        check_url(url, allow_private=False)


@pytest.fixture
def photo_server(photos):
    data = photos[0].read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = data if self.path == "/photo.jpg" else b"x" * 3_000_000
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_url_fetch_when_enabled(index_path, photo_server, photos):
    blocked = ServerSettings(allow_url_fetch=True)
    with TestClient(create_app(index_path, "fake", blocked), base_url=LOOPBACK) as c:
        resp = c.post("/v1/search/image", json={"image": {"url": f"{photo_server}/photo.jpg"}})
        assert resp.status_code == 400 and "non-public" in resp.json()["detail"]
    allowed = ServerSettings(allow_url_fetch=True, allow_private_urls=True,
                             url_fetch_max_bytes=1_000_000)
    with TestClient(create_app(index_path, "fake", allowed), base_url=LOOPBACK) as c:
        hits = c.post("/v1/search/image", json={"image": {"url": f"{photo_server}/photo.jpg"},
                                                "k": 1}).json()["hits"]
        assert hits[0]["name"] == photos[0].name
        big = c.post("/v1/search/image", json={"image": {"url": f"{photo_server}/big"}})
        assert big.status_code == 400 and "limit" in big.json()["detail"]


# ---- timeouts and overload --------------------------------------------------------------
def test_slow_request_gets_504(index_path):
    settings = ServerSettings(request_timeout_s=0.3)
    app = create_app(index_path, CountingModel(delay=1.0), settings)
    with TestClient(app, base_url=LOOPBACK) as c:
        resp = c.post("/v1/embed/texts", json={"texts": ["slow"]})
    assert resp.status_code == 504 and "longer than" in resp.json()["detail"]


def test_full_queue_gets_503(index_path):
    settings = ServerSettings(max_queue=2, batch_window_ms=0)
    app = create_app(index_path, CountingModel(delay=0.5), settings)
    with TestClient(app, base_url=LOOPBACK) as c:
        codes: list[int] = []

        def call():
            codes.append(c.post("/v1/embed/texts", json={"texts": ["a", "b"]}).status_code)

        threads = [threading.Thread(target=call) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert 503 in codes and 200 in codes and set(codes) <= {200, 503}
