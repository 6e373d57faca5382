"""clipsift: put CLIP-family models to work on real image collections.

    >>> import clipsift
    >>> m = clipsift.load("mini")                      # or "ViT-B-32:openai", "hf:..."
    >>> m.encode_texts(["a dog"]).shape                # float32, unit rows
    >>> clipsift.classify(m, ["photo.jpg"], ["cat", "dog"], templates=["a photo of a {}."])

Heavy modules (torch, open_clip) load on first use, so importing clipsift is cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time the names load lazily
    from clipsift.embed import embed_to_parquet, similarity
    from clipsift.index.index import Index
    from clipsift.index.query import Hit
    from clipsift.inputs.images import open_image
    from clipsift.models import load
    from clipsift.models.base import ClipModel
    from clipsift.zeroshot.classifier import (
        Classification,
        LabelScore,
        ZeroShotClassifier,
        classify,
        iter_classify,
    )

__version__ = "0.1.0"

_EXPORTS = {
    "load": "clipsift.models",
    "ClipModel": "clipsift.models.base",
    "classify": "clipsift.zeroshot.classifier",
    "iter_classify": "clipsift.zeroshot.classifier",
    "Classification": "clipsift.zeroshot.classifier",
    "LabelScore": "clipsift.zeroshot.classifier",
    "ZeroShotClassifier": "clipsift.zeroshot.classifier",
    "embed_to_parquet": "clipsift.embed",
    "similarity": "clipsift.embed",
    "open_image": "clipsift.inputs.images",
    "Index": "clipsift.index.index",
    "Hit": "clipsift.index.query",
}

__all__ = [  # noqa: RUF022 - the order of _EXPORTS
    "__version__", "load", "ClipModel", "classify", "iter_classify", "Classification",
    "LabelScore", "ZeroShotClassifier", "embed_to_parquet", "similarity", "open_image",
    "Index", "Hit",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'clipsift' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
