"""Idle and slow clients are closed (raw sockets against a real `clipsift serve` process):
a connection that sends nothing, a request head or body sent a byte at a time, a body still
trickling after the response, an idle keep-alive connection. With a low connection limit,
ten idle sockets block others only until the head deadline closes them."""

from __future__ import annotations

import select
import socket
import time

import httpx
import pytest

from tests.support.serverkit import LiveServer, build_index

HEAD_S, BODY_S, KEEP_ALIVE_S = 1.0, 1.5, 1.0
SLACK_S = 2.0  # process scheduling on a busy 2-core machine


@pytest.fixture(scope="module")
def server(photos, tmp_path_factory):
    path = build_index(photos, tmp_path_factory.mktemp("conn"), count=4)
    args = [str(path), "--model", "fake", "--max-connections", "8",
            "--header-timeout", str(HEAD_S), "--body-timeout", str(BODY_S),
            "--keep-alive", str(KEEP_ALIVE_S)]
    with LiveServer(args) as srv:
        yield srv


def connect(srv: LiveServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", srv.port), timeout=10)


def until_closed(sock: socket.socket, limit: float, trickle: bytes = b"",
                 every: float = 0.3) -> tuple[float, bytes]:
    """Read (sending `trickle` a byte every `every` s) until the server closes the
    connection -> (seconds it took, bytes received); fails after `limit` seconds."""
    start = time.monotonic()
    received = b""
    pos = 0
    while time.monotonic() - start < limit:
        readable, _, _ = select.select([sock], [], [], every)
        if readable:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return time.monotonic() - start, received
            received += chunk
        elif pos < len(trickle):
            try:
                sock.sendall(trickle[pos : pos + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start, received
            pos += 1
    raise AssertionError(f"connection still open after {limit} s; got {received[:200]!r}")


def test_silent_connections_are_closed_and_free_their_slots(server):
    idle = [connect(server) for _ in range(10)]  # more than --max-connections 8
    try:
        took = [until_closed(s, HEAD_S + SLACK_S)[0] for s in idle]
    finally:
        for s in idle:
            s.close()
    assert max(took) < HEAD_S + SLACK_S
    assert httpx.get(f"{server.url}/v1/health", timeout=10).status_code == 200


def test_idle_sockets_lock_others_out_only_until_the_head_deadline(server):
    idle = [connect(server) for _ in range(10)]
    try:
        time.sleep(0.2)
        deadline, status = time.monotonic() + HEAD_S + SLACK_S, None
        while time.monotonic() < deadline:
            status = httpx.get(f"{server.url}/v1/health", timeout=10).status_code
            if status == 200:
                break
            assert status == 503  # at the connection limit meanwhile
            time.sleep(0.1)
        assert status == 200
    finally:
        for s in idle:
            s.close()


def test_slow_request_head_gets_408_and_is_closed(server):
    head = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 40 + b"\r\n\r\n"
    with connect(server) as s:
        s.sendall(head[:20])
        took, got = until_closed(s, HEAD_S + SLACK_S, trickle=head[20:])
    assert got.startswith(b"HTTP/1.1 408"), got[:100]
    assert took < HEAD_S + SLACK_S


def test_slow_body_gets_408_and_is_closed(server):
    body = b'{"query": "' + b"a" * 200 + b'"}'
    head = (b"POST /v1/search/text HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n")
    with connect(server) as s:
        s.sendall(head)
        took, got = until_closed(s, BODY_S + SLACK_S, trickle=body, every=0.2)
    assert got.startswith(b"HTTP/1.1 408"), got[:100]
    assert b"took too long" in got and took < BODY_S + SLACK_S


def test_body_trickling_after_the_response_is_cut_off(server):
    head = (b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n")
    with connect(server) as s:
        s.sendall(head)
        took, got = until_closed(s, BODY_S + 1.0 + SLACK_S, trickle=b"x" * 1000, every=0.2)
    assert got.startswith(b"HTTP/1.1 200"), got[:100]  # answered at once, then cut off
    assert took < BODY_S + 1.0 + SLACK_S


def test_idle_keep_alive_connection_is_closed(server):
    with connect(server) as s:
        s.sendall(b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        took, got = until_closed(s, KEEP_ALIVE_S + SLACK_S)
    assert got.startswith(b"HTTP/1.1 200") and took < KEEP_ALIVE_S + SLACK_S


def test_keep_alive_serves_several_requests(server):
    with httpx.Client(base_url=server.url, timeout=10) as c:
        codes = [c.get("/v1/health").status_code for _ in range(5)]
    assert codes == [200] * 5
