"""The FastAPI app: `create_app(index_path, model, settings)`.

    >>> from clipsift.server import create_app, ServerSettings
    >>> app = create_app("photos.db", "mini", ServerSettings())
    >>> # clipsift.server.transport.serve(app, settings, port=8000)   # `clipsift serve`

Layers, outermost first: metrics, Host check (loopback names unless an API key is set),
CORS (listed origins only), API key (401 before any body is read), body limit (413, 408),
timeout (504), then FastAPI with the /v1 router, /metrics, the web page at / and OpenAPI
at /docs. Library errors become JSON `{"error", "detail"}` with a 4xx status (503 when the
index cannot be read), never a 500.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException

from clipsift import __version__
from clipsift.errors import (
    ClipsiftError,
    ImageError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QueryError,
    UsageError,
)
from clipsift.server.config import SCHEMA_MAX_CAPTIONS, ServerSettings
from clipsift.server.limits import BodyLimitMiddleware, TimeoutMiddleware
from clipsift.server.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from clipsift.server.schemas import ErrorResponse
from clipsift.server.security import (
    ApiKeyMiddleware,
    HostCheckMiddleware,
    api_key_scheme,
    default_allowed_hosts,
)
from clipsift.server.service import Service

if TYPE_CHECKING:
    from clipsift.index.index import Index
    from clipsift.models.base import ClipModel

log = logging.getLogger("clipsift.server")
STATIC_DIR = Path(__file__).resolve().parent / "static"
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
_MAX_FORM_PART = 64 * 1024  # one text field of a multipart form (a caption is <= 16 KB)


def _error_responses(settings: ServerSettings) -> dict:
    """The error statuses every /v1 route may answer (401 only when a key is set)."""
    codes = [400, 404, 408, 413, 422, 503, 504]
    if settings.api_key is not None:
        codes.append(401)
    return {code: {"model": ErrorResponse} for code in sorted(codes)}


def _open(index_path: str | os.PathLike | None, model: ClipModel | str | None
          ) -> tuple[ClipModel, Index | None]:
    """Load the model and open the index (read-only use; the model must match it)."""
    from clipsift.models import load

    if index_path is None:
        loaded = model if model is not None and not isinstance(model, str) else load(model)
        return loaded, None
    from clipsift.index.index import Index

    index = Index(index_path, model, create=False)
    return index.model, index


def create_app(index_path: str | os.PathLike | None, model: ClipModel | str | None = None,
               settings: ServerSettings | None = None) -> FastAPI:
    """Build the app over one index (or None: embed/classify only) and one model.

    Args:
        index_path: an index file or name; None serves without search.
        model: a loaded ClipModel or a model name; None uses the index's recorded model
            (or the default model without an index).
        settings: limits and switches; defaults are safe (loopback, no CORS, no URL fetch).
    Raises:
        UsageError: no index at the path, or bad settings.
        ModelMismatch: `model` is not the model the index was built with.
    """
    settings = settings or ServerSettings()
    loaded, index = _open(index_path, model)
    metrics = Metrics()
    service = Service(loaded, index, settings, metrics)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        service.start()
        yield
        service.stop()  # the index stays open: the app may be started again (tests do)

    app = FastAPIOffline(  # /docs assets served from the package, not a CDN
        title="clipsift", version=__version__, lifespan=lifespan,
        description="Search, embed and classify images with a CLIP-family model. "
        "Safe by default: loopback only unless an API key is set; no URL fetching unless "
        "enabled; every request validated and size-limited.",
        form_limits={"max_fields": SCHEMA_MAX_CAPTIONS + 16, "max_files": settings.max_images,
                     "max_part_size": _MAX_FORM_PART},
    )
    app.state.service = service
    app.state.metrics = metrics
    _add_routes(app, settings, metrics)
    _add_error_handlers(app)
    _add_middleware(app, settings, metrics)
    return app


def _add_routes(app: FastAPI, settings: ServerSettings, metrics: Metrics) -> None:
    from clipsift.server.routes import build_router

    # the key is checked by ApiKeyMiddleware; this only declares it in the OpenAPI document
    deps = [Depends(api_key_scheme)] if settings.api_key is not None else []
    app.include_router(build_router(settings), dependencies=deps,
                       responses=_error_responses(settings))

    @app.get("/metrics", include_in_schema=False, dependencies=deps)
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def _error(status: int, code: str, detail: str, headers: dict | None = None,
           **extra: object) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail, **extra}, status_code=status,
                        headers=headers)


_STATUS = (  # most specific first
    (NotFound, 404, "not_found"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (ImageError, 422, "bad_image"),
    (Overloaded, 503, "overloaded"),
    (QueryError, 422, "invalid_query"),
    (UsageError, 400, "bad_request"),
    (ClipsiftError, 400, "bad_request"),
)


def _body_error(exc: StarletteHTTPException) -> tuple[int, str, str] | None:
    """The documented status of a body the parsers refused (FastAPI/Starlette say 400)."""
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, MultiPartException):
        message = cause.message
        if message.startswith("Too many") or "exceeded maximum size" in message:
            return 413, "payload_too_large", f"multipart form over a limit: {message}"
        return 422, "invalid_request", f"malformed multipart form: {message}"
    if isinstance(cause, UnicodeDecodeError):
        return 422, "invalid_request", f"the request body is not valid UTF-8 ({cause.reason} " \
                                       f"at byte {cause.start})"
    if isinstance(cause, RecursionError):
        return 422, "invalid_request", "the JSON body is nested too deeply"
    return None


def _add_error_handlers(app: FastAPI) -> None:
    async def library_error(_request: Request, exc: Exception) -> JSONResponse:
        for cls, status, code in _STATUS:
            if isinstance(exc, cls):
                headers = {"Retry-After": "1"} if status == 503 else None
                return _error(status, code, str(exc), headers)
        return _error(400, "bad_request", str(exc))

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        errors = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
                   "type": str(e.get("type", ""))}
                  for e in exc.errors()]  # type: ignore[attr-defined]
        summary = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in errors[:5])
        return _error(422, "invalid_request", summary or "invalid request", errors=errors)

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 304:
            return Response(status_code=304, headers=exc.headers)
        if exc.status_code == 400 and (known := _body_error(exc)) is not None:
            return _error(*known)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), exc.headers)

    async def index_error(request: Request, exc: Exception) -> JSONResponse:
        log.error("index not readable on %s %s: %s", request.method, request.url.path, exc)
        return _error(503, "index_unavailable", f"the index cannot be read ({exc}); see "
                      "/v1/health and the server log", {"Retry-After": "5"})

    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal", "internal server error; see the server log")

    app.add_exception_handler(ClipsiftError, library_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(sqlite3.Error, index_error)
    app.add_exception_handler(Exception, internal_error)


def _add_middleware(app: FastAPI, settings: ServerSettings, metrics: Metrics) -> None:
    # add_middleware wraps: the last one added is the outermost.
    app.add_middleware(TimeoutMiddleware, seconds=settings.request_timeout_s)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes,
                       read_timeout=settings.body_timeout_s)
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                           allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "X-API-Key", "Authorization"],
                           max_age=600)
    hosts = settings.allowed_hosts
    if hosts is None:
        hosts = default_allowed_hosts(settings.api_key, settings.host)
    if hosts is not None:
        app.add_middleware(HostCheckMiddleware, allowed=hosts)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
