"""Contrastive training and fine-tuning of CLIP models on image–caption pairs.

Example:
    >>> from clipsift.train import TrainConfig, train
    >>> result = train(TrainConfig(data="pairs.parquet", model="ViT-B-32", output="run"))
    >>> result.output          # a clipsift model folder: clipsift.load("run") works
    PosixPath('run')

Importing this package is cheap; torch and open_clip load when `train` runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from clipsift.train.config import TrainConfig

if TYPE_CHECKING:
    from clipsift.train.loop import TrainEvent, TrainResult
    from clipsift.train.metrics import EpochMetrics, RetrievalMetrics

__all__ = [
    "EpochMetrics", "RetrievalMetrics", "TrainConfig", "TrainEvent", "TrainResult",
    "interpolate_weights", "train",
]

_LAZY = {
    "train": "clipsift.train.loop", "TrainEvent": "clipsift.train.loop",
    "TrainResult": "clipsift.train.loop", "EpochMetrics": "clipsift.train.metrics",
    "RetrievalMetrics": "clipsift.train.metrics", "interpolate_weights": "clipsift.train.wise",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipsift.train' has no attribute {name!r}")
