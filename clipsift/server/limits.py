"""ASGI middlewares that bound every request: body size, body read time, total time.

`BodyLimitMiddleware` rejects a declared Content-Length over the cap at once (413) and
reads a streamed (chunked) body only up to the cap before answering 413; the app then
sees the buffered body, so no handler ever starts on an oversized request. A body that
takes longer than `read_timeout` to arrive gets 408; a client that disconnects mid-body
gets nothing (the handler never sees a truncated body).
`TimeoutMiddleware` answers 504 when the app has not started its response in time.
Deadlines for the request head and for idle connections live in `transport` (uvicorn).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

Scope = dict
Message = dict


async def send_json(send: Any, status: int, payload: dict,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a complete JSON response through a raw ASGI `send`."""
    body = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _too_large(limit: int) -> dict:
    mb = limit / (1024 * 1024)
    return {"error": "payload_too_large",
            "detail": f"request body is larger than the server's limit of {mb:.1f} MB"}


class BodyLimitMiddleware:
    """Cap request bodies at `max_bytes` (413) and their upload time at `read_timeout` (408)."""

    def __init__(self, app: Any, max_bytes: int, read_timeout: float = 30.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await send_json(send, 400, {"error": "bad_request",
                                            "detail": "invalid Content-Length header"})
                return
            if size > self.max_bytes:
                await send_json(send, 413, _too_large(self.max_bytes),
                                [(b"connection", b"close")])
                return
        try:
            body = await asyncio.wait_for(self._read(receive), self.read_timeout)
        except TimeoutError:
            await send_json(send, 408, {"error": "request_timeout",
                                        "detail": "the request body took too long to arrive"},
                            [(b"connection", b"close")])
            return
        if body is _GONE:
            return  # the client left mid-body: nobody to answer
        if body is None:
            await send_json(send, 413, _too_large(self.max_bytes), [(b"connection", b"close")])
            return
        assert isinstance(body, bytes)
        await self.app(scope, _replay(body, receive), send)

    async def _read(self, receive: Any) -> bytes | object | None:
        """The whole body, None once it passes the cap (the rest is not read), or `_GONE`
        when the client disconnects before the end."""
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _GONE
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


_GONE = object()  # the client disconnected mid-body


def _replay(body: bytes, receive: Any) -> Any:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # later calls wait for the disconnect, as usual

    return replay


class TimeoutMiddleware:
    """Answer 504 when the app has not started responding within `seconds`."""

    def __init__(self, app: Any, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracking_send), self.seconds)
        except TimeoutError:
            if started:  # too late for a status code: end the body
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await send_json(send, 504, {
                "error": "timeout",
                "detail": f"the request took longer than {self.seconds:g} s; the server may "
                          "be overloaded, retry later or ask for less (smaller k, fewer "
                          "items)"})
