"""Build open_clip models from `ARCH:TAG`, `ARCH:/path/checkpoint` and clipsift folders."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from clipsift.errors import CheckpointError, UnknownModel
from clipsift.models import checkpoints, resolve
from clipsift.models.folder import WEIGHTS_NAME, PreprocessConfig, read_folder_config
from clipsift.models.openclip_backend import (
    OpenClipModel,
    make_transform,
    preprocess_cfg_from_module,
)


def _quiet_open_clip() -> None:
    logging.getLogger().setLevel(max(logging.getLogger().level, logging.ERROR))


_registered: set[str] = set()


def register_user_configs() -> None:
    """Register extra architecture JSONs from $CLIPSIFT_MODEL_CONFIGS (folders or files,
    separated by os.pathsep), the way open_clip's `add_model_config` does."""
    import os

    import open_clip

    for entry in filter(None, os.environ.get("CLIPSIFT_MODEL_CONFIGS", "").split(os.pathsep)):
        if entry not in _registered and Path(entry).exists():
            open_clip.add_model_config(entry)
            _registered.add(entry)


def known_archs() -> list[str]:
    import open_clip

    register_user_configs()
    return open_clip.list_models()


def check_arch(arch: str) -> dict[str, Any]:
    """The open_clip config of `arch`, or UnknownModel listing close names."""
    import difflib

    import open_clip

    register_user_configs()
    cfg = open_clip.get_model_config(arch)
    if cfg is None:
        close = difflib.get_close_matches(arch, known_archs(), n=5, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownModel(
            f"unknown open_clip architecture {arch!r}.{hint} "
            "Run `clipsift models` to list architectures and pretrained tags."
        )
    return copy.deepcopy(cfg)


def build_module(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """Instantiate an open_clip CLIP/CustomTextCLIP from a config dict (random weights)."""
    import open_clip

    cfg = copy.deepcopy(model_cfg)
    custom = cfg.pop("custom_text", False) or "hf_model_name" in cfg.get("text_cfg", {})
    if "hf_model_name" in cfg.get("text_cfg", {}):
        cfg["text_cfg"]["hf_model_pretrained"] = False
    if "timm_model_name" in cfg.get("vision_cfg", {}):
        cfg["vision_cfg"]["timm_model_pretrained"] = False
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    return cls(**cfg)


def load_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str) -> None:
    """Load a (possibly OpenAI/third-party) state dict into an open_clip module, strictly."""
    from open_clip.factory import convert_state_dict, resize_pos_embed, resize_text_pos_embed
    from open_clip.model import convert_to_custom_text_state_dict

    sd = convert_state_dict(module, dict(state_dict))
    if "positional_embedding" in sd and not hasattr(module, "positional_embedding"):
        sd = convert_to_custom_text_state_dict(sd)
    if "logit_scale" in sd and module.logit_scale.ndim != sd["logit_scale"].ndim:
        sd["logit_scale"] = sd["logit_scale"].reshape(module.logit_scale.shape)
    own = module.state_dict()
    for key in [k for k in sd if k not in own and k.endswith("attn_mask")]:
        sd.pop(key)  # non-persistent buffers TorchScript archives also store
    if "logit_bias" in own and "logit_bias" not in sd:
        sd["logit_bias"] = torch.zeros_like(own["logit_bias"])
    try:
        resize_pos_embed(sd, module)
        resize_text_pos_embed(sd, module)
        module.load_state_dict(sd, strict=True)
    except (RuntimeError, AssertionError, KeyError, ValueError) as ex:
        first = str(ex).splitlines()[:4]
        raise CheckpointError(
            f"checkpoint {source!r} does not fit this architecture: {' '.join(first)}. "
            "Check that ARCH in ARCH:/path matches the checkpoint (e.g. ViT-B-32 vs ViT-B-16)."
        ) from ex


def _finish(module: torch.nn.Module, name: str, arch: str, model_cfg: dict[str, Any],
            pre: PreprocessConfig, device: str) -> OpenClipModel:
    import open_clip

    ctx = model_cfg.get("text_cfg", {}).get("context_length", 77)
    tokenizer = open_clip.get_tokenizer(arch, context_length=ctx) if arch else \
        open_clip.get_tokenizer("ViT-B-32", context_length=ctx)
    return OpenClipModel(module, make_transform(pre), tokenizer, name, model_cfg, pre, device)


def load_tag(arch: str, tag: str, device: str = "cpu") -> OpenClipModel:
    """`ARCH:TAG` from open_clip's zoo, resolved offline-first."""
    import open_clip

    _quiet_open_clip()
    model_cfg = check_arch(arch)
    pcfg = open_clip.get_pretrained_cfg(arch, tag)
    if not pcfg:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        raise UnknownModel(f"unknown pretrained tag {tag!r} for {arch}; known tags: "
                           f"{', '.join(tags) or 'none'}. A local file works too: {arch}:/path")
    path = _tag_weights(pcfg, resolve.Lookup(f"{arch}:{tag}"))
    if pcfg.get("quick_gelu"):
        model_cfg["quick_gelu"] = True  # weights trained with QuickGELU: never mix them up
    module = build_module(model_cfg)
    load_weights(module, checkpoints.load_state_dict(path), path)
    pre = preprocess_cfg_from_module(
        module, mean=pcfg.get("mean"), std=pcfg.get("std"),
        interpolation=pcfg.get("interpolation"), resize_mode=pcfg.get("resize_mode"))
    pre.image_size = _visual_size(module)
    return _finish(module, f"{arch}:{tag}", arch, model_cfg, pre, device)


def _tag_weights(pcfg: dict[str, Any], lookup: resolve.Lookup) -> str:
    """Weights of a zoo tag: a cached URL download, else the HF hub, else the URL."""
    import os

    url = pcfg.get("url", "")
    if url:
        cached = resolve.cached_url_file(url, lookup)
        if cached:
            return cached
    hub = pcfg.get("hf_hub", "")
    if hub:
        # "org/repo/" means the repo's default file; "org/repo/file.bin" names one
        repo_id, filename = os.path.split(hub)
        return _first_hf_file(repo_id, filename, lookup)
    return resolve.url_file(url, lookup)


def _first_hf_file(repo_id: str, filename: str, lookup: resolve.Lookup) -> str:
    names = [filename] if filename else []
    names += ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if filename.endswith((".bin", ".pt", ".pth")):
        names.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
    last: Exception | None = None
    for name in dict.fromkeys(names):
        try:
            return resolve.hf_file(repo_id, name, lookup)
        except Exception as ex:  # try the next candidate
            last = ex
            if "no network" in str(ex) or "offline" in str(ex):
                raise
    raise lookup.fail(str(last))


def load_file(arch: str, path: str, device: str = "cpu") -> OpenClipModel:
    """`ARCH:/path` — an open_clip state dict, an OpenAI `.pt` (TorchScript or state dict),
    or a `.safetensors` file."""
    _quiet_open_clip()
    model_cfg = check_arch(arch)
    p = Path(path).expanduser()
    if not p.is_file():
        raise resolve.Lookup(f"{arch}:{path}", [str(p)]).fail("the file does not exist")
    ckpt = checkpoints.read_checkpoint(p)
    if ckpt.quick_gelu is not None:  # the activation the file's weights were trained with
        model_cfg["quick_gelu"] = ckpt.quick_gelu
    module = build_module(model_cfg)
    load_weights(module, ckpt.state_dict, str(p))
    pre = preprocess_cfg_from_module(module)
    pre.image_size = _visual_size(module)
    return _finish(module, f"{arch}:{p}", arch, model_cfg, pre, device)


def load_folder(path: str | Path, device: str = "cpu", name: str | None = None) -> OpenClipModel:
    """A clipsift model folder (what `clipsift train` writes, and the bundled `mini`)."""
    import open_clip

    cfg = read_folder_config(path)
    module = build_module(cfg.model_cfg)
    weights = Path(path) / WEIGHTS_NAME
    sd = {k: v.float() for k, v in checkpoints.load_state_dict(weights).items()}
    load_weights(module, sd, str(weights))
    tokenizer = open_clip.get_tokenizer("ViT-B-32", context_length=cfg.context_length)
    return OpenClipModel(module, make_transform(cfg.preprocess), tokenizer, name or cfg.name,
                         cfg.model_cfg, cfg.preprocess, device)


def _visual_size(module: torch.nn.Module) -> int:
    size = getattr(module.visual, "image_size", 224)
    return int(size[0] if isinstance(size, tuple | list) else size)


def load_hub(repo_id: str, device: str = "cpu") -> OpenClipModel:
    """`hf-hub:ORG/NAME` — an open_clip model repo (open_clip_config.json + weights)."""
    import json

    lookup = resolve.Lookup(f"hf-hub:{repo_id}")
    cfg_path = resolve.hf_file(repo_id, "open_clip_config.json", lookup)
    raw = json.loads(Path(cfg_path).read_text(encoding="utf-8"))
    model_cfg = raw["model_cfg"]
    weights = _first_hf_file(repo_id, "", lookup)
    module = build_module(model_cfg)
    load_weights(module, checkpoints.load_state_dict(weights), weights)
    pcfg = raw.get("preprocess_cfg", {})
    pre = PreprocessConfig(
        image_size=_visual_size(module), mean=tuple(pcfg.get("mean", PreprocessConfig.mean)),
        std=tuple(pcfg.get("std", PreprocessConfig.std)),
        interpolation=pcfg.get("interpolation", "bicubic"),
        resize_mode=pcfg.get("resize_mode", "shortest"))
    return _finish(module, f"hf-hub:{repo_id}", "", model_cfg, pre, device)
