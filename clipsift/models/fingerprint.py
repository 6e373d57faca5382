"""What made a set of vectors: a model's fingerprint (weights + preprocessing + tokenizer +
precision class), recorded with every stored vector (indexes, filter work folders, the
evaluation cache, Parquet files) so that vectors of two models never mix, whatever their
names.

Parts:
    weights     the architecture config and every tensor of the state dict (name, dtype,
                shape, bytes), so the same weights read from a `.pt`, a `.safetensors` or a
                wrapped checkpoint agree, and a retrained model (same name) does not;
    preprocess  image size, mean/std, resize mode and interpolation (or the HF image
                processor's settings);
    tokenizer   its class, vocabulary (and merges), cleaning and context length;
    precision   the precision class: `exact` for fp32 and fp32-onnx (the same numbers to
                1e-5), `bf16`, `fp16` and `int8` each on their own (they change the vectors;
                int8 by up to 1e-3 in cosine), so an int8 index never takes fp32 vectors.

Hashing the tensors of a ViT-B-32 (577 MB) takes 0.7 s on a shared 2-core CPU
(docs/benchmarks.md, bench/results/fingerprint.json), so it is lazy: `ClipModel.fingerprint`
computes it on first use (commands that store no vectors never pay), and the weights digest
is cached under `$CLIPSIFT_CACHE/fingerprints.json`, keyed by the checkpoint files' (path,
size, mtime, inode, device) and the architecture config: later loads only hash the
tokenizer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

#: Bumped when what goes into a fingerprint changes (every fingerprint changes with it).
RECIPE = "clipsift-fingerprint/1"
#: precision name -> precision class (precisions of one class give the same vectors)
PRECISION_CLASSES = {"fp32": "exact", "fp32-onnx": "exact", "bf16": "bf16", "fp16": "fp16",
                     "int8": "int8"}
#: the precision a model is loaded at to reproduce vectors of a class
CLASS_PRECISION = {"exact": "fp32", "bf16": "bf16", "fp16": "fp16", "int8": "int8"}
_CACHE_NAME = "fingerprints.json"
_CACHE_MAX = 512


def _hex(*parts: str) -> str:
    h = hashlib.blake2b(digest_size=16)
    for part in parts:
        h.update(part.encode("utf-8", "surrogateescape"))
        h.update(b"\x00")
    return h.hexdigest()


@dataclass(frozen=True)
class ModelParts:
    """The precision-independent parts of a fingerprint, as a backend computes them."""

    weights: str
    preprocess: str
    tokenizer: str
    source: str


@dataclass(frozen=True, eq=False)
class Fingerprint:
    """The identity of the vectors a model makes.

    Two fingerprints are equal when their `digest`s are: same weights, preprocessing,
    tokenizer, dimension and precision class. `name` and `source` are for people (what
    the model is called, where it was loaded from); they are not compared.

    Example:
        >>> fp = clipsift.load("mini").fingerprint
        >>> fp.short, fp.precision
        ('3f9a0c2d51e8', 'exact')
    """

    name: str
    dim: int
    weights: str
    preprocess: str
    tokenizer: str
    precision: str
    source: str

    @property
    def model_digest(self) -> str:
        """The model without its precision class (what a reader may query with)."""
        return _hex(RECIPE, str(self.dim), self.weights, self.preprocess, self.tokenizer)

    @property
    def digest(self) -> str:
        """32 hex digits identifying the vectors (model + precision class)."""
        return _hex(self.model_digest, self.precision)

    @property
    def short(self) -> str:
        return self.digest[:12]

    def same_model(self, other: Fingerprint) -> bool:
        """Same weights, preprocessing, tokenizer and dim (the precision class may differ)."""
        return self.model_digest == other.model_digest

    def describe(self) -> str:
        """e.g. "'mymodel' (fingerprint 3f9a0c2d51e8, exact, from /models/a/mymodel)"."""
        return f"{self.name!r} (fingerprint {self.short}, {self.precision}, from {self.source})"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Fingerprint:
        raw = json.loads(text)
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Fingerprint) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)


def precision_class(precision: str) -> str:
    """The class of a precision name ("fp32-onnx" -> "exact")."""
    return PRECISION_CLASSES.get(precision, precision)


def parquet_metadata(name: str, dim: int, fingerprint: str,
                     decode: str | None = None) -> dict[str, str]:
    """The model keys every Parquet file clipsift writes carries in its schema metadata;
    `decode` ("exact" / "fast") where the vectors came from decoding images."""
    meta = {"clipsift.model": name, "clipsift.dim": str(int(dim)),
            "clipsift.fingerprint": fingerprint}
    if decode is not None:
        meta["clipsift.decode"] = decode
    return meta


# ---- parts ------------------------------------------------------------------------------
def config_digest(value: Any) -> str:
    """Digest of a JSON-able description (config dicts, preprocessing settings)."""
    return _hex(RECIPE, json.dumps(value, sort_keys=True, default=str))


def state_dict_digest(module: Any, config: Any) -> str:
    """Digest of `config` and every tensor of `module.state_dict()` (name, dtype, shape,
    bytes), in name order: the same weights give the same digest from any file format.

    Tensors are hashed with SHA-256 (hardware-accelerated on most CPUs) on a few threads
    (hashlib releases the GIL); the cost is measured by `bench/bench_fingerprint.py`.
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    def one(item: tuple[str, Any]) -> str:
        name, tensor = item
        t = tensor.detach().to("cpu").contiguous()
        h = hashlib.sha256(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
        return h.hexdigest()

    with torch.no_grad(), ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(one, sorted(module.state_dict().items())))
    return _hex(config_digest(config), *digests)


