"""Typed errors raised by the clipsift library.

Every error carries a message a user can act on: what failed, the offending value,
and what to do about it. Apps (CLI, server) turn them into output and exit codes.
"""

from __future__ import annotations


class ClipsiftError(Exception):
    """Base class of every error clipsift raises on purpose."""

    exit_code: int = 1


class UsageError(ClipsiftError):
    """The caller passed a bad argument or option (a bad label file, an unknown template set)."""

    exit_code = 2


class ModelNotAvailable(ClipsiftError):
    """A model name could not be resolved to weights on this machine or its network.

    Attributes:
        model: the name the user asked for.
        looked_in: the places that were checked, in order.
    """

    exit_code = 2

    def __init__(self, model: str, looked_in: list[str], reason: str = "") -> None:
        self.model = model
        self.looked_in = list(looked_in)
        self.reason = reason
        places = "\n".join(f"  - {p}" for p in self.looked_in) or "  (nowhere)"
        why = f" ({reason})" if reason else ""
        msg = (
            f"Model {model!r} is not available{why}.\n"
            f"Looked in:\n{places}\n"
            "Fixes:\n"
            "  - pass a local checkpoint: --model ARCH:/path/to/file.pt|.bin|.safetensors "
            "or --model hf:/path/to/folder or --model /path/to/clipsift-model-folder\n"
            "  - point the cache at a folder that holds the weights: "
            "set CLIPSIFT_CACHE (or HF_HOME / HF_HUB_CACHE)\n"
            "  - use the bundled offline model: --model mini"
        )
        super().__init__(msg)


class UnknownModel(UsageError):
    """The model name does not name any known architecture/tag."""


class CheckpointError(ClipsiftError):
    """A checkpoint file exists but cannot be loaded safely or does not fit the architecture."""

    exit_code = 2


class ImageError(ClipsiftError):
    """One image could not be opened; `reason` says why. Bulk jobs record it and go on."""

    def __init__(self, source: str, reason: str) -> None:
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class StoreError(ClipsiftError):
    """Base class for index/store problems (a file that is not an index, a newer schema)."""


class IndexInUse(StoreError):
    """Another process is writing to the index."""


class NotAnIndex(StoreError):
    """A file given as an index is not one (another SQLite database, an empty file...).
    It is refused before anything is written to it."""

    exit_code = 2


class ModelMismatch(StoreError):
    """An index was built with another model than the one requested."""

    exit_code = 2


class EngineError(ClipsiftError):
    """An engine cannot run at all (decode workers cannot load the model's preprocess, a
    Ray cluster refuses the connection): a setup problem, not bad images; the run stops."""

    exit_code = 2


class TrainingError(ClipsiftError):
    """Training data or options are unusable."""

    exit_code = 2


# ---- errors the server maps to HTTP statuses ---------------------------------------------
class NotFound(ClipsiftError):
    """The item, or the index itself, does not exist (HTTP 404)."""


class ItemNotFound(NotFound):
    """An item id (an `id:` query term, a "more like this" request) names no indexed item
    with a vector: HTTP 404, exit 2 on the command line."""

    exit_code = 2


class PayloadTooLarge(ClipsiftError):
    """An image or list is over a server limit (HTTP 413)."""


class Overloaded(ClipsiftError):
    """Too much work is queued; the client should retry later (HTTP 503)."""


class QueryError(UsageError):
    """A search query does not parse (bad syntax, a bad `id:` value); HTTP 422."""


class FetchError(UsageError):
    """A URL could not be fetched (bad scheme, blocked address, too large, timeout...)."""
