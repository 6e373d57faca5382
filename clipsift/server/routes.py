"""The /v1 endpoints. Handlers validate (schemas), call `Service`, and shape responses.

`build_router(settings)` makes the router of one app: its request models carry the
server's limits (k, texts and images per request), so validation and the OpenAPI document
say the same thing. Each image-taking endpoint comes in two forms: JSON with a base64 (or
URL) image, and `/upload` with a multipart file, for browsers and `curl -F`.

(No `from __future__ import annotations` here: FastAPI reads the handlers' annotations,
which name the per-app request models, when the routes are declared.)
"""

import re
import time
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from clipsift import __version__
from clipsift.errors import UsageError
from clipsift.index.query import MAX_ITEM_ID, Hit
from clipsift.inputs.keys import json_fields
from clipsift.server import schemas as S
from clipsift.server.config import ServerSettings
from clipsift.server.service import Service, item_name

SizeParam = Annotated[int, Query(ge=16, le=1024, description="Longest side in pixels."),
                      S.AsciiInt]
ItemId = Annotated[int, Path(ge=1, le=MAX_ITEM_ID, description="An item id from search "
                             "results (ASCII digits)."), S.AsciiInt]
FormThreshold = Annotated[float | None, Form(ge=-1.0, le=1.0), S.AsciiFloat]
Upload = Annotated[UploadFile, File(description="An image file.")]
_ETAG = r'\s*(?:W/)?"[\x21\x23-\x7e\x80-\xff]*"\s*'
_ETAG_LIST = re.compile(rf"{_ETAG}(?:,{_ETAG})*")
_ETAG_OPAQUE = re.compile(r'"[^"]*"')


def get_service(request: Request) -> Service:
    return request.app.state.service


Svc = Annotated[Service, Depends(get_service)]


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match header matches `etag` (RFC 9110 13.1.2): "*", or a
    comma-separated list of entity tags compared weakly (`W/"x"` matches `"x"`). A
    malformed header matches nothing (the full response is sent)."""
    value = if_none_match.strip()
    if value == "*":
        return True
    if not _ETAG_LIST.fullmatch(value):
        return False
    return etag.removeprefix("W/") in _ETAG_OPAQUE.findall(value)


def build_router(settings: ServerSettings) -> APIRouter:
    """The /v1 router of one app, with `settings`' limits in its request models."""
    models = S.request_models(settings)
    form_k = Annotated[int, Form(ge=1, le=settings.max_k), S.AsciiInt]
    router = APIRouter(prefix="/v1")
    _health_route(router)
    _embed_routes(router, models, settings)
    _classify_routes(router)
    _search_routes(router, models, form_k)
    _caption_routes(router, models, form_k)
    _item_routes(router)
    return router


def _label(upload: UploadFile, fallback: str = "upload") -> str:
    name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1][:100]
    return name or fallback


async def _read_upload(svc: Service, upload: UploadFile, name: str | None = None) -> bytes:
    label = name or _label(upload)
    if upload.size is not None:
        svc.check_image_size(upload.size, label)
    data = await upload.read()
    svc.check_image_size(len(data), label)
    if not data:
        raise UsageError(f"{label}: the uploaded file is empty")
    return data


def _hits(request: Request, svc: Service, found: list[Hit], start: float
          ) -> S.SearchResponse:
    root = request.scope.get("root_path", "")
    hide = svc.settings.hide_paths
    hits = [S.HitOut(id=h.id, name=item_name(h.path),
                     **({} if hide else json_fields("path", h.path)),
                     score=h.score, thumbnail=f"{root}/v1/thumbnail/{h.id}")
            for h in found]
    return S.SearchResponse(hits=hits, took_ms=round((time.perf_counter() - start) * 1e3, 2))


# ---- health -----------------------------------------------------------------------------
def _health_route(router: APIRouter) -> None:
    @router.get("/health", response_model=S.HealthResponse, tags=["service"], responses={
        503: {"model": S.UnhealthyResponse, "description": "A part of the server is down."}})
    async def health(svc: Svc) -> S.HealthResponse | JSONResponse:
        """What this server runs (model, index size, limits) and whether each part works:
        the model, every batcher thread, the index. 503 names the parts that are down."""
        report = await anyio.to_thread.run_sync(svc.health)
        if not report.ok:
            body = S.UnhealthyResponse(error="unhealthy", detail=report.problems(),
                                       status="down", checks=report.checks)
            return JSONResponse(body.model_dump(), status_code=503,
                                headers={"Retry-After": "5", "Cache-Control": "no-store"})
        idx = None
        if svc.index is not None:
            ident = svc.index.identity
            idx = S.IndexOut(items=await svc.index_size(), model=ident.model, dim=ident.dim)
        s = svc.settings
        return S.HealthResponse(
            status="ok", checks=report.checks, version=__version__, model=svc.model.name,
            dim=svc.model.dim, index=idx, batching=s.batching, auth=s.api_key is not None,
            url_fetch=s.allow_url_fetch, max_k=s.max_k, max_upload_bytes=s.max_image_bytes)


