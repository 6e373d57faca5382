"""Safe defaults: loopback binding, API key checks, Host header checks, CORS.

- `check_bind` refuses to bind a non-loopback address without an API key; `check_api_key`
  refuses keys that are empty after stripping whitespace, edged with whitespace, or short.
- `ApiKeyMiddleware` checks the key on /v1 and /metrics before anything reads the request
  body (so an unauthenticated client cannot make the server parse a 20 MB upload), in
  constant time (`hmac.compare_digest`) on the raw header bytes.
- `HostCheckMiddleware` accepts only loopback Host names when the server has no key, so
  a web page on another site cannot reach the server through DNS rebinding.
- CORS is added only for origins listed by the operator, never "*".
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from typing import Any

from fastapi.security import APIKeyHeader

from clipsift.errors import UsageError
from clipsift.server.limits import send_json

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


def check_api_key(api_key: str | None) -> None:
    """Refuse keys that would not protect anything or could never match a request.

    Raises:
        UsageError: the key is empty after stripping whitespace, starts or ends with
            whitespace (HTTP strips it from header values), or is under 8 characters.
    """
    if api_key is None:
        return
    if not api_key.strip():
        raise UsageError("the API key is empty (or only whitespace): give a real key with "
                         "--api-key KEY or CLIPSIFT_API_KEY=KEY, or leave both unset to "
                         "serve on loopback without a key")
    if api_key != api_key.strip():
        raise UsageError("the API key starts or ends with whitespace, which HTTP header "
                         "values cannot carry (no request could match it); remove it")
    if len(api_key) < 8:
        raise UsageError("the API key must be at least 8 characters long")


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to serve on a non-loopback address without an API key.

    Raises:
        UsageError: `host` is not loopback and `api_key` is empty (or only whitespace).
    """
    if is_loopback(host) or (api_key and api_key.strip()):
        return
    raise UsageError(
        f"refusing to bind {host!r} without an API key: anyone on the network could use "
        "the server and see your images. Pass --api-key KEY (or set CLIPSIFT_API_KEY), "
        "or bind 127.0.0.1 (the default) and put a reverse proxy in front."
    )


def key_error(headers: Iterable[tuple[bytes, bytes]], key: bytes) -> str | None:
    """Why a request's raw headers do not carry `key` (None when they do).

    The key comes in `X-API-Key: KEY` or `Authorization: Bearer KEY`; compared in constant
    time on the bytes as sent.
    """
    given: bytes | None = None
    bearer: bytes | None = None
    for name, value in headers:
        lname = name.lower()
        if lname == b"x-api-key":
            given = value.strip()
        elif lname == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer":
                bearer = token.strip()
    given = given if given is not None else bearer
    if not given:
        return f"missing API key: send it in the {API_KEY_HEADER} header"
    if not hmac.compare_digest(given, key):
        return "wrong API key"
    return None


class ApiKeyMiddleware:
    """Answer 401 to /v1 and /metrics requests without the key, before the body is read
    (pure ASGI; the static page, /docs and /openapi.json stay public)."""

    def __init__(self, app: Any, api_key: str,
                 protected: tuple[str, ...] = ("/v1/", "/metrics")) -> None:
        self.app = app
        self.key = api_key.encode("utf-8")
        self.protected = protected

    def _guarded(self, path: str) -> bool:
        return any(path == p.rstrip("/") or path.startswith(p) for p in self.protected)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not self._guarded(scope["path"]):
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers") or []
        error = key_error(headers, self.key)
        if error is None:
            await self.app(scope, receive, send)
            return
        extra = [(b"www-authenticate", b"ApiKey")]
        if _has_body(headers):  # do not take in the upload of a client we will not serve
            extra.append((b"connection", b"close"))
        await send_json(send, 401, {"error": "unauthorized", "detail": error}, extra)


def _has_body(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        lname = name.lower()
        if lname == b"transfer-encoding" or (lname == b"content-length"
                                             and value.strip() not in (b"", b"0")):
            return True
    return False


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
        await send_json(send, 400, {
            "error": "bad_host",
            "detail": "Host header not allowed; this server answers to "
                      f"{', '.join(sorted(self.allowed))} (start it with --api-key to "
                      "accept other names)",
        })
