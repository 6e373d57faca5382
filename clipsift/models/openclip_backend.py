"""open_clip backend: any open_clip architecture, OpenAI checkpoints, clipsift model folders."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from clipsift.models.base import ClipModel, Preprocess
from clipsift.models.fingerprint import ModelParts, backend_parts
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
        self.trim_pool = trimmable_pool_type(self.module)
        self.dim = self._probe_dim()

    def _probe_dim(self) -> int:
        with torch.inference_mode():
            return int(self._text_features(["a"]).shape[-1])

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        # pixels: [N, 3, H, W] -> [N, D]
        return self.module.encode_image(pixels)

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        tokens = self.tokenizer(list(texts)).to(self.device)  # [N, context_length]
        if self.trim_pool is None:
            return self.module.encode_text(tokens)
        return encode_text_trimmed(self.module, tokens, self.trim_pool)

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

    def _model_parts(self) -> ModelParts:
        """Weights: the architecture config + tensors (cached by checkpoint file);
        preprocessing: open_clip's eval transform settings; the tokenizer's vocabulary."""
        from dataclasses import asdict

        config = {"class": type(self.module).__qualname__, "model_cfg": self.model_cfg}
        return backend_parts(self, config, {"transform": "open_clip.image_transform_v2",
                                            **asdict(self.preprocess_cfg)})


def trimmable_pool_type(module: torch.nn.Module) -> str | None:
    """The text pool type when padding after the pooled token provably cannot change the
    text features, else None (then the full context is always encoded).

    That holds for open_clip's `CLIP` class whose text transformer is standard blocks (only
    attention mixes positions) under the causal mask, pooled from the end-of-text token
    ("argmax", "eos") or the first token: no position before the pooled one attends to a
    later one. CustomTextCLIP (HF text towers), other masks and "last"/"none" pooling are
    left alone.
    """
    import open_clip
    from open_clip.transformer import (
        CustomResidualAttentionBlock,
        ResidualAttentionBlock,
        Transformer,
    )

    pool = getattr(module, "text_pool_type", None)
    mask = getattr(module, "attn_mask", None)
    blocks = getattr(getattr(module, "transformer", None), "resblocks", [])
    if type(module) is not open_clip.CLIP or pool not in ("argmax", "eos", "first"):
        return None
    if type(module.transformer) is not Transformer or not isinstance(mask, torch.Tensor):
        return None
    if any(type(b) not in (ResidualAttentionBlock, CustomResidualAttentionBlock) for b in blocks):
        return None
    n = module.positional_embedding.shape[0]
    causal = torch.full((n, n), float("-inf"), device=mask.device).triu_(1)
    if mask.shape != (n, n) or not torch.equal(mask.float(), causal):
        return None
    if pool == "eos" and getattr(module, "text_eos_id", None) is None:
        return None
    return pool


def _pooled_positions(tokens: torch.Tensor, pool: str, eos_id: int | None) -> torch.Tensor:
    """Index of the pooled token per row [N], as open_clip's `text_global_pool` picks it."""
    if pool == "argmax":
        return tokens.argmax(dim=-1)
    if pool == "eos":
        return (tokens == eos_id).int().argmax(dim=-1)
    return torch.zeros(tokens.shape[0], dtype=torch.long, device=tokens.device)


def encode_text_trimmed(module: torch.nn.Module, tokens: torch.Tensor, pool: str) -> torch.Tensor:
    """open_clip `CLIP.encode_text`, run only up to the last pooled token of the batch.

    Valid when `trimmable_pool_type(module) == pool`: under the causal mask the features at
    positions <= p never see positions > p, so dropping the tail gives the same output.

    Args:
        tokens: [N, context_length] token ids.
    Returns:
        [N, D] unnormalised text features.
    """
    eos_id = getattr(module, "text_eos_id", None)
    positions = _pooled_positions(tokens, pool, eos_id)  # [N]
    length = int(positions.max().item()) + 1
    tokens = tokens[:, :length]  # [N, L]: the pooled positions (first max) do not move
    cast = module.transformer.get_cast_dtype()
    x = module.token_embedding(tokens).to(cast)  # [N, L, width]
    x = x + module.positional_embedding[:length].to(cast)
    x = module.transformer(x, attn_mask=module.attn_mask[:length, :length])
    x = module.ln_final(x)  # [N, L, width]
    # pooled here, not with open_clip's text_global_pool: its signature and return type
    # changed across releases (2.x returns a tuple, 3.1 added eos_token_id)
    x = x[torch.arange(x.shape[0], device=x.device), positions]  # [N, width]
    proj = module.text_projection
    if proj is None:
        return x
    return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj  # [N, D]


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
