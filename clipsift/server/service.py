"""What the HTTP handlers call: one model and one (optional) index behind micro-batchers.

Three batchers do the heavy work, each in its own thread:
    text    texts -> one `encode_texts` forward pass (through `texts.TextEncoder`: cache,
            token budget per request, long lists in the background lane)
    image   preprocessed pixels -> one `encode_pixels` forward pass
    search  query vectors -> one FAISS search over the index (+ one catalog read)
Image decoding runs in worker threads, exactly (whole image, as the bulk pipeline decodes a
file), a few at a time and within a memory budget (`decode_concurrency`,
`decode_memory_bytes`; uploads and thumbnails share both: clipsift.server.decoding), before
the pixels join a batch, so a bad upload fails alone.
The index is used through `Index` only (its store is never touched here); every call holds
`index_lock` (one SQLite connection and one FAISS index are shared). Queries are planned
by `clipsift.index.query.plan`, as `Index.search` plans them; only the embedding goes
through the batchers. `health()` checks every part (`health.check_service`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import numpy as np
import torch

from clipsift.errors import ClipsiftError, NotFound, PayloadTooLarge, UsageError
from clipsift.index.query import CaptionHit, Hit, plan, rank_captions
from clipsift.inputs.images import decode_cost, open_image
from clipsift.inputs.keys import key_name, printable
from clipsift.server.batcher import MicroBatcher
from clipsift.server.config import ServerSettings
from clipsift.server.decoding import DecodeBudget, return_freed_pixels_to_the_system
from clipsift.server.health import HealthReport, check_service, file_identity
from clipsift.server.texts import TextEncoder
from clipsift.server.thumbs import LRU, Thumbnails
from clipsift.zeroshot.classes import pool, prompts_for, templates_per_class
from clipsift.zeroshot.templates import resolve_templates

if TYPE_CHECKING:
    from clipsift.index.index import Index
    from clipsift.models.base import ClipModel
    from clipsift.server.metrics import Metrics
    from clipsift.server.schemas import ImageInput

_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)




@dataclass(frozen=True)
class ItemRecord:
    """An indexed item's catalog facts."""

    id: int
    key: str
    hash: str
    width: int | None
    height: int | None


def item_name(key: str) -> str:
    """The file name shown for a catalog key (a path or "shard.tar::member")."""
    return printable(key_name(key))


