"""Safe defaults: loopback binding, API key checks, Host header checks, CORS.

- `check_bind` refuses to bind a non-loopback address without an API key.
- `ApiKeyCheck` compares the key in constant time (`hmac.compare_digest`).
- `HostCheckMiddleware` accepts only loopback Host names when the server has no key, so
  a web page on another site cannot reach the server through DNS rebinding.
- CORS is added only for origins listed by the operator, never "*".
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Iterable
from typing import Any

from fastapi import Request
from fastapi.security import APIKeyHeader

from clipsift.errors import UsageError

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
API_KEY_HEADER = "X-API-Key"

# Declared for the OpenAPI document (the "Authorize" button at /docs); checked below.
api_key_scheme = APIKeyHeader(name=API_KEY_HEADER, auto_error=False,
                              description="The key given to `clipsift serve --api-key`.")


def is_loopback(host: str) -> bool:
    """True for localhost and loopback IP addresses (127.0.0.0/8, ::1)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve on a non-loopback address without an API key.

    Raises:
        UsageError: `host` is not loopback and `api_key` is empty.
    """
    if is_loopback(host) or api_key:
        return
    raise UsageError(
        f"refusing to bind {host!r} without an API key: anyone on the network could use "
        "the server and see your images. Pass --api-key KEY (or set CLIPSIFT_API_KEY), "
        "or bind 127.0.0.1 (the default) and put a reverse proxy in front."
    )


class AuthError(Exception):
    """Missing or wrong API key (mapped to 401)."""


class ApiKeyCheck:
    """FastAPI dependency: passes when no key is configured or the request carries it."""

    def __init__(self, api_key: str | None) -> None:
        self._key = api_key.encode("utf-8") if api_key else None

    def __call__(self, request: Request) -> None:
        if self._key is None:
            return
        given = request.headers.get(API_KEY_HEADER)
        if given is None:
            auth = request.headers.get("authorization", "")
            scheme, _, token = auth.partition(" ")
            given = token.strip() if scheme.lower() == "bearer" else None
        if not given:
            raise AuthError(f"missing API key: send it in the {API_KEY_HEADER} header")
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), self._key):
            raise AuthError("wrong API key")


def host_name(header: str) -> str:
    """The host part of a Host header: "[::1]:8000" -> "::1", "a.b:80" -> "a.b"."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") > 1:  # a bare IPv6 address
        return value
    return value.split(":", 1)[0]


def default_allowed_hosts(api_key: str | None, bind_host: str) -> tuple[str, ...] | None:
    """Loopback names (plus the bound address) without a key; None (any) with one."""
    if api_key:
        return None
    names = {*LOOPBACK_NAMES, host_name(bind_host)}
    return tuple(sorted(names))


class HostCheckMiddleware:
    """Reject requests whose Host header is not in `allowed` with 400 (pure ASGI)."""

    def __init__(self, app: Any, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(h.lower() for h in allowed)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if host in self.allowed:
            await self.app(scope, receive, send)
            return
        body = json.dumps({
            "error": "bad_host",
            "detail": "Host header not allowed; this server answers to "
                      f"{', '.join(sorted(self.allowed))} (start it with --api-key to "
                      "accept other names)",
        }).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
