"""Model loading: one name gives model + preprocessing + tokenizer.

Names:
    ``ViT-B-32:openai``, ``ViT-B-32:laion2b_s34b_b79k``   open_clip zoo ARCH:TAG
    ``ViT-B-32:/path/model.pt`` (or .bin/.pth/.safetensors) a local checkpoint for ARCH
    ``hf:openai/clip-vit-base-patch32``, ``hf:/path/folder`` Hugging Face CLIP / Chinese-CLIP
    ``hf-hub:ORG/NAME``, ``hf-hub:/path/folder``           an open_clip model repo (or a copy)
    ``/path/to/folder``                                    a clipsift, open_clip-hub or HF folder
    ``mini``                                               the small model bundled offline
    ``NAME``, ``NAME:ARG``                                 a model a plugin registered

Names are parsed once and dispatched from a table: `clipsift.models.registry` (where
plugins named in $CLIPSIFT_PLUGINS register their own models).
"""

from __future__ import annotations

from pathlib import Path

from clipsift.errors import ModelNotAvailable
from clipsift.models.base import ClipModel, ModelInfo, l2_normalize
from clipsift.models.precision import (
    ONNX_PRECISIONS,
    check_precision,
    cpu_has_native_bf16,
)

DEFAULT_MODEL = "ViT-B-32:openai"
MINI_DIR = Path(__file__).resolve().parent.parent / "assets" / "mini"

__all__ = ["DEFAULT_MODEL", "ClipModel", "ModelInfo", "apply_precision", "l2_normalize", "load",
           "mini_available"]


def mini_available() -> bool:
    return (MINI_DIR / "model.safetensors").is_file()


def load(name: str | None = None, *, device: str = "cpu", fallback: bool = True,
         precision: str = "fp32") -> ClipModel:
    """Load a CLIP-family model by name (see the module docstring for the forms).

    Args:
        name: the model name; None means the default (`ViT-B-32:openai`).
        device: "cpu", "cuda", "cuda:1" or "auto".
        fallback: when `name` is None and the default model is not available (offline,
            no cache), load the bundled `mini` model instead and set `model.notice`.
        precision: "fp32" (reference), "fp32-onnx" (CPU: image tower in ONNX Runtime at
            fp32), "int8" (CPU: image tower in ONNX Runtime with int8 weights), "bf16"
            (autocast; CUDA or CPUs with AVX512-BF16/AMX) or "fp16" (CUDA autocast).
            Recorded in `model.precision` and `model.info`.
    Returns:
        A ClipModel; `model.notice` is a one-line message when a fallback happened.
    Raises:
        ModelNotAvailable: weights are not on this machine and cannot be downloaded.
        UnknownModel: the name matches no known form, architecture or tag (close names
            are suggested).
        UsageError: the precision is unknown or does not fit the device.
        CheckpointError: a file exists but cannot be loaded safely or does not fit.

    Example:
        >>> m = load("mini")
        >>> m.encode_texts(["a dog"]).shape == (1, m.dim)
        True
    """
    dev = _device(device)
    check_precision(precision, dev)  # fail before loading weights
    if name is not None:
        return apply_precision(_load_name(name.strip(), dev), precision)
    try:
        model = _load_name(DEFAULT_MODEL, dev)
    except ModelNotAvailable as ex:
        if not (fallback and mini_available()):
            raise
        model = _load_name("mini", dev)
        model.notice = (
            f"note: {DEFAULT_MODEL} is not available here ({ex.reason}); using the bundled "
            "offline model 'mini'. For full quality, run once with network access or pass "
            "--model ARCH:/path/to/weights."
        )
    return apply_precision(model, precision)


def _device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _load_name(name: str, device: str) -> ClipModel:
    from clipsift.models.registry import load_ref, parse_name

    ref = parse_name(name)
    model = load_ref(ref, device)
    model.notice = None
    model.source = ref.source()
    return model


def apply_precision(model: ClipModel, precision: str) -> ClipModel:
    """Switch a freshly loaded model to `precision` (in place); returns the model.

    Args:
        model: a model from `clipsift.load` at fp32.
        precision: one of `PRECISIONS`.
    Raises:
        UsageError: the precision does not fit the device or the backend.

    Example:
        >>> m = apply_precision(clipsift.load("mini"), "int8")
        >>> m.precision
        'int8'
    """
    p = check_precision(precision, model.device)
    if p == "fp32":
        return model
    if p in ONNX_PRECISIONS:
        from clipsift.models.onnx_tower import OnnxImageTower

        model.image_runner = OnnxImageTower.build(model, quantize=p == "int8")
    elif p == "bf16" and model.device.type == "cpu" and not cpu_has_native_bf16():
        slow = ("note: this CPU has no native bfloat16 (AVX512-BF16/AMX), so bf16 is emulated "
                "and usually slower than fp32; precision int8 is the fast CPU path")
        model.notice = f"{model.notice}\n{slow}" if model.notice else slow
    model.precision = p
    return model
