"""The tokenizer an open_clip model config names, resolved offline-first.

open_clip configs say which tokenizer their text tower was trained with: a Hugging Face
tokenizer in `text_cfg.hf_tokenizer_name` (SigLIP, multilingual and many hub models), else
CLIP's BPE. A model must be paired with its own tokenizer, whatever form its name took
(`ARCH:TAG`, `ARCH:/file`, `hf-hub:ORG/NAME`, a local hf-hub folder, a clipsift folder).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipsift.errors import UsageError
from clipsift.models import resolve

#: Files a Hugging Face tokenizer is made of (no weights).
TOKENIZER_PATTERNS = ["*.json", "*.txt", "*.model", "*.tiktoken"]
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def make_tokenizer(model_cfg: dict[str, Any], lookup: resolve.Lookup, *, arch: str = "",
                   folder: str | Path | None = None, context_length: int | None = None) -> Any:
    """open_clip tokenizer for `model_cfg`: `list[str] -> LongTensor [N, context_length]`.

    Args:
        model_cfg: the open_clip model config (its `text_cfg` names the tokenizer).
        lookup: where resolution looked so far (for ModelNotAvailable).
        arch: the built-in open_clip architecture name, when the model has one (open_clip
            then also applies its name-based rules, e.g. SigLIP tokenizers).
        folder: a local model folder; when it holds tokenizer files they are used, as
            open_clip does for `local-dir:` models.
        context_length: overrides `text_cfg.context_length`.
    Returns:
        An open_clip tokenizer (HFTokenizer for `hf_tokenizer_name`, else CLIP's BPE).
    Raises:
        ModelNotAvailable: the named tokenizer is neither local, cached nor downloadable.
    """
    import open_clip
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text = model_cfg.get("text_cfg", {}) or {}
    ctx = int(context_length or text.get("context_length", 77))
    kwargs = dict(text.get("tokenizer_kwargs") or {})
    hf_name = text.get("hf_tokenizer_name") or ""
    if hf_name:
        if text.get("tokenizer_mode"):  # open_clip >= 3.0 only
            kwargs["tokenizer_mode"] = text["tokenizer_mode"]
        tokenizer = HFTokenizer(_tokenizer_source(hf_name, folder, lookup), context_length=ctx,
                                **kwargs)
        _check_hf_tokenizer(tokenizer, hf_name)
        return tokenizer
    if arch:
        return open_clip.get_tokenizer(arch, context_length=ctx)
    return SimpleTokenizer(context_length=ctx, **kwargs)


def _tokenizer_source(name: str, folder: str | Path | None, lookup: resolve.Lookup) -> str:
    """A local folder holding the tokenizer `name` (a local path or a hub id)."""
    if folder is not None and any((Path(folder) / f).is_file() for f in _TOKENIZER_FILES):
        return str(folder)
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local)
    if name.startswith(("/", ".", "~")):
        raise lookup.fail(f"the tokenizer folder {name} named by the model config does not "
                          "exist")
    return resolve.hf_snapshot(name, lookup, patterns=TOKENIZER_PATTERNS)


def _check_hf_tokenizer(tokenizer: Any, name: str) -> None:
    """Tokenize once now: open_clip < 3.3 calls `batch_encode_plus`, which transformers 5
    removed, and that must be a clear error at load time, not a crash mid-run."""
    try:
        tokenizer(["a photo"])
    except AttributeError as ex:
        import open_clip
        import transformers

        raise UsageError(
            f"the tokenizer {name!r} cannot run with open_clip {open_clip.__version__} and "
            f"transformers {transformers.__version__} ({ex}); upgrade open_clip_torch to 3.3 "
            "or later, or use transformers 4.x") from ex
