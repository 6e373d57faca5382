"""Request and response models of the HTTP API (pydantic); they are the OpenAPI schema.

Every request body is validated against these before any handler runs: unknown fields,
wrong types, out-of-range numbers and oversized lists get a 422 naming the field. Types
are strict: `"k": "5"`, `"k": true` and `"plain": "yes"` are refused, not coerced. Numbers
in paths, query strings and form fields must be plain ASCII digits (`1_0`, `٣`, ` 5` are
refused). `request_models(settings)` binds the limits a server runs with (k, texts per
request, images per request) into the models, so the OpenAPI document states the limits
the server applies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    create_model,
    model_validator,
)

from clipsift.index.query import MAX_ITEM_ID
from clipsift.server.config import (
    SCHEMA_MAX_CAPTIONS,
    SCHEMA_MAX_IMAGES,
    SCHEMA_MAX_K,
    SCHEMA_MAX_LABELS,
    SCHEMA_MAX_QUERY_CHARS,
    SCHEMA_MAX_TEMPLATES,
    SCHEMA_MAX_TEXT_CHARS,
    SCHEMA_MAX_TEXTS,
    ServerSettings,
)

_ASCII_INT = re.compile(r"[0-9]{1,19}")
_ASCII_FLOAT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,3})?")


def _ascii_int(value: Any) -> Any:
    """Path/query/form numbers arrive as text: accept plain ASCII digits only."""
    if isinstance(value, str) and not _ASCII_INT.fullmatch(value):
        raise ValueError("expected a whole number written with ASCII digits 0-9")
    return value


def _ascii_float(value: Any) -> Any:
    """A form number (e.g. a threshold): ASCII decimal notation only (no nan, inf, 1_0)."""
    if isinstance(value, str) and not _ASCII_FLOAT.fullmatch(value):
        raise ValueError("expected a decimal number such as 0.25")
    return value


#: put after `Path(...)`, `Query(...)` or `Form(...)` in `Annotated[int, ...]`
AsciiInt = BeforeValidator(_ascii_int)
AsciiFloat = BeforeValidator(_ascii_float)


def _clean_text(value: str) -> str:
    """Refuse text that cannot be encoded as UTF-8 (lone surrogates) or holds NUL."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as ex:
        raise ValueError("text is not valid Unicode (lone surrogate)") from ex
    if "\x00" in value:
        raise ValueError("text contains a NUL character")
    return value


def _template(value: str) -> str:
    """A template must pass clipsift's one template check (else 422 naming it)."""
    from clipsift.errors import UsageError
    from clipsift.zeroshot.templates import parse_template

    try:
        parse_template(value)
    except UsageError as ex:
        raise ValueError(str(ex)) from None
    return value


_Clean = AfterValidator(_clean_text)
Text = Annotated[str, Field(min_length=1, max_length=SCHEMA_MAX_TEXT_CHARS), _Clean]
Label = Annotated[str, Field(min_length=1, max_length=200), _Clean]
Template = Annotated[str, Field(min_length=1, max_length=300), _Clean,
                     AfterValidator(_template)]
QueryText = Annotated[str, Field(
    min_length=1, max_length=SCHEMA_MAX_QUERY_CHARS,
    description='Text, or the query language: "beach" - "people", 2:sunset, id:42.'), _Clean]
K = Annotated[int, Field(ge=1, le=SCHEMA_MAX_K, description="How many results to return.")]
Threshold = Annotated[float | None, Field(
    ge=-1.0, le=1.0, description="Drop results whose cosine score is below this.")]
