"""Text embeddings for the server: a cache, a token budget per request, fair scheduling.

- Cache: text vectors are kept in an LRU bounded by bytes (`text_cache_bytes`), keyed by
  the model and the exact text, so a caption list or label set sent again is not encoded
  again (nor are repeated queries).
- Budget: a request's texts are measured in tokens, the model's own count (a 4,000-
  character caption is ~10 chunks of the context length, each one forward row), and a
  request over `max_request_tokens` gets 413 before any model work. Counting stops as soon
  as the budget is passed, so refusing costs little.
- Scheduling: texts to encode are cut into jobs of at most `max_batch` chunks. A request
  that fits in one job is interactive; a longer one goes to the text batcher's background
  lane one job at a time, so a text search waits for at most one such job, and two long
  requests take turns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import numpy as np

from clipsift.errors import PayloadTooLarge
from clipsift.server.thumbs import LRU

if TYPE_CHECKING:
    from clipsift.models.base import ClipModel
    from clipsift.server.batcher import MicroBatcher
    from clipsift.server.config import ServerSettings

_INLINE_CHARS = 4000  # count tokens of requests up to this size on the event loop


@dataclass(frozen=True)
class _Cached:
    vector: np.ndarray  # float32 [D], read-only
    tokens: int
    size: int  # bytes held: vector + text


class TextEncoder:
    """Embed texts for the server through its text batcher, with cache and budget.

    Args:
        model: the server's model (its tokenizer counts tokens; its name keys the cache).
        settings: `max_request_tokens`, `text_cache_bytes` and `max_batch` are used.
    """

    def __init__(self, model: ClipModel, settings: ServerSettings) -> None:
        self.model = model
        self.budget = settings.max_request_tokens
        self.job_cost = settings.max_batch
        self.chunk_tokens = max(1, model.context_length - 2)  # as `encode_texts` splits
        self.cache: LRU[tuple[str, str], _Cached] = LRU(settings.text_cache_bytes,
                                                        weigh=lambda c: c.size)

    async def encode(self, texts: Sequence[str], batcher: MicroBatcher) -> np.ndarray:
        """Unit vectors float32 [N, D] for `texts`, in order.

        Raises:
            PayloadTooLarge: the texts hold more than `max_request_tokens` tokens.
        """
        found = {t: c for t in dict.fromkeys(texts)
                 if (c := self.cache.get((self.model.name, t))) is not None}
        todo = [t for t in dict.fromkeys(texts) if t not in found]
        spent = sum(c.tokens for c in found.values())
        if sum(map(len, todo)) <= _INLINE_CHARS:
            tokens = self._count(todo, spent, len(texts))
        else:
            tokens = await anyio.to_thread.run_sync(self._count, todo, spent, len(texts))
        vectors = {t: c.vector for t, c in found.items()}
        vectors.update(await self._run(todo, tokens, batcher))
        if not texts:
            return np.zeros((0, self.model.dim), np.float32)
        return np.stack([vectors[t] for t in texts])

    def _count(self, todo: list[str], spent: int, n_texts: int) -> list[int]:
        """Token counts of `todo`; stops with 413 once `spent` + counts pass the budget."""
        counts = []
        for text in todo:
            counts.append(self.model.count_tokens(text))
            spent += counts[-1]
            if spent > self.budget:
                raise PayloadTooLarge(
                    f"these {n_texts} texts hold over {self.budget} tokens (the model reads "
                    f"texts in chunks of {self.chunk_tokens}); this server embeds at most "
                    f"{self.budget} tokens per request: send fewer or shorter texts")
        return counts

    async def _run(self, todo: list[str], tokens: list[int], batcher: MicroBatcher
                   ) -> dict[str, np.ndarray]:
        costs = [max(1, math.ceil(n / self.chunk_tokens)) for n in tokens]
        jobs = _cut(list(range(len(todo))), costs, self.job_cost)
        background = len(jobs) > 1
        out: dict[str, np.ndarray] = {}
        for job in jobs:  # one at a time: long requests take turns with each other
            texts = [todo[i] for i in job]
            vecs = await batcher.submit(texts, [costs[i] for i in job], background)
            for i, text, vec in zip(job, texts, vecs, strict=True):
                vec = np.asarray(vec, np.float32)
                vec.setflags(write=False)
                out[text] = vec
                self.cache.put((self.model.name, text),
                               _Cached(vec, tokens[i], vec.nbytes + 2 * len(text) + 64))
        return out


def _cut(items: list[int], costs: list[int], limit: int) -> list[list[int]]:
    """Consecutive groups of `items` whose costs sum to at most `limit` (an item costlier
    than `limit` forms a group alone)."""
    groups: list[list[int]] = []
    size = 0
    for item in items:
        if not groups or size + costs[item] > limit:
            groups.append([])
            size = 0
        groups[-1].append(item)
        size += costs[item]
    return groups