def tokenizer_digest(tokenizer: Any, context_length: int) -> str:
    """Digest of a tokenizer: its class, vocabulary (and BPE merges), cleaning and context
    length."""
    inner = getattr(tokenizer, "tokenizer", None)  # open_clip's wrapper of an HF tokenizer
    tok = inner if inner is not None and not hasattr(tokenizer, "encoder") else tokenizer
    h = hashlib.blake2b(digest_size=16)
    parts: dict[str, Any] = {"class": f"{type(tok).__module__}.{type(tok).__qualname__}",
                             "context_length": int(context_length)}
    if hasattr(tok, "encoder") and hasattr(tok, "bpe_ranks"):  # open_clip SimpleTokenizer
        lines = [f"{k}\t{v}" for k, v in tok.encoder.items()]
        lines += [f"{a} {b}\t{rank}" for (a, b), rank in tok.bpe_ranks.items()]
        for attr in ("clean_fn", "reduction_fn"):
            fn = getattr(tok, attr, None)
            parts[attr] = getattr(fn, "__name__", repr(fn)) if fn is not None else None
    elif hasattr(tok, "get_vocab"):  # transformers tokenizers (vocab order is not stable)
        lines = [f"{k}\t{v}" for k, v in sorted(tok.get_vocab().items(), key=lambda kv: kv[1])]
        parts["options"] = {k: v for k, v in getattr(tok, "init_kwargs", {}).items()
                            if isinstance(v, str | int | float | bool) and not k.endswith(
                                ("_file", "name_or_path")) and not k.startswith("_")}
    else:
        lines = [repr(tok)]
    h.update(config_digest(parts).encode())
    h.update("\n".join(lines).encode("utf-8", "surrogateescape"))
    return h.hexdigest()


# ---- the on-disk cache of weight digests ------------------------------------------------
def file_key(files: Iterable[str | os.PathLike], config: Any) -> str | None:
    """A cache key for the digest of weights read from `files`: each file's real path,
    size, mtime (ns), inode and device, plus the config; None when a file cannot be
    stat'ed (then nothing is cached)."""
    stats = []
    for f in files:
        try:
            real = os.path.realpath(f)
            st = os.stat(real)
        except OSError:
            return None
        stats.append([real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev])
    if not stats:
        return None
    return _hex(RECIPE, json.dumps(stats), config_digest(config))


def backend_parts(model: Any, weights_config: Any, preprocess: Any) -> ModelParts:
    """The parts of a torch backend's fingerprint: `model.module`'s tensors digested with
    `weights_config` (cached by `model.weight_files`), the `preprocess` settings, and
    `model.tokenizer`'s vocabulary at its context length."""
    weights = cached(file_key(model.weight_files, weights_config),
                     lambda: state_dict_digest(model.module, weights_config))
    return ModelParts(weights, config_digest(preprocess),
                      tokenizer_digest(model.tokenizer, model.context_length),
                      model.source or model.name)


def cached(key: str | None, compute: Callable[[], str]) -> str:
    """The digest stored under `key` in the fingerprint cache, else `compute()` (stored)."""
    if key is None:
        return compute()
    path = _cache_path()
    table = _read_cache(path)
    if key in table:
        return table[key]
    value = compute()
    table = _read_cache(path)  # another process may have written meanwhile
    table[key] = value
    _write_cache(path, dict(list(table.items())[-_CACHE_MAX:]))
    return value


def _cache_path() -> Path:
    from clipsift.models.resolve import cache_dir

    return cache_dir() / _CACHE_NAME


def _read_cache(path: Path) -> dict[str, str]:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}


def _write_cache(path: Path, table: dict[str, str]) -> None:
    """Atomic write; a read-only cache folder only costs the next load a recomputation."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{_CACHE_NAME}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(table, fh)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