TemplateSet = Literal["simple", "imagenet80"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


# ---- inputs -----------------------------------------------------------------------------
class ImageInput(_Strict):
    """An image given inline as base64 (optionally a data: URL), or as a URL to fetch
    (only when the server runs with --allow-url-fetch)."""

    data: str | None = Field(None, min_length=1, description="Base64 image bytes, or a "
                             "data:image/...;base64,... URL.")
    url: str | None = Field(None, min_length=1, max_length=2048,
                            description="http(s) URL (needs --allow-url-fetch).")

    @model_validator(mode="after")
    def _one_source(self) -> ImageInput:
        if (self.data is None) == (self.url is None):
            raise ValueError("give exactly one of 'data' (base64) or 'url'")
        return self


class EmbedTextsRequest(_Strict):
    texts: list[Text] = Field(min_length=1, max_length=SCHEMA_MAX_TEXTS)


class EmbedImagesRequest(_Strict):
    images: list[ImageInput] = Field(min_length=1, max_length=SCHEMA_MAX_IMAGES)


class ClassifyRequest(_Strict):
    image: ImageInput
    labels: list[Label] = Field(min_length=1, max_length=SCHEMA_MAX_LABELS)
    templates: list[Template] | None = Field(
        None, max_length=SCHEMA_MAX_TEMPLATES,
        description="Prompt templates with one '{}' for the label (ensembled).")
    template_set: TemplateSet | None = Field(None, description="A named template set.")
    top_k: int | None = Field(None, ge=1, le=SCHEMA_MAX_LABELS)


class TextSearchRequest(_Strict):
    query: QueryText
    k: K = 20
    threshold: Threshold = None
    plain: bool = Field(False, description="Treat the query as plain text (no operators).")


class ImageSearchRequest(_Strict):
    image: ImageInput
    k: K = 20
    threshold: Threshold = None


class ItemSearchRequest(_Strict):
    id: int = Field(ge=1, le=MAX_ITEM_ID, description="An item id from earlier results.")
    k: K = 20
    threshold: Threshold = None
    include_self: bool = Field(False, description="Keep the item itself in the results.")


class CaptionsRequest(_Strict):
    image: ImageInput
    captions: list[Text] = Field(min_length=1, max_length=SCHEMA_MAX_CAPTIONS)
    k: K = 5
    threshold: Threshold = None


# ---- outputs ----------------------------------------------------------------------------
class EmbeddingsResponse(BaseModel):
    model: str
    dim: int
    embeddings: list[list[float]] = Field(description="One unit vector per input, in order.")


class LabelScoreOut(BaseModel):
    label: str
    probability: float
    score: float = Field(description="Cosine similarity between image and label prompt(s).")


class ClassifyResponse(BaseModel):
    model: str
    labels: list[LabelScoreOut]


PATH_BYTES = ("Base64 of the exact file name bytes, only when the name is not valid UTF-8 "
              "(then `path` shows it with \\xNN escapes); null otherwise.")


class HitOut(BaseModel):
    id: int
    name: str = Field(description="File name of the item.")
    path: str | None = Field(None, description="Item key (absent with --hide-paths).")
    path_bytes: str | None = Field(None, description=PATH_BYTES)
    score: float
    thumbnail: str = Field(description="URL of the item's thumbnail.")


class SearchResponse(BaseModel):
    hits: list[HitOut]
    took_ms: float


class CaptionHitOut(BaseModel):
    line: int = Field(description="1-based position of the caption in the request.")
    text: str
    score: float


class CaptionsResponse(BaseModel):
    hits: list[CaptionHitOut]


class ItemOut(BaseModel):
    id: int
    name: str
    path: str | None = None
    path_bytes: str | None = Field(None, description=PATH_BYTES)
    width: int | None = None
    height: int | None = None
    thumbnail: str


class IndexOut(BaseModel):
    items: int
    model: str
    dim: int


class HealthResponse(BaseModel):
    status: Literal["ok"]
    checks: dict[str, str] = Field(description='Each part of the server ("model", '
                                   '"index", "batcher:text"...) and "ok".')
    version: str
    model: str
    dim: int
    index: IndexOut | None
    batching: bool
    auth: bool = Field(description="Whether requests need an API key.")
    url_fetch: bool
    max_k: int
    max_upload_bytes: int


class ErrorResponse(BaseModel):
    error: str = Field(description="A short machine-readable code.")
    detail: str = Field(description="What went wrong and how to fix it.")


class UnhealthyResponse(ErrorResponse):
    status: Literal["down"]
    checks: dict[str, str] = Field(description='Each part of the server and "ok" or why '
                                   "it is down.")


# ---- the limits of one server -----------------------------------------------------------
@dataclass(frozen=True)
class RequestModels:
    """The request models of one app, with its settings' limits bound in."""

    embed_texts: type[EmbedTextsRequest]
    embed_images: type[EmbedImagesRequest]
    classify: type[ClassifyRequest]
    text_search: type[TextSearchRequest]
    image_search: type[ImageSearchRequest]
    item_search: type[ItemSearchRequest]
    captions: type[CaptionsRequest]


def request_models(settings: ServerSettings) -> RequestModels:
    """Subclasses of the request models whose k / texts / images limits are the server's.

    Args:
        settings: the server's settings (their limits are at most the SCHEMA_MAX_* caps).
    Returns:
        The models the routes validate against (and the OpenAPI document shows).
    """
    k_field = Annotated[int, Field(ge=1, le=settings.max_k,
                                   description="How many results to return.")]

    def bound(base: type[BaseModel], **fields: Any) -> Any:
        return create_model(base.__name__, __base__=base, __doc__=base.__doc__, **fields)

    return RequestModels(
        embed_texts=bound(EmbedTextsRequest, texts=(
            list[Text], Field(min_length=1, max_length=settings.max_texts))),
        embed_images=bound(EmbedImagesRequest, images=(
            list[ImageInput], Field(min_length=1, max_length=settings.max_images))),
        classify=ClassifyRequest,
        text_search=bound(TextSearchRequest, k=(k_field, 20)),
        image_search=bound(ImageSearchRequest, k=(k_field, 20)),
        item_search=bound(ItemSearchRequest, k=(k_field, 20)),
        captions=bound(CaptionsRequest, k=(k_field, 5)),
    )
