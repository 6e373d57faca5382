"""`clipsift serve`: the HTTP API and search page over one index (uvicorn)."""

from __future__ import annotations

from typing import Annotated

import typer

from clipsift.cli.common import ModelOpt

HeaderTimeoutOpt = Annotated[float, typer.Option(
    "--header-timeout", min=0.1, help="Seconds a connection has to send a complete "
    "request head (line + headers); slower or silent connections are closed.")]
BodyTimeoutOpt = Annotated[float, typer.Option(
    "--body-timeout", min=0.1, help="Seconds a request body has to arrive (408 after).")]
KeepAliveOpt = Annotated[float, typer.Option(
    "--keep-alive", min=0.1, help="Seconds an idle keep-alive connection stays open.")]
MaxConnectionsOpt = Annotated[int, typer.Option(
    "--max-connections", min=1, help="Open connections before new requests get 503.")]


def serve_cmd(
    index: Annotated[str | None, typer.Argument(
        help="Index file or name to search. Leave out to serve embed/classify only.")] = None,
    model: ModelOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind. Anything but "
                                      "loopback needs --api-key.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=0, max=65535)] = 8000,
    api_key: Annotated[str | None, typer.Option(
        "--api-key", envvar="CLIPSIFT_API_KEY",
        help="Require this key (X-API-Key header) on every API call. Prefer the "
        "CLIPSIFT_API_KEY variable: options are visible to other local users.")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option(
        "--cors-origin", help="Allow browser calls from this origin (repeatable); "
        "CORS is off without it.")] = None,
    allow_url_fetch: Annotated[bool, typer.Option(
        "--allow-url-fetch", help="Let JSON image inputs be http(s) URLs the server "
        "downloads (size-capped, timed out, public addresses only).")] = False,
    batching: Annotated[bool, typer.Option(
        "--batching/--no-batching", help="Micro-batch concurrent requests.")] = True,
    batch_window_ms: Annotated[float, typer.Option(
        "--batch-window-ms", min=0.0, max=1000.0,
        help="How long a request waits for others to share a forward pass.")] = 5.0,
    max_batch: Annotated[int, typer.Option("--max-batch", min=1, max=4096,
                                           help="Items per forward pass.")] = 64,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1,
                                           help="Seconds before a request gets 504.")] = 30.0,
    max_upload_mb: Annotated[float, typer.Option(
        "--max-upload-mb", min=0.1, help="Largest image upload (request bodies may be "
        "a little larger).")] = 20.0,
    search_threads: Annotated[int | None, typer.Option(
        "--search-threads", min=1, help="FAISS threads for searches (default: all "
        "cores; 1 suits a busy machine).")] = None,
    hide_paths: Annotated[bool, typer.Option(
        "--hide-paths", help="Show file names only, not server paths, in results.")] = False,
    header_timeout: HeaderTimeoutOpt = 10.0,
    body_timeout: BodyTimeoutOpt = 30.0,
    keep_alive: KeepAliveOpt = 5.0,
    max_connections: MaxConnectionsOpt = 512,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve the API (/v1, docs at /docs) and a search page (/) with uvicorn.

    Binds 127.0.0.1 by default. Binding any other address is refused unless an API key
    is set. Example: clipsift serve photos --model mini, then open http://127.0.0.1:8000
    """
    from clipsift.server.config import ServerSettings
    from clipsift.server.security import check_api_key, check_bind

    check_api_key(api_key)  # before loading anything
    check_bind(host, api_key)
    upload = int(max_upload_mb * 1024 * 1024)
    settings = ServerSettings(
        host=host, api_key=api_key, cors_origins=tuple(cors_origin or ()),
        allow_url_fetch=allow_url_fetch, batching=batching, batch_window_ms=batch_window_ms,
        max_batch=max_batch, request_timeout_s=timeout, max_image_bytes=upload,
        max_body_bytes=upload + 2 * 1024 * 1024, url_fetch_max_bytes=upload,
        hide_paths=hide_paths, search_threads=search_threads,
        header_timeout_s=header_timeout, body_timeout_s=body_timeout,
        keep_alive_s=keep_alive, max_connections=max_connections,
    )
    _run(index, model, settings, port, log_level)


def _run(index: str | None, model: str | None, settings, port: int, log_level: str) -> None:
    from clipsift.cli.output import notice
    from clipsift.server.app import create_app
    from clipsift.server.transport import serve

    app = create_app(index, model, settings)
    service = app.state.service
    if service.model.notice:
        notice(service.model.notice)
    items = f", {len(service.index)} items" if service.index is not None else ", no index"
    shown = f"[{settings.host}]" if ":" in settings.host else settings.host
    notice(f"clipsift: model {service.model.name}{items}; "
           f"open http://{shown}:{port}/ (API docs at /docs)"
           + ("; API key required" if settings.api_key else ""))
    serve(app, settings, port, log_level)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve_cmd)
