"""The clipsift model folder: what `clipsift train` writes and `clipsift.load(DIR)` reads.

Layout:
    DIR/clipsift_model.json   format, name, open_clip model config, preprocessing, tokenizer
    DIR/model.safetensors     the weights (state dict of an open_clip model)

Only safetensors is used, so loading a folder can never execute code.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "clipsift-model/1"
CONFIG_NAME = "clipsift_model.json"
WEIGHTS_NAME = "model.safetensors"
#: What marks a folder laid out as an open_clip hub repo (open_clip's `local-dir:`).
HUB_CONFIG = "open_clip_config.json"

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class PreprocessConfig:
    """Image preprocessing: resize shortest side + centre crop to `image_size`, normalise."""

    image_size: int = 224
    mean: tuple[float, ...] = OPENAI_MEAN
    std: tuple[float, ...] = OPENAI_STD
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"


@dataclass
class FolderConfig:
    """Contents of clipsift_model.json."""

    name: str
    model_cfg: dict[str, Any]
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    context_length: int = 77
    tokenizer: str = "open_clip"
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT


def is_model_folder(path: str | Path) -> bool:
    """True when `path` is a directory holding a clipsift model."""
    p = Path(path)
    return p.is_dir() and (p / CONFIG_NAME).is_file()


def read_folder_config(path: str | Path) -> FolderConfig:
    """Read and validate DIR/clipsift_model.json."""
    from clipsift.errors import CheckpointError

    cfg_path = Path(path) / CONFIG_NAME
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as ex:
        raise CheckpointError(f"cannot read model config {cfg_path}: {ex}") from ex
    if raw.get("format") != FORMAT:
        raise CheckpointError(
            f"{cfg_path}: format {raw.get('format')!r} is not {FORMAT!r}; "
            "re-export the model with this version of clipsift"
        )
    pre = PreprocessConfig(**{k: tuple(v) if isinstance(v, list) else v
                              for k, v in raw.get("preprocess", {}).items()})
    return FolderConfig(
        name=raw["name"], model_cfg=raw["model_cfg"], preprocess=pre,
        context_length=int(raw.get("context_length", 77)),
        tokenizer=raw.get("tokenizer", "open_clip"), extra=raw.get("extra", {}),
    )


def save_model_folder(model: Any, config: FolderConfig, out_dir: str | Path) -> Path:
    """Write `model` (an open_clip CLIP/CustomTextCLIP module) and its config to `out_dir`.

    Weights are written as safetensors (shared tensors are cloned so the file is valid).
    Returns the folder path.
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT, "name": config.name})
    tmp.replace(out / WEIGHTS_NAME)
    payload = asdict(config)
    payload["preprocess"] = asdict(config.preprocess)
    (out / CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return out
