"""open_clip backend: any open_clip architecture, OpenAI checkpoints, clipsift model folders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from clipsift.models.base import ClipModel, Preprocess
from clipsift.models.folder import PreprocessConfig
from clipsift.models.textsplit import split_to_fit


class OpenClipModel(ClipModel):
    """A loaded open_clip model (CLIP or CustomTextCLIP) with its transforms and tokenizer.

    Attributes:
        module: the open_clip torch module (eval mode).
        tokenizer: open_clip tokenizer, `list[str] -> LongTensor [N, context_length]`.
        model_cfg: the open_clip model config dict, when known.
        preprocess_cfg: the image preprocessing settings.
    """

    backend = "open_clip"

    def __init__(
        self,
        module: torch.nn.Module,
        preprocess: Preprocess,
        tokenizer: Any,
        name: str,
        model_cfg: dict[str, Any] | None,
        preprocess_cfg: PreprocessConfig,
        device: torch.device | str = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.module = module.to(self.device).eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = name
        self.model_cfg = model_cfg
        self.preprocess_cfg = preprocess_cfg
        self.context_length = int(getattr(tokenizer, "context_length", 77))
        self.image_size = int(preprocess_cfg.image_size)
        self.logit_scale = float(module.logit_scale.detach().exp().item())
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        with torch.inference_mode():
            return int(self._text_features(["a"]).shape[-1])

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: [N, 3, H, W] -> [N, D]
        return self.module.encode_image(pixels)

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)  # [N, context_length]
        return self.module.encode_text(tokens)

    def _content_ids(self, text: str) -> list[int]:
        tok = self.tokenizer
        if hasattr(tok, "encode"):  # open_clip SimpleTokenizer (CLIP BPE)
            return tok.encode(text)
        inner = getattr(tok, "tokenizer", None)  # open_clip HFTokenizer wrapper
        if inner is not None:
            return inner(text, add_special_tokens=False)["input_ids"]
        raise TypeError(f"cannot count tokens with tokenizer {type(tok).__name__}")

    def count_tokens(self, text: str) -> int:
        return len(self._content_ids(text))

    def split_tokens(self, text: str, max_tokens: int) -> list[str]:
        return split_to_fit(text, max_tokens, self.count_tokens)


def preprocess_cfg_from_module(module: torch.nn.Module, **overrides: Any) -> PreprocessConfig:
    """Read open_clip's preprocess settings attached to a module (mean, std, size...)."""
    from open_clip.transform import PreprocessCfg

    raw = dict(getattr(module.visual, "preprocess_cfg", {}) or {})
    cfg = PreprocessCfg(**{k: v for k, v in raw.items() if k in PreprocessCfg.__dataclass_fields__})
    size = cfg.size if isinstance(cfg.size, int) else cfg.size[0]
    base = PreprocessConfig(
        image_size=int(size), mean=tuple(cfg.mean), std=tuple(cfg.std),
        interpolation=cfg.interpolation, resize_mode=cfg.resize_mode,
    )
    for key, value in overrides.items():
        if value is not None:
            setattr(base, key, tuple(value) if isinstance(value, list) else value)
    return base


def make_transform(cfg: PreprocessConfig) -> Preprocess:
    """Build open_clip's evaluation transform for `cfg` (the reference preprocessing)."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pcfg = PreprocessCfg(
        size=cfg.image_size, mean=tuple(cfg.mean), std=tuple(cfg.std),
        interpolation=cfg.interpolation, resize_mode=cfg.resize_mode,
    )
    return image_transform_v2(pcfg, is_train=False)
