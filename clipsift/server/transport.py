"""Running the app under uvicorn with connection deadlines uvicorn lacks.

uvicorn closes a keep-alive connection that stays idle after a response, but it has no
deadline for receiving a request: a connection that never sends a byte, or sends its
request head (or its body, after the response) one byte every few seconds, stays open
for ever, and enough of them fill `limit_concurrency` so every other client gets 503.
`GuardedH11Protocol` adds two deadlines to uvicorn's h11 protocol:

- head: a new connection, or a keep-alive connection once the next request's first byte
  arrives, must deliver the complete request head within `header_timeout_s`;
- body: once the head is in, the body must arrive within `body_timeout_s` (the app's
  `BodyLimitMiddleware` answers 408 at that time; this closes the connection a moment
  later in case nothing is reading the body, e.g. after an early 401 or 413).

On expiry the connection is closed (after a 408 when part of a request head came in).

    >>> serve(app, settings, port=8000, log_level="info")   # what `clipsift serve` does
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from clipsift.server.config import ServerSettings

MAX_HEAD_BYTES = 16 * 1024  # request line + headers (h11's limit; uvicorn's default too)
_BODY_GRACE_S = 1.0  # the app's own 408 goes first
_HEAD_TIMEOUT_BODY = json.dumps({
    "error": "request_timeout",
    "detail": "the request head (request line and headers) took too long to arrive"}).encode()


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines for the request head and body.

    Subclasses made by `guarded_protocol` set the two timeouts.
    """

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "head" or "body" while a deadline runs

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("head", self.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._phase != "head":
            self._arm("head", self.header_timeout_s)  # the first bytes of the next request
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # ---- deadlines ----------------------------------------------------------------------
    def _follow(self) -> None:
        """Move the deadline along with the client's side of the h11 state machine."""
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            if self._phase != "body":
                self._arm("body", self.body_timeout_s + _BODY_GRACE_S)
        elif state is not h11.IDLE or self._phase != "head":
            self._disarm()  # request complete (or connection ending), or idle keep-alive

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, None

    def _expired(self) -> None:
        phase, self._deadline, self._phase = self._phase, None, None
        if self.transport.is_closing():
            return
        partial_head = phase == "head" and bool(self.conn.trailing_data[0])
        if partial_head and self.conn.our_state is h11.IDLE:
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: "
                + str(len(_HEAD_TIMEOUT_BODY)).encode() + b"\r\n\r\n" + _HEAD_TIMEOUT_BODY)
        self.logger.debug("closing a connection from %s: request %s not received in time",
                         self.client, phase)
        self.transport.close()


def guarded_protocol(settings: ServerSettings) -> type[GuardedH11Protocol]:
    """A `GuardedH11Protocol` subclass with the settings' head and body timeouts."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {
        "header_timeout_s": settings.header_timeout_s,
        "body_timeout_s": settings.body_timeout_s,
    })


def uvicorn_config(app: Any, settings: ServerSettings, port: int,
                   log_level: str = "info") -> uvicorn.Config:
    """The uvicorn configuration `clipsift serve` uses: guarded h11 protocol, keep-alive
    and connection limits from `settings`, no Server header, no proxy headers."""
    return uvicorn.Config(
        app, host=settings.host, port=port, log_level=log_level, server_header=False,
        http=guarded_protocol(settings), timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections, proxy_headers=False,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES, ws="none", lifespan="on",
    )


def serve(app: Any, settings: ServerSettings, port: int, log_level: str = "info") -> None:
    """Run `app` with uvicorn until interrupted (blocking)."""
    uvicorn.Server(uvicorn_config(app, settings, port, log_level)).run()
