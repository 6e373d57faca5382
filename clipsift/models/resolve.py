"""Offline-aware resolution of weights: local path -> local cache -> download (short timeout).

Nothing here waits long on a dead network: before any download we check that the host
answers within a few seconds, and `CLIPSIFT_OFFLINE=1` / `HF_HUB_OFFLINE=1` skip the
network entirely.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from clipsift.errors import ModelNotAvailable

PROBE_TIMEOUT_S = 3.0
DOWNLOAD_TIMEOUT_S = 10.0
HF_HOST = "huggingface.co"


def cache_dir() -> Path:
    """clipsift's weight cache: $CLIPSIFT_CACHE, else ~/.cache/clipsift."""
    env = os.environ.get("CLIPSIFT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "clipsift"


def offline() -> bool:
    """True when the user asked for no network at all."""
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes")
               for v in ("CLIPSIFT_OFFLINE", "HF_HUB_OFFLINE"))


def host_reachable(host: str, port: int = 443, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Quick TCP check that `host` answers; DNS failure or refusal returns at once."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass
class Lookup:
    """The places tried while resolving one model, for error messages."""

    model: str
    looked_in: list[str] = field(default_factory=list)

    def fail(self, reason: str) -> ModelNotAvailable:
        return ModelNotAvailable(self.model, self.looked_in, reason)


def hf_cached_file(repo_id: str, filename: str, lookup: Lookup) -> str | None:
    """Path of `filename` from HF repo `repo_id` in the local cache, or None (no network)."""
    from huggingface_hub import hf_hub_download

    lookup.looked_in.append(f"Hugging Face cache ({_hf_cache_dir()}) for {repo_id}/{filename}")
    try:
        return hf_hub_download(repo_id, filename, local_files_only=True)
    except Exception:
        return None


def hf_file(repo_id: str, filename: str, lookup: Lookup) -> str:
    """Path of `filename` from HF repo `repo_id`: cache first, then a bounded download."""
    from huggingface_hub import hf_hub_download

    cached = hf_cached_file(repo_id, filename, lookup)
    if cached:
        return cached
    _require_network(HF_HOST, lookup, f"https://{HF_HOST}/{repo_id}")
    try:
        return hf_hub_download(repo_id, filename, etag_timeout=DOWNLOAD_TIMEOUT_S)
    except Exception as ex:
        raise lookup.fail(f"download failed: {type(ex).__name__}: {ex}") from ex


#: What `hf_snapshot` fetches by default: config, weights, tokenizer, preprocessor.
MODEL_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.bin"]


def hf_snapshot(repo_id: str, lookup: Lookup, patterns: list[str] | None = None) -> str:
    """Local folder with an HF repo's files matching `patterns` (default: a whole model:
    config, weights, tokenizer, preprocessor): cache first, then a bounded download."""
    from huggingface_hub import snapshot_download

    patterns = patterns or MODEL_PATTERNS
    lookup.looked_in.append(f"Hugging Face cache ({_hf_cache_dir()}) for {repo_id}")
    try:
        local = snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True)
        if any(any(Path(local).glob(p)) for p in patterns):  # not an empty partial snapshot
            return local
    except Exception:
        pass
    _require_network(HF_HOST, lookup, f"https://{HF_HOST}/{repo_id}")
    try:
        return snapshot_download(repo_id, allow_patterns=patterns, etag_timeout=DOWNLOAD_TIMEOUT_S)
    except Exception as ex:
        raise lookup.fail(f"download failed: {type(ex).__name__}: {ex}") from ex


def _url_targets(url: str) -> tuple[Path, Path]:
    name = Path(urlparse(url).path).name
    # ours, and open_clip's own default cache (reused so existing downloads count)
    return cache_dir() / "open_clip" / name, Path.home() / ".cache" / "clip" / name


def cached_url_file(url: str, lookup: Lookup) -> str | None:
    """A previously downloaded copy of `url`, if any (no network)."""
    for candidate in _url_targets(url):
        if str(candidate) not in lookup.looked_in:
            lookup.looked_in.append(str(candidate))
        if candidate.is_file() and candidate.stat().st_size > 0:
            return str(candidate)
    return None


def url_file(url: str, lookup: Lookup) -> str:
    """Path of a file downloaded from `url` into the cache (reused when present)."""
    import urllib.request

    cached = cached_url_file(url, lookup)
    if cached:
        return cached
    target = _url_targets(url)[0]
    host = urlparse(url).hostname or ""
    _require_network(host, lookup, url)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        tmp.replace(target)
    except OSError as ex:
        tmp.unlink(missing_ok=True)
        raise lookup.fail(f"download failed: {ex}") from ex
    return str(target)


def _require_network(host: str, lookup: Lookup, what: str) -> None:
    lookup.looked_in.append(what)
    if offline():
        raise lookup.fail("offline mode is set (CLIPSIFT_OFFLINE / HF_HUB_OFFLINE)")
    if not host_reachable(host):
        raise lookup.fail(f"no network: {host} cannot be reached")


def _hf_cache_dir() -> str:
    try:
        from huggingface_hub.constants import HF_HUB_CACHE

        return str(HF_HUB_CACHE)
    except ImportError:  # pragma: no cover
        return "~/.cache/huggingface/hub"
