"""Build open_clip models from `ARCH:TAG`, `ARCH:/path/checkpoint` and clipsift folders."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch

from clipsift.errors import CheckpointError, UnknownModel
from clipsift.models import checkpoints, resolve
from clipsift.models.folder import HUB_CONFIG, WEIGHTS_NAME, PreprocessConfig, read_folder_config
from clipsift.models.openclip_backend import (
    OpenClipModel,
    make_transform,
    preprocess_cfg_from_module,
)
from clipsift.models.tokenizers import make_tokenizer

#: Weight files of an open_clip hub repo (or a local copy of one), preferred first.
HUB_WEIGHTS = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
               "open_clip_pytorch_model.bin")


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


def is_arch(arch: str) -> bool:
    """True when `arch` names an open_clip architecture (built in or user-registered)."""
    import open_clip

    register_user_configs()
    return open_clip.get_model_config(arch) is not None


def check_arch(arch: str) -> dict[str, Any]:
    """The open_clip config of `arch`, or UnknownModel suggesting close names."""
    import open_clip

    if not is_arch(arch):
        from clipsift.models.registry import unknown_model

        raise unknown_model(arch, "open_clip architecture")
    return copy.deepcopy(open_clip.get_model_config(arch))


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


def _finish(module: torch.nn.Module, name: str, model_cfg: dict[str, Any],
            pre: PreprocessConfig, device: str, tokenizer: Any,
            weights: str | Path) -> OpenClipModel:
    model = OpenClipModel(module, make_transform(pre), tokenizer, name, model_cfg, pre, device)
    model.weight_files = (str(weights),)  # what the weights part of the fingerprint caches by
    return model


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
    lookup = resolve.Lookup(f"{arch}:{tag}")
    path = _tag_weights(pcfg, lookup)
    if pcfg.get("quick_gelu"):
        model_cfg["quick_gelu"] = True  # weights trained with QuickGELU: never mix them up
    module = build_module(model_cfg)
    load_weights(module, checkpoints.load_state_dict(path), path)
    pre = preprocess_cfg_from_module(
        module, mean=pcfg.get("mean"), std=pcfg.get("std"),
        interpolation=pcfg.get("interpolation"), resize_mode=pcfg.get("resize_mode"))
    pre.image_size = _visual_size(module)
    tokenizer = make_tokenizer(model_cfg, lookup, arch=arch)
    return _finish(module, f"{arch}:{tag}", model_cfg, pre, device, tokenizer, path)


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
    """The first of `filename` (or its .safetensors twin) and HUB_WEIGHTS found: every
    candidate in the cache first, then downloads."""
    names = [filename] if filename else []
    names += list(HUB_WEIGHTS)
    if filename.endswith((".bin", ".pt", ".pth")):
        names.insert(0, filename.rsplit(".", 1)[0] + ".safetensors")
    names = list(dict.fromkeys(names))
    for name in names:
        cached = resolve.hf_cached_file(repo_id, name, lookup)
        if cached:
            return cached
    last: Exception | None = None
    for name in names:
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
    tokenizer = make_tokenizer(model_cfg, resolve.Lookup(f"{arch}:{p}"), arch=arch)
    return _finish(module, f"{arch}:{p}", model_cfg, pre, device, tokenizer, p)


def load_folder(path: str | Path, device: str = "cpu", name: str | None = None) -> OpenClipModel:
    """A clipsift model folder (what `clipsift train` writes, and the bundled `mini`)."""
    cfg = read_folder_config(path)
    module = build_module(cfg.model_cfg)
    weights = Path(path) / WEIGHTS_NAME
    sd = {k: v.float() for k, v in checkpoints.load_state_dict(weights).items()}
    load_weights(module, sd, str(weights))
    tokenizer = make_tokenizer(cfg.model_cfg, resolve.Lookup(str(path)), folder=path,
                               context_length=cfg.context_length)
    return _finish(module, name or cfg.name, cfg.model_cfg, cfg.preprocess, device, tokenizer,
                   weights)


def _visual_size(module: torch.nn.Module) -> int:
    size = getattr(module.visual, "image_size", 224)
    return int(size[0] if isinstance(size, tuple | list) else size)


def load_hub(ref: str, device: str = "cpu") -> OpenClipModel:
    """An open_clip model repo (open_clip_config.json + weights): `hf-hub:ORG/NAME` from the
    HF cache or the hub, or a local folder laid out the same way (`hf-hub:/path`, `/path`).

    The tokenizer is the one the config names (`text_cfg.hf_tokenizer_name`: a hub id or a
    local folder; tokenizer files inside a local model folder come first, as in open_clip),
    else CLIP's BPE.
    """
    lookup = resolve.Lookup(f"hf-hub:{ref}")
    local = Path(ref).expanduser()
    folder: Path | None = None
    if ref.startswith(("/", ".", "~")) or local.is_dir():
        folder, cfg_path = local, local / HUB_CONFIG
        lookup.looked_in.append(str(cfg_path))
        weights = next((str(local / n) for n in HUB_WEIGHTS if (local / n).is_file()), "")
        if not cfg_path.is_file() or not weights:
            raise lookup.fail(f"that folder needs {HUB_CONFIG} and one of {', '.join(HUB_WEIGHTS)}")
    else:
        cfg_path = Path(resolve.hf_file(ref, HUB_CONFIG, lookup))
        weights = _first_hf_file(ref, "", lookup)
    model_cfg, raw = _read_hub_config(cfg_path)
    module = build_module(model_cfg)
    load_weights(module, checkpoints.load_state_dict(weights), weights)
    pcfg = raw.get("preprocess_cfg", {})
    pre = PreprocessConfig(
        image_size=_visual_size(module), mean=tuple(pcfg.get("mean", PreprocessConfig.mean)),
        std=tuple(pcfg.get("std", PreprocessConfig.std)),
        interpolation=pcfg.get("interpolation", "bicubic"),
        resize_mode=pcfg.get("resize_mode", "shortest"))
    tokenizer = make_tokenizer(model_cfg, lookup, folder=folder)
    return _finish(module, f"hf-hub:{ref}", model_cfg, pre, device, tokenizer, weights)


def _read_hub_config(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model_cfg, whole file) of an open_clip_config.json."""
    import json

    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return dict(raw["model_cfg"]), raw
    except (OSError, ValueError, KeyError, TypeError) as ex:
        raise CheckpointError(f"{str(path)!r} is not a valid open_clip config (it needs a "
                              f"'model_cfg'): {type(ex).__name__}: {ex}") from ex
