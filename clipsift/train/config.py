"""Training options as one typed dataclass, and their resolution into working objects.

`TrainConfig` is validated before any work starts; `build_model` turns its model/init into
an open_clip module + tokenizer + preprocessing; `make_optimizer`, `lr_at`,
`resolve_precision` and `resolve_device` cover the rest of the set-up.

Example:
    >>> cfg = TrainConfig(data="pairs.parquet", output="runs/mine", model="ViT-B-32", epochs=2)
    >>> cfg.validate()
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import functools
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clipsift.errors import TrainingError
from clipsift.models.folder import PreprocessConfig

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
SAVE_DTYPES = ("fp32", "fp16")


@dataclass
class TrainConfig:
    """Everything one training run needs.

    Attributes:
        data: image–caption pairs: a folder of images with same-named `.txt` captions, a CSV
            or Parquet manifest, or tar shards (`x.tar`, a folder of `.tar`, a glob, or
            `shard-{000..009}.tar`).
        output: run folder; receives checkpoints/, metrics.jsonl and, at the end, the model
            folder files (clipsift_model.json + model.safetensors).
        model: from scratch: an open_clip architecture name (`ViT-B-32`) or a JSON file
            holding an open_clip model config (optionally under a "model_cfg" key).
        init: fine-tune: any name `clipsift.models.load` accepts, or a clipsift model folder.
            Exactly one of `model` and `init` is given.
        batch_size: pairs per forward pass (the contrastive negatives come from one batch).
        epochs: passes over the training split.
        lr: peak learning rate, reached after `warmup_steps`, then cosine decay to zero.
            None: 5e-4 from scratch, 1e-5 when fine-tuning (see `peak_lr`).
        warmup_steps: optimizer steps of linear warmup.
        weight_decay: AdamW decay for matrices; gains, biases, embeddings of positions and
            the temperature are never decayed.
        grad_accum: micro-batches per optimizer step.
        precision: `fp32`; `bf16` (autocast, CPU or CUDA); `fp16` (CUDA only, with loss
            scaling); `auto` picks bf16/fp16 on CUDA and fp32 on CPU.
        augment: augmentation strength, 0 (off: resize + centre crop) to 1 (strong: random
            resized crop, flips, colour jitter, grayscale, blur, low resolution, random
            background under transparent images).
        backgrounds: a folder of photos or textures; transparent training images (clip
            art, emoji, cut-outs) are then mostly placed on random crops of them instead of
            plain colours, which brings such data closer to photographs.
        background_share: how often (at augment 1) a transparent image goes on a background
            photo rather than on white or a plain colour.
        freeze_text / freeze_image: keep that tower's weights fixed (LiT-style tuning).
        wise_alpha: WiSE-FT: the saved weights are (1 - a) * start + a * fine-tuned. None or
            1 keeps the fine-tuned weights; 0 gives back the start weights.
        val_fraction: share of groups held out for recall@k (split by hash of the group).
        val_max_items: cap on held-out images used for recall (keeps evaluation fast).
        seed: seeds initial weights, data order, caption choice and augmentation.
        workers: data-loading worker processes (0 loads in the training process).
        threads: torch threads for the run (None keeps torch's setting). On a busy or small
            machine fewer threads than cores can be much faster (no spinning threads).
        image_size / context_length: override the architecture's values (from scratch only).
        max_steps: stop after this many optimizer steps (the schedule is sized to it).
        resume: continue from the newest checkpoint in OUTPUT/checkpoints.
        overwrite: allow starting afresh in an OUTPUT that already holds a run.
        keep_checkpoints: how many recent checkpoints to keep (older ones are deleted).
        checkpoint_every: also checkpoint every this many optimizer steps inside an epoch
            (None: only at epoch ends), for long epochs.
        grad_clip: clip the global gradient norm to this value (0 disables).
        device: `auto`, `cpu` or `cuda`.
        save_dtype: dtype of the saved safetensors weights (`fp16` halves the file).
        name: model name recorded in the folder config (defaults to OUTPUT's folder name).
        image_column / caption_column / group_column: manifest column names.
    """

    data: str
    output: str
    model: str | None = None
    init: str | None = None
    batch_size: int = 64
    epochs: int = 10
    lr: float | None = None
    warmup_steps: int = 200
    weight_decay: float = 0.1
    grad_accum: int = 1
    precision: str = "auto"
    augment: float = 0.5
    backgrounds: str | None = None
    background_share: float = 0.5
    freeze_text: bool = False
    freeze_image: bool = False
    wise_alpha: float | None = None
    val_fraction: float = 0.05
    val_max_items: int = 2000
    seed: int = 0
    workers: int = 0
    threads: int | None = None
    image_size: int | None = None
    context_length: int | None = None
    max_steps: int | None = None
    resume: bool = False
    overwrite: bool = False
    keep_checkpoints: int = 2
    checkpoint_every: int | None = None
    grad_clip: float = 1.0
    device: str = "auto"
    save_dtype: str = "fp32"
    name: str | None = None
    image_column: str = "image"
    caption_column: str = "caption"
    group_column: str = "group"

    def validate(self) -> TrainConfig:
        """Raise `TrainingError` naming the first bad value; returns self when all is well."""
        if (self.model is None) == (self.init is None):
            raise TrainingError(
                "give exactly one of model (an architecture or config JSON, to train from "
                f"scratch) and init (a model to fine-tune); got model={self.model!r}, "
                f"init={self.init!r}"
            )
        if self.model is not None and ":" in self.model and not self.model.endswith(".json"):
            raise TrainingError(
                f"model={self.model!r} names pretrained weights; pass it as init to "
                "fine-tune it, or give a bare architecture name to train from scratch"
            )
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("device", self.device, DEVICES)
        _check_choice("save_dtype", self.save_dtype, SAVE_DTYPES)
        _check_positive(self, ("batch_size", "epochs", "grad_accum", "keep_checkpoints",
                               "val_max_items"))
        _check_range("lr", self.peak_lr, 0.0, None, low_open=True)
        _check_range("weight_decay", self.weight_decay, 0.0, None)
        _check_range("augment", self.augment, 0.0, 1.0)
        _check_range("background_share", self.background_share, 0.0, 1.0)
        _check_range("val_fraction", self.val_fraction, 0.0, 0.5)
        _check_range("grad_clip", self.grad_clip, 0.0, None)
        if self.wise_alpha is not None:
            _check_range("wise_alpha", self.wise_alpha, 0.0, 1.0)
        for key in ("warmup_steps", "workers"):
            if getattr(self, key) < 0:
                raise TrainingError(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("image_size", "context_length", "max_steps", "threads",
                    "checkpoint_every"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise TrainingError(f"{key} must be a positive integer, got {value}")
        if self.backgrounds is not None and not Path(self.backgrounds).is_dir():
            raise TrainingError(f"backgrounds={self.backgrounds!r} is not a folder; give a "
                                "folder of photos or textures, or leave it out")
        if self.freeze_text and self.freeze_image:
            raise TrainingError("freeze_text and freeze_image together leave nothing to train")
        if self.resume and self.overwrite:
            raise TrainingError("resume and overwrite contradict each other; choose one")
        return self

    @property
    def peak_lr(self) -> float:
        """`lr`, or its default: 5e-4 from scratch, 1e-5 for fine-tuning."""
        if self.lr is not None:
            return self.lr
        return 1e-5 if self.init is not None else 5e-4

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of the options (JSON- and checkpoint-safe)."""
        return asdict(self)


def _check_choice(key: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise TrainingError(f"{key}={value!r} is not one of {', '.join(choices)}")


def _check_positive(cfg: TrainConfig, keys: tuple[str, ...]) -> None:
    for key in keys:
        value = getattr(cfg, key)
        if not isinstance(value, int) or value < 1:
            raise TrainingError(f"{key} must be a positive integer, got {value!r}")


def _check_range(
    key: str, value: float, low: float, high: float | None, low_open: bool = False
) -> None:
    too_low = value <= low if low_open else value < low
    if too_low or (high is not None and value > high):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        bound = bound.replace("None", "inf")
        raise TrainingError(f"{key}={value!r} is out of range {bound}")


# ---- resolving the model a config names ------------------------------------------------------
@dataclass
class BuiltModel:
    """The trainable pieces a config resolves to.

    Attributes:
        module: open_clip `CLIP` / `CustomTextCLIP` (float32, trainable).
        tokenizer: list[str] -> LongTensor [N, context_length].
        model_cfg: the open_clip model config (written to the model folder).
        preprocess: image preprocessing of the model.
        context_length: tokenizer context length.
        tokenizer_name: `open_clip` (CLIP BPE) or a Hugging Face tokenizer id.
    """

    module: Any
    tokenizer: Callable[[list[str]], Any]
    model_cfg: dict[str, Any]
    preprocess: PreprocessConfig
    context_length: int
    tokenizer_name: str


def build_model(cfg: TrainConfig) -> BuiltModel:
    """Build the model of `cfg`: a fresh architecture (`model`) or loaded weights (`init`).

    Fresh weights are seeded by `cfg.seed`.
    """
    if cfg.init is not None:
        return _load_init(cfg)
    assert cfg.model is not None
    model_cfg, pre = _arch_config(cfg.model)
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    if cfg.image_size:
        vision["image_size"] = cfg.image_size
    if cfg.context_length:
        text["context_length"] = cfg.context_length
    size = vision.get("image_size", 224)
    pre_kwargs = {"image_size": int(max(size) if isinstance(size, list | tuple) else size)}
    pre_kwargs.update({k: tuple(v) if isinstance(v, list) else v for k, v in pre.items()
                       if k != "image_size"})
    import torch

    torch.manual_seed(cfg.seed)
    module = module_from_config(model_cfg)
    tokenizer, tok_name = tokenizer_for(model_cfg)
    return BuiltModel(module, tokenizer, model_cfg, PreprocessConfig(**pre_kwargs),
                      int(text.get("context_length", 77)), tok_name)


def _arch_config(spec: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(open_clip model config, preprocess overrides) for an arch name or a JSON file."""
    path = Path(spec)
    if spec.endswith(".json") or path.is_file():
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as ex:
            raise TrainingError(f"cannot read model config {spec}: {ex}") from ex
        model_cfg = raw.get("model_cfg", raw)
        pre = raw.get("preprocess", {}) if "model_cfg" in raw else {}
    else:
        import open_clip

        model_cfg, pre = open_clip.get_model_config(spec), {}
        if model_cfg is None:
            names = open_clip.list_models()
            near = difflib.get_close_matches(spec, names, n=5, cutoff=0.5)
            raise TrainingError(
                f"unknown architecture {spec!r}; close matches: {', '.join(near) or 'none'} "
                f"({len(names)} architectures in open_clip.list_models(); or pass a JSON "
                "model config file; to fine-tune a loadable model such as 'mini', use init)"
            )
    if not isinstance(model_cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(
            model_cfg):
        raise TrainingError(f"{spec}: a model config needs embed_dim, vision_cfg and text_cfg")
    return copy.deepcopy(model_cfg), dict(pre)


def module_from_config(model_cfg: dict[str, Any]) -> Any:
    """Instantiate an open_clip CLIP / CustomTextCLIP with fresh weights from its config."""
    from clipsift.models.openclip_loader import build_module

    if "multimodal_cfg" in model_cfg:
        raise TrainingError("CoCa architectures (multimodal_cfg) are not supported for training")
    try:
        return build_module(model_cfg)
    except (TypeError, ValueError, KeyError, AssertionError) as ex:
        raise TrainingError(f"cannot build a model from this config: {ex}") from ex


@functools.lru_cache(maxsize=8)
def _simple_tokenizer(context_length: int) -> Any:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


def tokenizer_for(model_cfg: dict[str, Any]) -> tuple[Callable[[list[str]], Any], str]:
    """(tokenizer, name) for a model config: the CLIP BPE unless an HF tokenizer is named."""
    text = model_cfg["text_cfg"]
    ctx = int(text.get("context_length", 77))
    hf_name = text.get("hf_tokenizer_name")
    if hf_name:
        from open_clip.tokenizer import HFTokenizer

        return HFTokenizer(hf_name, context_length=ctx, **(text.get("tokenizer_kwargs") or {})), \
            hf_name
    return _simple_tokenizer(ctx), "open_clip"


def _load_init(cfg: TrainConfig) -> BuiltModel:
    """Load the weights to fine-tune with `clipsift.models.load` (any name or model folder)."""
    from clipsift.models import load

    assert cfg.init is not None
    loaded = load(cfg.init)
    module = getattr(loaded, "module", None)
    model_cfg = getattr(loaded, "model_cfg", None)
    if module is None or model_cfg is None:
        raise TrainingError(
            f"cannot fine-tune {cfg.init!r}: training needs an open_clip-backed model with a "
            "known architecture config (an open_clip ARCH:TAG, or a clipsift model folder)"
        )
    _check_overrides(cfg, model_cfg)
    module = module.float()
    for p in module.parameters():
        p.requires_grad_(True)
    ctx = int(model_cfg["text_cfg"].get("context_length", loaded.context_length))
    tok_name = model_cfg["text_cfg"].get("hf_tokenizer_name") or "open_clip"
    return BuiltModel(module, loaded.tokenizer, copy.deepcopy(model_cfg),
                      copy.deepcopy(loaded.preprocess_cfg), ctx, tok_name)


def _check_overrides(cfg: TrainConfig, model_cfg: dict[str, Any]) -> None:
    for key, sub in (("image_size", "vision_cfg"), ("context_length", "text_cfg")):
        asked, has = getattr(cfg, key), model_cfg[sub].get(key)
        if asked and asked != has:
            raise TrainingError(f"{key}={asked} differs from the model's {has}; {key} can "
                                "only be set when training from scratch")


def set_train_mode(module: Any, freeze_image: bool, freeze_text: bool) -> None:
    """Train mode, with frozen towers' weights fixed (requires_grad off) and in eval mode."""
    module.train()
    for name, p in module.named_parameters():
        is_image = name.startswith("visual.")
        is_text = not is_image and not name.startswith("logit_")
        if (freeze_image and is_image) or (freeze_text and is_text):
            p.requires_grad_(False)
    for name, child in module.named_children():
        if (freeze_image and name == "visual") or (freeze_text and name != "visual"):
            child.eval()


# ---- device, precision, optimizer, schedule ----------------------------------------------
def resolve_device(name: str) -> Any:
    """`auto` -> cuda when available, else cpu."""
    import torch

    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("device=cuda but no CUDA device is available; use cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_precision(precision: str, device: Any) -> tuple[Callable[[], Any], Any]:
    """Return (autocast context factory, GradScaler or None) for a precision name."""
    import torch

    cuda = device.type == "cuda"
    if precision == "auto":
        precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
    if precision == "fp16" and not cuda:
        raise TrainingError("precision=fp16 needs a CUDA device; on CPU use bf16 or fp32")
    if precision == "fp32":
        return contextlib.nullcontext, None
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def make_optimizer(module: Any, cfg: TrainConfig) -> Any:
    """AdamW; no decay on gains, biases, position/class embeddings and the temperature."""
    import torch

    skip = set(module.no_weight_decay()) if hasattr(module, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        position = "embedding" in name and "token_embedding" not in name
        plain = p.ndim < 2 or name in skip or "logit_" in name or position
        (no_decay if plain else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.peak_lr, betas=(0.9, 0.98), eps=1e-6)


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to 0."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * peak * (1.0 + math.cos(math.pi * progress))