# ---- embeddings -------------------------------------------------------------------------
def _embed_routes(router: APIRouter, models: S.RequestModels, settings: ServerSettings
                  ) -> None:
    files_param = Annotated[list[UploadFile], File(
        min_length=1, max_length=settings.max_images, description="Image files.")]

    @router.post("/embed/texts", response_model=S.EmbeddingsResponse, tags=["embed"])
    async def embed_texts(body: models.embed_texts, svc: Svc) -> S.EmbeddingsResponse:
        """Embed texts (long texts are chunked and averaged, never cut)."""
        vecs = await svc.embed_texts(body.texts)
        return S.EmbeddingsResponse(model=svc.model.name, dim=svc.model.dim,
                                    embeddings=vecs.tolist())

    @router.post("/embed/images", response_model=S.EmbeddingsResponse, tags=["embed"])
    async def embed_images(body: models.embed_images, svc: Svc) -> S.EmbeddingsResponse:
        """Embed images given as base64 (or URLs, with --allow-url-fetch)."""
        data = [await svc.image_bytes(im, f"image {i + 1}") for i, im in enumerate(body.images)]
        vecs = await svc.embed_images(data)
        return S.EmbeddingsResponse(model=svc.model.name, dim=svc.model.dim,
                                    embeddings=vecs.tolist())

    @router.post("/embed/images/upload", response_model=S.EmbeddingsResponse, tags=["embed"])
    async def embed_images_upload(svc: Svc, files: files_param) -> S.EmbeddingsResponse:
        """Embed uploaded image files (multipart field `files`, repeatable)."""
        names = [_label(f, f"image {i + 1}") for i, f in enumerate(files)]
        data = [await _read_upload(svc, f, n) for f, n in zip(files, names, strict=True)]
        vecs = await svc.embed_images(data, names)
        return S.EmbeddingsResponse(model=svc.model.name, dim=svc.model.dim,
                                    embeddings=vecs.tolist())


# ---- classification ---------------------------------------------------------------------
async def _classify(svc: Service, image: bytes, labels: list[str], templates: list[str] | None,
                    template_set: str | None, top_k: int | None, name: str = "image"
                    ) -> S.ClassifyResponse:
    vector = (await svc.embed_images([image], [name]))[0]  # a bad image fails first, fast
    weights = await svc.class_weights(labels, templates, template_set)
    probs, cos = svc.probabilities(weights, vector)
    order = sorted(range(len(labels)), key=lambda i: -probs[i])[: top_k or len(labels)]
    return S.ClassifyResponse(model=svc.model.name, labels=[
        S.LabelScoreOut(label=labels[i], probability=round(float(probs[i]), 6),
                        score=round(float(cos[i]), 6)) for i in order])


def _classify_routes(router: APIRouter) -> None:
    @router.post("/classify", response_model=S.ClassifyResponse, tags=["classify"])
    async def classify(body: S.ClassifyRequest, svc: Svc) -> S.ClassifyResponse:
        """Zero-shot classification of one image against labels (and prompt templates)."""
        image = await svc.image_bytes(body.image)
        return await _classify(svc, image, body.labels, body.templates, body.template_set,
                               body.top_k)

    @router.post("/classify/upload", response_model=S.ClassifyResponse, tags=["classify"])
    async def classify_upload(
        svc: Svc, file: Upload,
        labels: Annotated[list[S.Label], Form(min_length=1, max_length=S.SCHEMA_MAX_LABELS,
                                              description="Repeat once per label.")],
        templates: Annotated[list[S.Template] | None,
                             Form(max_length=S.SCHEMA_MAX_TEMPLATES)] = None,
        template_set: Annotated[S.TemplateSet | None, Form()] = None,
        top_k: Annotated[int | None, Form(ge=1, le=S.SCHEMA_MAX_LABELS), S.AsciiInt] = None,
    ) -> S.ClassifyResponse:
        """Zero-shot classification of an uploaded image (multipart: file, labels...)."""
        image = await _read_upload(svc, file)
        return await _classify(svc, image, labels, templates, template_set, top_k,
                               _label(file))


