"""Server settings: one frozen dataclass with every limit, checked when it is built."""

from __future__ import annotations

from dataclasses import dataclass

from clipsift.errors import UsageError

#: Hard caps baked into the request schemas (settings may lower them, never raise them).
SCHEMA_MAX_K = 1000
SCHEMA_MAX_TEXTS = 256
SCHEMA_MAX_TEXT_CHARS = 4000
SCHEMA_MAX_IMAGES = 64
SCHEMA_MAX_LABELS = 1000
SCHEMA_MAX_TEMPLATES = 100
SCHEMA_MAX_CAPTIONS = 2000
SCHEMA_MAX_QUERY_CHARS = 2000


@dataclass(frozen=True)
class ServerSettings:
    """Limits and switches of one server (see `clipsift serve --help` for the CLI names).

    Attributes:
        host: the address the server binds (used to decide which Host headers to accept).
        api_key: when set, every /v1 and /metrics request needs it (X-API-Key header or
            `Authorization: Bearer KEY`); required to bind a non-loopback address.
        cors_origins: origins allowed to call the API from a browser; empty = CORS off.
            "*" is refused.
        allowed_hosts: Host header names accepted; None = loopback names when there is no
            API key (blocks DNS-rebinding), anything when a key is set.
        allow_url_fetch: let JSON image inputs name an http(s) URL the server downloads.
        allow_private_urls: let fetched URLs resolve to loopback/private addresses
            (off: a fetch cannot reach services behind the server).
        batching: micro-batch concurrent requests into one forward pass.
        batch_window_ms: how long the first request of a batch waits for company.
        max_batch: items per forward pass (texts, images or search queries).
        max_queue: items waiting per batcher before new requests get 503.
        request_timeout_s: a request not answered by then gets 504.
        max_body_bytes: larger request bodies get 413.
        max_image_bytes: larger single images get 413.
        max_pixels: decompression-bomb cap (width x height) for uploaded images.
        max_decoded_bytes: cap on one image's decoded buffer (width x height x bytes per
            pixel of its mode: 4 for RGB and 32-bit float, 2 for 16-bit), checked on the
            header; the default admits every image under `max_pixels` (8000x8000 float).
        max_k: largest k for searches.
        max_texts / max_images: largest batch a single embed request may carry.
        max_prompts: labels x templates cap for one classification.
        hide_paths: leave server file paths out of search results (names only).
        url_fetch_timeout_s / url_fetch_max_bytes: limits of URL fetching.
        thumbnail_cache: thumbnails kept in memory (LRU).
        decode_concurrency: images decoded at once, uploads and thumbnails together.
        decode_memory_bytes: estimated peak memory of the decodes running at once (decoded
            buffer + RGB result + the preprocess's RGB copy, from each header): photos
            decode side by side (a 12 MP JPEG counts 144 MB), huge ones (an 8000x8000
            float TIFF: 832 MB) one at a time; measured peaks: docs/benchmarks-server.md.
        search_threads: FAISS (OpenMP) threads for index searches, process-wide; None keeps
            FAISS's default (all cores). 1 avoids OpenMP oversubscription on a busy
            machine; batched searches are efficient on one thread.
        max_request_tokens: most text tokens one request may ask to embed (captions, texts,
            label prompts; a long text costs all its tokens), so one request cannot hold the
            model for long; more gets 413.
        text_cache_bytes: memory for cached text embeddings (repeated captions, labels and
            queries are not encoded again); 0 turns the cache off.
        header_timeout_s: a connection must deliver a complete request head within this
            (idle new connections and slow-header clients are closed; `clipsift serve`).
        body_timeout_s: a request body must arrive within this once its head is in (408).
        keep_alive_s: an idle keep-alive connection is closed after this.
        max_connections: open connections (and requests in progress) before new requests
            get 503 (uvicorn's `limit_concurrency`).
    """

    host: str = "127.0.0.1"
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] | None = None
    allow_url_fetch: bool = False
    allow_private_urls: bool = False
    batching: bool = True
    batch_window_ms: float = 5.0
    max_batch: int = 64
    max_queue: int = 4096
    request_timeout_s: float = 30.0
    max_body_bytes: int = 32 * 1024 * 1024
    max_image_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 64_000_000
    max_decoded_bytes: int = 256_000_000
    max_k: int = 200
    max_texts: int = 256
    max_images: int = 32
    max_prompts: int = 4096
    hide_paths: bool = False
    url_fetch_timeout_s: float = 10.0
    url_fetch_max_bytes: int = 10 * 1024 * 1024
    thumbnail_cache: int = 512
    decode_concurrency: int = 4
    decode_memory_bytes: int = 1024 * 1024 * 1024
    search_threads: int | None = None
    max_request_tokens: int = 150_000
    text_cache_bytes: int = 64 * 1024 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 5.0
    max_connections: int = 512

    def __post_init__(self) -> None:
        from clipsift.server.security import check_api_key, check_bind

        check_api_key(self.api_key)
        check_bind(self.host, self.api_key)  # the same rule for the CLI and for Python use
        if "*" in self.cors_origins:
            raise UsageError("CORS origin '*' is refused: list the exact origins "
                             "(e.g. --cors-origin https://app.example.com)")
        for origin in self.cors_origins:
            if not origin.startswith(("http://", "https://")) or origin.endswith("/"):
                raise UsageError(f"bad CORS origin {origin!r}: give scheme://host[:port], "
                                 "no trailing slash, e.g. http://localhost:3000")
        self._check_numbers()

    def _check_numbers(self) -> None:
        positive = ("max_batch", "max_queue", "max_body_bytes", "max_image_bytes",
                    "max_pixels", "max_decoded_bytes", "max_k", "max_texts", "max_images",
                    "max_prompts", "decode_concurrency", "decode_memory_bytes",
                    "max_request_tokens", "max_connections")
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.search_threads is not None and self.search_threads < 1:
            raise UsageError(f"search_threads must be at least 1, got {self.search_threads}")
        if self.batch_window_ms < 0 or self.text_cache_bytes < 0:
            raise UsageError("batch_window_ms and text_cache_bytes must be >= 0")
        for name in ("request_timeout_s", "header_timeout_s", "body_timeout_s",
                     "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be over 0 seconds, got {getattr(self, name)}")
        caps = (("max_k", SCHEMA_MAX_K), ("max_texts", SCHEMA_MAX_TEXTS),
                ("max_images", SCHEMA_MAX_IMAGES))
        for name, cap in caps:
            if getattr(self, name) > cap:
                raise UsageError(f"{name} is at most {cap}, got {getattr(self, name)}")