class Service:
    """Model + index operations for the server, batched and bounded by `settings`."""

    def __init__(self, model: ClipModel, index: Index | None, settings: ServerSettings,
                 metrics: Metrics) -> None:
        self.model = model
        self.index = index
        self.settings = settings
        self.index_lock = threading.Lock()
        self.decode_limiter = anyio.CapacityLimiter(settings.decode_concurrency)
        self.decode_budget = DecodeBudget(settings.decode_memory_bytes)
        return_freed_pixels_to_the_system()
        self.thumbs = Thumbnails(settings.thumbnail_cache, settings.max_pixels,
                                 max_bytes=settings.max_decoded_bytes,
                                 budget=self.decode_budget)
        self._class_weights: LRU[tuple, np.ndarray] = LRU(64)
        self.text_encoder = TextEncoder(model, settings)
        self.index_identity = file_identity(index.path) if index is not None else None

        self._metrics = metrics
        self._faiss_threads_set = threading.local()
        self._start_batchers()
        if index is not None:
            self._faiss_threads()
            with self.index_lock:
                index.refresh()  # build/load FAISS now, not on the first request

    def _faiss_threads(self) -> None:
        """Apply `search_threads` in the calling thread: OpenMP's thread count is a
        per-thread setting, so the search worker must set it itself."""
        n = self.settings.search_threads
        if n is not None and not getattr(self._faiss_threads_set, "done", False):
            import faiss

            faiss.omp_set_num_threads(n)
            self._faiss_threads_set.done = True

    def _start_batchers(self) -> None:
        s = self.settings

        def batcher(fn, name: str) -> MicroBatcher:
            return MicroBatcher(fn, name=name, window_ms=s.batch_window_ms,
                                max_batch=s.max_batch, max_queue=s.max_queue,
                                enabled=s.batching, on_batch=self._metrics.batch_observer(name))

        self.texts = batcher(self._encode_texts, "text")
        self.images = batcher(self._encode_pixels, "image")
        self.searches = batcher(self._search_many, "search") if self.index is not None else None
        self.running = True

    def start(self) -> None:
        """Restart the batcher threads after `stop` (an app may be started several times)."""
        if not self.running:
            self._start_batchers()

    def stop(self) -> None:
        """Stop the batcher threads (queued work finishes first); `start` restarts them."""
        for b in self.batchers():
            b.close()
        self.running = False

    def batchers(self) -> list[MicroBatcher]:
        """The batchers this service runs (text, image, and search with an index)."""
        return [b for b in (self.texts, self.images, self.searches) if b is not None]

    def health(self) -> HealthReport:
        """Check the model, every batcher thread and the index (blocking: run in a thread)."""
        return check_service(self)

    def close(self) -> None:
        """Stop the batchers and close the index."""
        self.stop()
        if self.index is not None:
            with self.index_lock:
                self.index.close()

    # ---- batch functions (worker threads) -----------------------------------------------
    def _encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        return list(self.model.encode_texts(texts))

    def _encode_pixels(self, pixels: list[torch.Tensor]) -> list[np.ndarray]:
        return list(self.model.encode_pixels(torch.stack(pixels)))  # [N, 3, H, W] -> [N, D]

    def _search_many(self, queries: list[tuple[np.ndarray, int]]) -> list[list[Hit]]:
        index = self.need_index()
        self._faiss_threads()
        k_max = max(k for _, k in queries)
        matrix = np.stack([v for v, _ in queries]).astype(np.float32)  # [Q, D]
        with self.index_lock:
            found = index.search_many(matrix, k_max)
        return [hits[:k] for (_, k), hits in zip(queries, found, strict=True)]

    # ---- embedding ----------------------------------------------------------------------
    async def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Unit text vectors float32 [N, D], through the text batcher."""
        if len(texts) > self.settings.max_texts:
            raise PayloadTooLarge(f"{len(texts)} texts in one request; this server takes at "
                                  f"most {self.settings.max_texts}")
        return await self.text_encoder.encode(list(texts), self.texts)

    async def embed_images(self, images: Sequence[bytes], names: Sequence[str] | None = None
                           ) -> np.ndarray:
        """Unit image vectors float32 [N, D] for encoded image bytes (decoded here).

        `names` label the images in errors (upload file names); default "image N".
        """
        if len(images) > self.settings.max_images:
            raise PayloadTooLarge(f"{len(images)} images in one request; this server takes "
                                  f"at most {self.settings.max_images}")
        labels = list(names or [f"image {i + 1}" for i in range(len(images))])
        pixels = await asyncio.gather(*(self._pixels(data, label)  # decoded in parallel
                                        for data, label in zip(images, labels, strict=True)))
        return np.stack(await self.images.submit(pixels))

    async def _pixels(self, data: bytes, name: str) -> torch.Tensor:
        self.check_image_size(len(data), name)

        def decode() -> torch.Tensor:  # exact: the same pixels as a file in the index
            with self.decode_budget.reserve(decode_cost(data, rgb_copies=2)):
                image = open_image(data, max_pixels=self.settings.max_pixels,
                                   max_bytes=self.settings.max_decoded_bytes, name=name)
                return self.model.preprocess(image)

        return await anyio.to_thread.run_sync(decode, limiter=self.decode_limiter)

    def check_image_size(self, size: int, name: str) -> None:
        if size > self.settings.max_image_bytes:
            raise PayloadTooLarge(f"{name} is {size} bytes; the limit is "
                                  f"{self.settings.max_image_bytes} bytes per image")

    async def image_bytes(self, image: ImageInput, name: str = "image") -> bytes:
        """The bytes of a JSON image input: base64 decoded, or fetched when allowed."""
        if image.url is not None:
            return await self._fetch(image.url)
        text = "".join(_DATA_URL.sub("", (image.data or "").strip(), count=1).split())
        self.check_image_size(len(text) * 3 // 4 - 3, name)  # before decoding anything
        try:
            alt = b"-_" if ("-" in text or "_" in text) else None
            data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=alt, validate=True)
        except (binascii.Error, ValueError) as ex:
            raise UsageError(f"{name}: 'data' is not valid base64 ({ex})") from ex
        if not data:
            raise UsageError(f"{name}: 'data' is empty")
        self.check_image_size(len(data), name)
        return data

    async def _fetch(self, url: str) -> bytes:
        s = self.settings
        if not s.allow_url_fetch:
            raise UsageError("URL inputs are disabled on this server (start it with "
                             "--allow-url-fetch); send the image as base64 'data' or upload it")
        from clipsift.server.fetch import fetch_bytes

        return await anyio.to_thread.run_sync(lambda: fetch_bytes(
            url, max_bytes=min(s.url_fetch_max_bytes, s.max_image_bytes),
            timeout=s.url_fetch_timeout_s, allow_private=s.allow_private_urls))

    # ---- search -------------------------------------------------------------------------
    def need_index(self) -> Index:
        if self.index is None:
            raise NotFound("this server has no index; start it with `clipsift serve INDEX` "
                           "to search (embedding and classification work without one)")
        return self.index

    def _check_k(self, k: int) -> None:
        if k > self.settings.max_k:
            raise UsageError(f"k={k} is over this server's limit of {self.settings.max_k}")

    async def search_vector(self, vector: np.ndarray, k: int,
                            threshold: float | None) -> list[Hit]:
        self.need_index()
        self._check_k(k)
        assert self.searches is not None
        (found,) = await self.searches.submit([(vector, k)])
        return [h for h in found if threshold is None or h.score >= threshold]

    async def text_query_vector(self, text: str, plain: bool) -> np.ndarray:
        """Embed a query (plain text or the query language) -> unit vector [D], planned as
        `Index.search` plans it (`clipsift.index.query.plan`: terms, ids, weight limit)."""
        p = plan(text=text) if plain else plan(text)
        if p.images:
            raise UsageError("image: terms name files on the server and are not accepted "
                             "over HTTP; upload the image to /v1/search/image instead, or "
                             "quote the text (text:\"image: ...\")")
        texts = await self.embed_texts(p.texts) if p.texts else None
        stored = await self.stored_vectors(p.ids) if p.ids else None
        return p.combine(texts, None, stored)

    async def index_size(self) -> int:
        """Number of searchable items (0 without an index)."""
        index = self.index
        if index is None:
            return 0

        def count() -> int:
            with self.index_lock:
                return len(index)

        return await anyio.to_thread.run_sync(count)

    async def stored_vector(self, item_id: int) -> np.ndarray:
        """The stored vector of an indexed item -> float32 [D] (404 when there is none)."""
        return (await self.stored_vectors([item_id]))[0]

    async def stored_vectors(self, ids: Sequence[int]) -> np.ndarray:
        index = self.need_index()

        def read() -> np.ndarray:
            with self.index_lock:
                return index.stored_vectors(ids)

        return await anyio.to_thread.run_sync(read)

    async def item(self, item_id: int) -> ItemRecord:
        """Catalog facts of an indexed (status ok) item; NotFound otherwise."""
        index = self.need_index()

        def read() -> ItemRecord:
            with self.index_lock:
                row = index.item(item_id)
            return ItemRecord(row.id, row.key, row.hash or "", row.width, row.height)

        return await anyio.to_thread.run_sync(read)

    async def thumbnail(self, item_id: int, size: int) -> tuple[bytes, str]:
        """(JPEG bytes, ETag) of an indexed item's thumbnail."""
        rec = await self.item(item_id)

        def make() -> bytes:
            try:
                return self.thumbs.get(rec.id, rec.key, rec.hash, size)
            except ClipsiftError as ex:
                raise NotFound(f"item {item_id}: no thumbnail ({ex})") from ex

        data = await anyio.to_thread.run_sync(make, limiter=self.decode_limiter)
        return data, f'"{rec.hash[:16]}-{rec.id}-{size}"'

    # ---- classification and captions ----------------------------------------------------
    async def class_weights(self, labels: Sequence[str], templates: Sequence[str] | None,
                            template_set: str | None) -> np.ndarray:
        """Unit label vectors [C, D] (prompt ensembles), cached per label/template set.

        Templates are validated and pooled by `clipsift.zeroshot` (as the CLI and library
        do); this adds the server's limits, batched encoding and cache.
        """
        key = (tuple(labels), tuple(templates or ()), template_set)
        cached = self._class_weights.get(key)
        if cached is not None:
            return cached
        if len(set(labels)) != len(labels):
            raise UsageError("duplicate labels; give each label once")
        temps = resolve_templates(templates, template_set)
        per_class = templates_per_class(temps)
        n_prompts = len(labels) * per_class
        if n_prompts > self.settings.max_prompts:
            raise PayloadTooLarge(f"{len(labels)} labels x {len(temps or [])} templates = "
                                  f"{n_prompts} prompts; the limit is "
                                  f"{self.settings.max_prompts}")
        emb = await self._embed_all(prompts_for(labels, temps))  # [C * T, D]
        weights = pool(emb, len(labels), per_class)  # [C, D]
        if weights.size <= 262_144:  # cache small label sets only (<= 1 MB each)
            self._class_weights.put(key, weights)
        return weights

    async def _embed_all(self, texts: list[str]) -> np.ndarray:
        """Embed more texts than /embed/texts takes (label prompts, captions): the token
        budget still applies; long lists run in the batcher's background lane."""
        return await self.text_encoder.encode(texts, self.texts)

    def probabilities(self, weights: np.ndarray, vector: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(softmax probabilities [C], cosines [C]) of one image vector against labels."""
        cos = weights @ vector  # [C]
        logits = float(self.model.logit_scale) * cos
        p = np.exp(logits - logits.max())
        return p / p.sum(), cos

    async def captions(self, vector: np.ndarray, captions: Sequence[str], k: int,
                       threshold: float | None) -> list[CaptionHit]:
        cap_vecs = await self._embed_all(list(captions))  # [N, D]
        return rank_captions(vector, cap_vecs, list(captions), k, threshold)