# ---- search -----------------------------------------------------------------------------
def _search_routes(router: APIRouter, models: S.RequestModels, form_k: object) -> None:
    @router.post("/search/text", response_model=S.SearchResponse, tags=["search"])
    async def search_text(body: models.text_search, svc: Svc, request: Request
                          ) -> S.SearchResponse:
        """Search the index by text (or the query language: "beach" - "people", id:42)."""
        start = time.perf_counter()
        vector = await svc.text_query_vector(body.query, body.plain)
        found = await svc.search_vector(vector, body.k, body.threshold)
        return _hits(request, svc, found, start)

    @router.post("/search/image", response_model=S.SearchResponse, tags=["search"])
    async def search_image(body: models.image_search, svc: Svc, request: Request
                           ) -> S.SearchResponse:
        """Search the index by an example image (base64, or URL with --allow-url-fetch)."""
        start = time.perf_counter()
        svc.need_index()
        vector = (await svc.embed_images([await svc.image_bytes(body.image)]))[0]
        found = await svc.search_vector(vector, body.k, body.threshold)
        return _hits(request, svc, found, start)

    @router.post("/search/image/upload", response_model=S.SearchResponse, tags=["search"])
    async def search_image_upload(svc: Svc, request: Request, file: Upload,
                                  k: form_k = 20,  # type: ignore[valid-type]
                                  threshold: FormThreshold = None) -> S.SearchResponse:
        """Search the index by an uploaded example image (multipart: file, k, threshold)."""
        start = time.perf_counter()
        svc.need_index()
        vector = (await svc.embed_images([await _read_upload(svc, file)], [_label(file)]))[0]
        found = await svc.search_vector(vector, k, threshold)
        return _hits(request, svc, found, start)

    @router.post("/search/item", response_model=S.SearchResponse, tags=["search"])
    async def search_item(body: models.item_search, svc: Svc, request: Request
                          ) -> S.SearchResponse:
        """More like this: search by an indexed item's stored vector."""
        start = time.perf_counter()
        vector = await svc.stored_vector(body.id)
        extra = 0 if body.include_self else 1
        found = await svc.search_vector(vector, min(body.k + extra, svc.settings.max_k),
                                        body.threshold)
        if not body.include_self:
            found = [h for h in found if h.id != body.id][: body.k]
        return _hits(request, svc, found, start)


# ---- image -> text ----------------------------------------------------------------------
def _caption_routes(router: APIRouter, models: S.RequestModels, form_k: object) -> None:
    @router.post("/image-to-text", response_model=S.CaptionsResponse, tags=["search"])
    async def image_to_text(body: models.captions, svc: Svc) -> S.CaptionsResponse:
        """Rank the given captions by how well they describe the image."""
        vector = (await svc.embed_images([await svc.image_bytes(body.image)]))[0]
        hits = await svc.captions(vector, body.captions, body.k, body.threshold)
        return S.CaptionsResponse(hits=[S.CaptionHitOut(line=h.line, text=h.text,
                                                        score=h.score) for h in hits])

    @router.post("/image-to-text/upload", response_model=S.CaptionsResponse, tags=["search"])
    async def image_to_text_upload(
        svc: Svc, file: Upload,
        captions: Annotated[list[S.Text], Form(
            min_length=1, max_length=S.SCHEMA_MAX_CAPTIONS, description="Repeat once per "
            "caption.")],
        k: form_k = 5, threshold: FormThreshold = None,  # type: ignore[valid-type]
    ) -> S.CaptionsResponse:
        """Rank captions for an uploaded image (multipart: file, captions..., k)."""
        vector = (await svc.embed_images([await _read_upload(svc, file)], [_label(file)]))[0]
        hits = await svc.captions(vector, captions, k, threshold)
        return S.CaptionsResponse(hits=[S.CaptionHitOut(line=h.line, text=h.text,
                                                        score=h.score) for h in hits])


# ---- items ------------------------------------------------------------------------------
def _item_routes(router: APIRouter) -> None:
    @router.get("/items/{item_id}", response_model=S.ItemOut, tags=["items"])
    async def get_item(item_id: ItemId, svc: Svc, request: Request) -> S.ItemOut:
        """Catalog facts of an indexed item."""
        rec = await svc.item(item_id)
        root = request.scope.get("root_path", "")
        return S.ItemOut(id=rec.id, name=item_name(rec.key),
                         **({} if svc.settings.hide_paths else json_fields("path", rec.key)),
                         width=rec.width, height=rec.height,
                         thumbnail=f"{root}/v1/thumbnail/{rec.id}")

    @router.get("/thumbnail/{item_id}", tags=["items"], response_class=Response, responses={
        200: {"content": {"image/jpeg": {}}, "description": "A JPEG thumbnail."},
        304: {"description": "Not modified (If-None-Match matched)."}})
    async def thumbnail(item_id: ItemId, svc: Svc, request: Request, size: SizeParam = 256
                        ) -> Response:
        """JPEG thumbnail of an indexed image, by id only (cacheable; ETag)."""
        data, etag = await svc.thumbnail(item_id, size)
        headers = {"ETag": etag, "Cache-Control": "private, max-age=86400",
                   "X-Content-Type-Options": "nosniff"}
        if etag_matches(", ".join(request.headers.getlist("if-none-match")), etag):
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/jpeg", headers=headers)
