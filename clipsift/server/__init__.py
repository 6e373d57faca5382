"""clipsift over HTTP: a FastAPI app (JSON API under /v1, a search page at /).

    >>> from clipsift.server import ServerSettings, create_app
    >>> app = create_app("photos.db", model="mini", settings=ServerSettings())

Modules: `app` (factory, error mapping, middleware order), `routes` (/v1 endpoints),
`schemas` (pydantic request/response models, bound to a server's limits), `service`
(model + index behind micro-batchers), `batcher` (micro-batching, two lanes), `texts`
(text cache, token budget), `health` (/v1/health checks), `security` (API key, Host
check, bind rule), `limits` (body size, timeouts), `transport` (uvicorn with request-head
and body deadlines), `metrics` (Prometheus), `thumbs`, `fetch`, `config`.
FastAPI is imported only when `create_app` is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "clipsift.server.app",
    "ServerSettings": "clipsift.server.config",
    "check_bind": "clipsift.server.security",
    "MicroBatcher": "clipsift.server.batcher",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clipsift.server' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
