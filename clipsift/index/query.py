"""Search queries: parsing, combining term embeddings, typed hits, image→text ranking.

Query language (one string, as typed on the command line):

    a dog running on grass          one text term
    "beach" - "people"              beach, minus people
    2:sunset + 0.5:"red sky"        weighted terms (weight before a colon)
    image:query.jpg - "text"        an image file as a term (also `img:`)
    id:42                           the stored vector of indexed item 42
    text:"image: a caption"         force a text term

`+` and `-` are operators only when surrounded by spaces or touching a quote, so
"well-lit room" stays one term; text inside double quotes is never parsed. The query
vector is the L2-normalised sum of sign x weight x (unit term vector), as rclip does;
weights are at most MAX_WEIGHT in size.

This module is the one place where a query becomes a vector: `plan` turns a query string,
a plain text and/or an example image into what must be embedded or read (a `QueryPlan`),
and `QueryPlan.combine` makes the query vector from those vectors. `Index.search` runs a
plan with the index's model; the server runs the same plan through its batchers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from clipsift.errors import QueryError, UsageError

if TYPE_CHECKING:
    from PIL import Image

    ImageInput = str | os.PathLike | bytes | Image.Image

TermKind = Literal["text", "image", "id"]
_KINDS: dict[str, TermKind] = {"text": "text", "image": "image", "img": "image", "id": "id"}
_WEIGHT = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)\s*:\s*")
_KIND = re.compile(r"^(text|image|img|id):", re.IGNORECASE)
_ITEM_ID = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() accepts "²" and "٣"
MAX_ITEM_ID = 2**63 - 1  # SQLite's INTEGER (rowid) range
MAX_WEIGHT = 1000.0  # |weight| of a term; larger ones are typos, and overflow float16 sums


@dataclass(frozen=True)
class Hit:
    """One search result: an indexed item.

    Attributes:
        id: the item's id in the index (stable; also its FAISS id).
        path: the item's key (absolute path, or "shard.tar::member").
        score: cosine similarity to the query vector (higher is closer).
    """

    id: int
    path: str
    score: float


@dataclass(frozen=True)
class CaptionHit:
    """One image→text result: a caption from the list given by the user.

    Attributes:
        line: 1-based position of the caption in the list.
        text: the caption.
        score: cosine similarity between the image and the caption.
    """

    line: int
    text: str
    score: float


@dataclass(frozen=True)
class Term:
    """One part of a query: `weight` x the embedding of `value` (negative to subtract)."""

    value: str
    weight: float = 1.0
    kind: TermKind = "text"


@dataclass(frozen=True)
class Query:
    """A parsed query: terms combined by a weighted sum. Build with `parse_query`."""

    terms: tuple[Term, ...] = field(default_factory=tuple)

    def __str__(self) -> str:
        parts = []
        for t in self.terms:
            sign = "-" if t.weight < 0 else "+"
            prefix = "" if t.kind == "text" else f"{t.kind}:"
            parts.append(f'{sign} {abs(t.weight):g}:{prefix}"{t.value}"')
        return " ".join(parts).removeprefix("+ ")


def _split_signed(text: str) -> list[tuple[int, str]]:
    """Cut a query at top-level + and - operators -> [(sign, segment)]."""
    segments: list[tuple[int, str]] = []
    sign, buf, quoted = 1, "", False
    for i, ch in enumerate(text):
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch in "+-" and _is_operator(text[i + 1 :], buf):
            if buf.strip():  # a binary operator closes the current term
                segments.append((sign, buf))
                sign = 1
            sign = -sign if ch == "-" else sign
            buf = ""
            continue
        buf += ch
    if quoted:
        raise QueryError(f"unbalanced double quote in query {text!r}")
    if not buf.strip():
        raise QueryError(f"query {text!r} ends with an operator or is empty; add a term")
    segments.append((sign, buf))
    return segments


def _is_operator(rest: str, before: str) -> bool:
    """+/- is an operator between spaces or quotes ("a - b", '"a"-"b"', '- 2:b')."""
    before_ok = not before.strip() or before[-1] in ' "'
    after_ok = not rest or rest[0] in ' "' or bool(_WEIGHT.match(rest))
    return before_ok and after_ok


def _parse_term(segment: str, sign: int) -> Term:
    seg = segment.strip()
    weight = 1.0
    if m := _WEIGHT.match(seg):
        weight = float(m.group(1))
        seg = seg[m.end():].strip()
    kind: TermKind = "text"
    if m := _KIND.match(seg):
        kind = _KINDS[m.group(1).lower()]
        seg = seg[m.end():].strip()
    value = " ".join(seg.replace('"', " ").split()) if kind == "text" else seg.strip('"').strip()
    if not value:
        raise QueryError(f"empty term {segment.strip()!r} in query")
    if kind == "id":
        check_item_id(value)
    return Term(value, sign * weight, kind)


def check_item_id(value: str) -> int:
    """The item id an `id:` term names: ASCII digits within SQLite's integer range.

    Raises:
        QueryError: anything else (letters, "²", "٣", a 19-digit number over 2**63 - 1).
    """
    if not _ITEM_ID.fullmatch(value) or int(value) > MAX_ITEM_ID:
        raise QueryError(f"id term needs a number (an item id from search results, ASCII "
                         f"digits up to {MAX_ITEM_ID}), got {value!r}")
    return int(value)


def parse_query(text: str) -> Query:
    """Parse a query string (see the module docstring for the syntax).

    Raises:
        QueryError: empty query, unbalanced quote, empty term, or a bad `id:` value.

    Example:
        >>> parse_query('"beach" - "people"').terms
        (Term(value='beach', weight=1.0, kind='text'), Term(value='people', weight=-1.0, ...))
    """
    if not text or not text.strip():
        raise QueryError("empty query; give some text, e.g. 'a dog on a beach'")
    return Query(tuple(_parse_term(seg, sign) for sign, seg in _split_signed(text)))


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Weighted sum of unit term vectors [T, D] -> unit query vector [D].

    Raises:
        UsageError: the terms cancel out (e.g. "a" - "a").
    """
    units = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    total = (np.asarray(weights, np.float32)[:, None] * units).sum(axis=0)  # [D]
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise UsageError("the query terms cancel each other out; change a weight or a term")
    return (total / norm).astype(np.float32)


