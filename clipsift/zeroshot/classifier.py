"""Zero-shot classification (the `classify` verb): label probabilities, as in CLIP's demo.

Named zeroshot.py so that `clipsift.classify` stays the function, not this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from clipsift.zeroshot.classes import class_embeddings

if TYPE_CHECKING:
    from clipsift.engines import Engine


@dataclass(frozen=True)
class LabelScore:
    """One label's result: softmax probability and raw cosine similarity."""

    label: str
    probability: float
    score: float


@dataclass
class Classification:
    """Labels for one image, most probable first; `error` is set when the image failed."""

    source: str
    labels: list[LabelScore] = field(default_factory=list)
    error: str | None = None

    @property
    def top(self) -> LabelScore | None:
        return self.labels[0] if self.labels else None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.source, "error": self.error}
        return {"path": self.source, "labels": [
            {"label": s.label, "probability": s.probability, "score": s.score}
            for s in self.labels]}


class ZeroShotClassifier:
    """Class text embeddings computed once, applied to any number of image embeddings.

    Example:
        >>> clf = ZeroShotClassifier(model, ["cat", "dog"], ["a photo of a {}."])
        >>> clf.classify_vectors(model.encode_images(["pet.jpg"]))[0][0].label
        'dog'
    """

    def __init__(self, model, labels: Sequence[str], templates: Sequence[str] | None = None):
        self.labels = list(labels)
        self.logit_scale = float(model.logit_scale)
        self.weights = class_embeddings(model, self.labels, templates)  # [C, D]

    def probabilities(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities [N, C], cosines [N, C]) for unit image vectors [N, D]."""
        cos = vectors.astype(np.float32) @ self.weights.T
        logits = self.logit_scale * cos
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True), cos

    def classify_vectors(self, vectors: np.ndarray, top_k: int | None = None
                         ) -> list[list[LabelScore]]:
        probs, cos = self.probabilities(vectors)
        k = len(self.labels) if top_k is None else max(1, min(top_k, len(self.labels)))
        out = []
        for prow, crow in zip(probs, cos, strict=True):
            order = np.argsort(-prow, kind="stable")[:k]
            out.append([LabelScore(self.labels[i], float(prow[i]), float(crow[i])) for i in order])
        return out


def classify(
    model,
    images: Iterable[str | Image.Image],
    labels: Sequence[str],
    templates: Sequence[str] | None = None,
    *,
    top_k: int | None = None,
    batch_size: int = 64,
    workers: int | None = None,
    fast_decode: bool = False,
    engine: Engine | None = None,
) -> list[Classification]:
    """Classify images zero-shot against `labels`.

    Args:
        model: a ClipModel (`clipsift.load(...)`).
        images: image paths, folders, globs (expanded) or PIL images.
        labels: class names.
        templates: prompt templates with `{}` (or `{c}`) for the label, several are
            ensembled; None uses labels as full prompts. A malformed template raises
            UsageError.
        top_k: keep only the k most probable labels per image.
        batch_size, workers, fast_decode: as for `clipsift.engines.local.embed_items`
            (fast_decode: large JPEG files decoded at reduced scale, approximate).
        engine: where image files are embedded (`clipsift.engines.make_engine`, e.g. Ray);
            None: a `LocalEngine` with `workers` and `fast_decode`.
    Returns:
        One Classification per image, in input order; failed images carry `error`, and so
        do folders that could not be listed ("cannot list folder: ...", after the images).
    """
    return list(iter_classify(model, images, labels, templates, top_k=top_k,
                              batch_size=batch_size, workers=workers,
                              fast_decode=fast_decode, engine=engine))


def iter_classify(model, images, labels, templates=None, *, top_k=None, batch_size=64,
                  workers=None, fast_decode=False,
                  engine: Engine | None = None) -> Iterator[Classification]:
    """Streaming form of `classify`: yields results batch by batch."""
    clf = ZeroShotClassifier(model, labels, templates)
    pil = [im for im in images] if not isinstance(images, list) else images
    if pil and all(isinstance(im, Image.Image) for im in pil):
        vecs = model.encode_images(pil, batch_size=batch_size)
        for i, ranked in enumerate(clf.classify_vectors(vecs, top_k)):
            yield Classification(f"<image {i}>", ranked)
        return
    from clipsift.engines import engine_or_local
    from clipsift.inputs.sources import Walk

    eng = engine_or_local(engine, workers, fast_decode)
    walk = Walk([str(p) for p in pil])
    for batch in eng.embed(model, iter(walk), batch_size=batch_size):
        good = [r for r in batch if r.vector is not None]
        ranked = clf.classify_vectors(np.stack([r.vector for r in good]), top_k) if good else []
        it = iter(ranked)
        for r in batch:
            yield (Classification(r.item.key, next(it)) if r.vector is not None
                   else Classification(r.item.key, error=r.error))
    for error in walk.errors:  # never skipped silently
        yield Classification(error.path, error=error.message)
