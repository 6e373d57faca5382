"""transformers backend: Hugging Face `CLIPModel` and `ChineseCLIPModel` checkpoints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from clipsift.errors import CheckpointError
from clipsift.models.base import ClipModel
from clipsift.models.fingerprint import ModelParts, backend_parts
from clipsift.models.textsplit import split_to_fit

_SUPPORTED = {"clip": "CLIPModel", "chinese_clip": "ChineseCLIPModel"}


class HFImagePreprocess:
    """Picklable wrapper around a transformers image processor: PIL -> [3, H, W] tensor."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        out = self.processor(images=image.convert("RGB"), return_tensors="pt")
        return out["pixel_values"][0]


class HFClipModel(ClipModel):
    """A transformers CLIP-family model with its processor and tokenizer."""

    backend = "transformers"

    def __init__(self, folder: str, name: str, device: str = "cpu") -> None:
        import transformers
        from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

        config = AutoConfig.from_pretrained(folder)
        cls_name = _SUPPORTED.get(config.model_type)
        if cls_name is None:
            raise CheckpointError(
                f"{folder}: model type {config.model_type!r} is not supported; "
                f"supported: {', '.join(_SUPPORTED)}")
        self.device = torch.device(device)
        self.module = getattr(transformers, cls_name).from_pretrained(folder).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.preprocess = HFImagePreprocess(AutoImageProcessor.from_pretrained(folder))
        self.name = name
        self.context_length = int(config.text_config.max_position_embeddings)
        if config.model_type == "chinese_clip":  # BERT position table may exceed tokenizer max
            self.context_length = min(self.context_length, self.tokenizer.model_max_length)
        self.image_size = int(config.vision_config.image_size)
        self.logit_scale = float(self.module.logit_scale.detach().exp().item())
        self.dim = int(config.projection_dim)
        self.weight_files = tuple(str(p) for p in sorted(Path(folder).iterdir())
                                  if p.suffix in (".safetensors", ".bin"))

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.module.get_image_features(pixel_values=pixels))

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.context_length, return_tensors="pt").to(self.device)
        return _features(self.module.get_text_features(**enc))

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def split_tokens(self, text: str, max_tokens: int) -> list[str]:
        return split_to_fit(text, max_tokens, self.count_tokens)

    def _model_parts(self) -> ModelParts:
        """Weights: the model config (paths and versions left out) + tensors, cached by
        weight file; preprocessing: the image processor's settings; the tokenizer's vocab."""
        config = {"class": type(self.module).__qualname__,
                  "config": _portable(self.module.config.to_dict())}
        processor = self.preprocess.processor
        return backend_parts(self, config, {"class": type(processor).__qualname__,
                                            "settings": _portable(processor.to_dict())})


def _portable(value: Any) -> Any:
    """A config dict without what differs between copies of the same model (its folder,
    the transformers version, private keys)."""
    if isinstance(value, dict):
        return {str(k): _portable(v) for k, v in value.items() if not str(k).startswith("_")
                and k not in ("transformers_version", "name_or_path")}
    if isinstance(value, list | tuple):
        return [_portable(v) for v in value]
    return value


def _features(out: Any) -> torch.Tensor:
    """transformers 4.x returns a tensor; 5.x an output whose pooler_output is projected."""
    if isinstance(out, torch.Tensor):
        return out
    return out.pooler_output


def is_hf_folder(path: str | Path) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()
