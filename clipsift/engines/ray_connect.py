"""Starting or joining Ray for `RayEngine`, with errors a user can act on and without
Ray's log noise on the terminal.

Ray 2.59+ turns token authentication on for a cluster started with `ray start --head`,
but a driver sends its token only when it joins with `address="auto"` (or has
`RAY_AUTH_MODE=token` set): joining `HOST:PORT` otherwise fails after ~20 s of
`InvalidAuthToken` lines with "Failed to connect". Before `ray.init`, an explicit
`HOST:PORT` is probed (is anything listening; does its GCS accept us) so both cases fail
at once with one line saying what to do (`EngineError`). Ray's own output while
connecting (its C++ core writes to file descriptor 2) is held back and shown only in the
error, shortened.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from clipsift.errors import EngineError

#: how long the probe waits for a TCP connection to the cluster's GCS port
CONNECT_TIMEOUT_S = 5.0
_HOST_PORT = re.compile(r"^\[?(?P<host>[^\[\]/]+?)\]?:(?P<port>\d{1,5})$")
_AUTH = re.compile(r"InvalidAuthToken|AuthenticationError|Unauthenticated")


class _Captured:
    """What was written to file descriptor 2 inside `captured_stderr`."""

    text = ""


@contextlib.contextmanager
def captured_stderr() -> Iterator[_Captured]:
    """Send everything written to file descriptor 2 (Python and C++ alike) to a temporary
    file for the duration; its text is in the yielded object afterwards."""
    out = _Captured()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield out
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.text = tmp.read().decode("utf-8", "replace")


def _token_fix(address: str) -> str:
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        return (f"the Ray cluster at {address} refused this machine's token: give it the "
                "cluster's token (~/.ray/auth_token, RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH; "
                "`ray get-auth-token` on the head node prints it)")
    return (f"the Ray cluster at {address} requires token authentication (on by default "
            "since Ray 2.59): set RAY_AUTH_MODE=token with the cluster's token in "
            "~/.ray/auth_token or RAY_AUTH_TOKEN (`ray get-auth-token` on the head node "
            "prints it), or run on the head node with --ray-address auto")


def probe(address: str) -> None:
    """Check that a `HOST:PORT` Ray address answers and accepts this driver, fast.

    Other forms ("auto", "ray://...") are left to Ray. A probe that cannot tell (Ray's
    internals changed) lets `ray.init` decide.

    Raises:
        EngineError: nothing listens there, or the cluster refuses us (token).
    """
    m = _HOST_PORT.match(address)
    if m is None:
        return
    try:
        socket.create_connection((m["host"], int(m["port"])), CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise EngineError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); "
                          "is `ray start --head` running there, and is the port open?") from None
    try:
        from ray._raylet import GcsClient
    except ImportError:
        return
    refused = False
    with captured_stderr():  # Ray's core logs each failed attempt: not for the terminal
        try:
            GcsClient(address=address)
        except Exception as exc:  # ray.exceptions.AuthenticationError, RpcError...
            refused = bool(_AUTH.search(f"{type(exc).__name__} {exc}"))
    if refused:
        raise EngineError(_token_fix(address))


def init(ray: Any, address: str | None, opts: dict[str, Any]) -> None:
    """`ray.init(address, **opts)` with Ray's connection output held back.

    Raises:
        EngineError: the cluster cannot be reached or refuses us; the message names the
            fix, then the last lines Ray wrote.
    """
    target = address or os.environ.get("RAY_ADDRESS")  # Ray joins RAY_ADDRESS when set
    if target:
        probe(target)
    with captured_stderr() as noise:
        try:
            ray.init(address=address, **opts)
        except (ConnectionError, RuntimeError) as exc:
            error: BaseException | None = exc
        else:
            error = None
    if error is None:
        return
    if target and _AUTH.search(f"{error} {noise.text}"):
        raise EngineError(_token_fix(target)) from None
    last = [ln for ln in noise.text.splitlines() if ln.strip()][-3:]
    tail = f" (Ray said: {' | '.join(last)})" if last else ""
    raise EngineError(f"cannot start or join Ray at {target or 'local'}: {error}{tail}"
                      ) from None
