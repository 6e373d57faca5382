"""The records an index stores and returns: catalog rows, meta, problems, new items."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

STATUS_OK = "ok"
STATUS_ERROR = "error"
STATUS_STALE = "stale"


@dataclass(frozen=True)
class StoreMeta:
    """What an index records about itself."""

    model: str
    dim: int
    uuid: str
    created: float
    schema_version: int
    fingerprint: str | None = None  # JSON of clipsift.models.fingerprint.Fingerprint
    decode: str | None = None  # how images were decoded: "exact" / "fast"; None: not recorded


@dataclass(frozen=True)
class CatalogRow:
    """One catalog entry. `hash` is a blake2b hex digest of the item's bytes."""

    id: int
    key: str
    size: int
    mtime: float
    hash: str | None
    status: str
    error: str | None
    width: int | None
    height: int | None


@dataclass(frozen=True)
class Problem:
    """A folder or file a run could not read (its catalog entries were kept).

    Attributes:
        key: the folder or file path.
        kind: "folder" or "file".
        error: the reason, e.g. "cannot list folder: Permission denied".
        time: when it was last seen (seconds since the epoch).
    """

    key: str
    kind: str
    error: str
    time: float


@dataclass(frozen=True)
class NewItem:
    """Values written for one item; `vector` is float32/float16 [dim] or None for errors."""

    key: str
    size: int
    mtime: float
    hash: str | None
    vector: np.ndarray | None
    error: str | None = None
    width: int | None = None
    height: int | None = None


def content_hash(data: bytes) -> str:
    """blake2b-128 hex digest of an item's bytes (what rename detection compares)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def vector_blob(vec: np.ndarray) -> bytes:
    """float [dim] -> float16 little-endian bytes."""
    return np.asarray(vec, dtype="<f2").tobytes()
