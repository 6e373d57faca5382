"""Opt-in URL fetching for JSON image inputs: http(s) only, size cap, timeout, no redirects.

Off unless the server was started with `--allow-url-fetch`. Even then a URL whose host
resolves to a loopback, private, link-local, multicast or reserved address is refused
(unless `allow_private` is set), so the server cannot be used to reach services behind it.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from urllib.parse import urlsplit

from clipsift.errors import FetchError


def _check_address(host: str, port: int, allow_private: bool) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as ex:
        raise FetchError(f"cannot resolve host {host!r}: {ex}") from ex
    if allow_private:
        return
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        if not addr.is_global or addr.is_multicast:
            raise FetchError(f"URL host {host!r} resolves to a non-public address ({addr}); "
                             "fetching it is not allowed")


def check_url(url: str, allow_private: bool) -> tuple[str, int]:
    """Validate scheme and host; returns (host, port). Raises FetchError."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as ex:
        raise FetchError(f"malformed URL {url!r}: {ex}") from ex
    if parts.scheme not in ("http", "https"):
        raise FetchError(f"only http and https URLs can be fetched, not {parts.scheme!r}")
    if not parts.hostname:
        raise FetchError(f"URL {url!r} has no host")
    if parts.username or parts.password:
        raise FetchError("URLs with credentials are not fetched")
    port = port or (443 if parts.scheme == "https" else 80)
    _check_address(parts.hostname, port, allow_private)
    return parts.hostname, port


def fetch_bytes(url: str, *, max_bytes: int, timeout: float, allow_private: bool = False
                ) -> bytes:
    """Download `url` (at most `max_bytes`, within `timeout` seconds).

    Raises:
        FetchError: bad or blocked URL, HTTP error status, redirect, too large, timeout.
    """
    import httpx

    check_url(url, allow_private)
    deadline = time.monotonic() + timeout
    try:
        with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client, \
                client.stream("GET", url, headers={"Accept": "image/*"}) as resp:
            if resp.is_redirect:
                raise FetchError(f"{url} redirects to {resp.headers.get('location')!r}; "
                                 "give the final URL (redirects are not followed)")
            if resp.status_code != 200:
                raise FetchError(f"{url} answered HTTP {resp.status_code}")
            declared = resp.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchError(f"{url} is {int(declared)} bytes, over the {max_bytes} limit")
            data = bytearray()
            for chunk in resp.iter_bytes():
                data += chunk
                if len(data) > max_bytes:
                    raise FetchError(f"{url} is larger than the {max_bytes}-byte limit")
                if time.monotonic() > deadline:
                    raise FetchError(f"fetching {url} took longer than {timeout:g} s")
            return bytes(data)
    except httpx.TimeoutException as ex:
        raise FetchError(f"fetching {url} timed out after {timeout:g} s") from ex
    except httpx.HTTPError as ex:
        raise FetchError(f"fetching {url} failed: {ex}") from ex