@dataclass(frozen=True)
class QueryPlan:
    """What a query needs before it is one vector: texts to embed, images to embed, stored
    vectors to read, and one weight per term. Build with `plan`; finish with `combine`.

    Attributes:
        texts: texts for the text tower, in term order.
        images: images for the image tower: file paths (`~` expanded), bytes or PIL images.
        ids: item ids whose stored vectors are read.
        weights: one per term, in term order, sign included (|w| <= MAX_WEIGHT).
        sources: per term, (kind, position in `texts`, `images` or `ids`).
    """

    texts: tuple[str, ...]
    images: tuple[Any, ...]
    ids: tuple[int, ...]
    weights: tuple[float, ...]
    sources: tuple[tuple[TermKind, int], ...]

    def combine(self, texts: np.ndarray | None = None, images: np.ndarray | None = None,
                stored: np.ndarray | None = None) -> np.ndarray:
        """The query vector float32 [D] from the term vectors: `texts` [len(texts), D],
        `images` [len(images), D], `stored` [len(ids), D], each in the plan's order.

        Raises:
            UsageError: the terms cancel out (e.g. "a" - "a").
        """
        parts = {"text": texts, "image": images, "id": stored}
        rows = []
        for kind, pos in self.sources:
            vectors = parts[kind]
            if vectors is None:
                raise ValueError(f"the plan has {kind} terms: pass their vectors")
            rows.append(vectors[pos])
        return combine(np.stack(rows).astype(np.float32), self.weights)


def plan(query: str | Query | None = None, *, text: str | None = None,
         image: ImageInput | None = None) -> QueryPlan:
    """Plan a search: `query` in the query language, `text` taken as it is (never parsed),
    `image` an example image (path, bytes or PIL image); all given are summed, weight 1.

    Raises:
        QueryError: nothing to search for, a query that does not parse, a bad `id:` value,
            or a weight over MAX_WEIGHT.

    Example:
        >>> p = plan('"beach" - "people"', image="~/sea.jpg")
        >>> p.texts, p.images, p.weights
        (('beach', 'people'), ('/home/me/sea.jpg',), (1.0, -1.0, 1.0))
    """
    terms = list(parse_query(query).terms if isinstance(query, str)
                 else query.terms if query is not None else ())
    if text is not None:
        if not text.strip():
            raise QueryError("empty query; give some text, e.g. 'a dog on a beach'")
        terms.append(Term(text))
    lists: dict[TermKind, list] = {"text": [], "image": [], "id": []}
    sources: list[tuple[TermKind, int]] = []
    for t in terms:
        value: Any = t.value
        if t.kind == "image":
            value = os.path.expanduser(t.value)
        elif t.kind == "id":
            value = check_item_id(t.value)
        sources.append((t.kind, len(lists[t.kind])))
        lists[t.kind].append(value)
    if image is not None:
        src = (os.path.expanduser(os.fspath(image)) if isinstance(image, str | os.PathLike)
               else image)  # bytes or a PIL image
        sources.append(("image", len(lists["image"])))
        lists["image"].append(src)
    weights = tuple([t.weight for t in terms] + ([1.0] if image is not None else []))
    if not weights:
        raise QueryError("nothing to search for: give a query, a text or an image")
    for w in weights:
        if abs(w) > MAX_WEIGHT:
            raise QueryError(f"a term weight is {abs(w):g}, over {MAX_WEIGHT:g}; use weights "
                             "like 2: or 0.5:")
    return QueryPlan(tuple(lists["text"]), tuple(lists["image"]), tuple(lists["id"]),
                     weights, tuple(sources))


def query_vector(
    query: Query,
    encode_texts: Callable[[list[str]], np.ndarray],
    encode_images: Callable[[list[Any]], np.ndarray],
    stored: Callable[[list[int]], np.ndarray],
) -> np.ndarray:
    """Embed each term with the matching encoder and combine them -> float32 [D]
    (`plan` + `QueryPlan.combine` with blocking encoders).

    Image terms are file paths (`~` expanded); id terms are item ids looked up by `stored`.
    """
    p = plan(query)
    return p.combine(encode_texts(list(p.texts)) if p.texts else None,
                     encode_images(list(p.images)) if p.images else None,
                     stored(list(p.ids)) if p.ids else None)


def read_captions(path: str | Path) -> list[str]:
    """Captions from a text file: one per line; blank lines and `#` comments skipped.

    Raises:
        UsageError: the file cannot be read or holds no caption.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as ex:
        raise UsageError(f"cannot read captions file {path}: {ex}") from ex
    captions = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not captions:
        raise UsageError(f"captions file {path} has no captions (one per line expected)")
    return captions


def rank_captions(
    image_vector: np.ndarray, caption_vectors: np.ndarray, captions: Sequence[str], k: int,
    threshold: float | None = None,
) -> list[CaptionHit]:
    """Rank captions [N, D] against one image vector [D] -> best `k` as CaptionHits."""
    scores = caption_vectors @ image_vector  # [N]
    order = np.argsort(-scores, kind="stable")[:k]
    hits = [CaptionHit(int(i) + 1, captions[int(i)], float(scores[i])) for i in order]
    return [h for h in hits if threshold is None or h.score >= threshold]
