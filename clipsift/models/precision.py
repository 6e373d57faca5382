"""Numeric precision of a model: the names, what each needs, and the autocast context.

    fp32   the reference path: plain float32 torch on CPU or GPU.
    fp32-onnx  float32 too, but the image tower runs in ONNX Runtime with all its graph
           optimisations (fused LayerNorm and GELU kernels); CPU only. Embeddings match
           fp32 to ~1e-5 (docs/benchmarks.md).
    bf16   torch autocast to bfloat16. On CUDA, and on CPUs with native bf16 units
           (AVX512-BF16 or AMX); elsewhere it is emulated and slower than fp32, and the
           model's `notice` says so.
    fp16   torch autocast to float16, for CUDA only.
    int8   the image tower runs in ONNX Runtime with int8 weights and dynamically
           quantized activations (VNNI/AVX2 integer kernels); CPU only
           (`clipsift.models.onnx_tower`).

This module knows nothing of models: `ClipModel` asks it for its autocast context, and the
loader (`clipsift.models.apply_precision`) switches a loaded model to a precision.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import torch

from clipsift.errors import UsageError

#: Accepted precision names, reference first.
PRECISIONS: tuple[str, ...] = ("fp32", "fp32-onnx", "bf16", "fp16", "int8")
#: Precisions whose image tower runs in ONNX Runtime (CPU only).
ONNX_PRECISIONS = frozenset({"fp32-onnx", "int8"})
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device | str) -> str:
    """Validate `precision` for `device`; returns it lower-cased.

    Raises:
        UsageError: unknown name, or a combination that cannot run (int8 on a GPU,
            fp16 on a CPU), with the valid choices in the message.
    """
    p = precision.strip().lower()
    dev = torch.device(device)
    if p not in PRECISIONS:
        raise UsageError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if p in ONNX_PRECISIONS and dev.type != "cpu":
        raise UsageError(f"precision {p} runs on the CPU (ONNX Runtime), not on {dev}; "
                         "on a GPU use fp16 or bf16")
    if p == "fp16" and dev.type == "cpu":
        raise UsageError("precision fp16 is for CUDA devices; on the CPU use int8 (fastest), "
                         "fp32, or bf16 on CPUs with AVX512-BF16/AMX")
    return p


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of this machine (from /proc/cpuinfo; empty when unknown)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (AVX512-BF16 or AMX-BF16)."""
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


def cpu_has_vnni() -> bool:
    """True when the CPU has VNNI int8 dot products (AVX512-VNNI or AVX-VNNI).

    Without VNNI, ONNX Runtime's AVX2 int8 kernels add pairs of u8 x s8 products in int16,
    which can saturate with full-range weights; 7-bit weights (`reduce_range`) avoid that
    (measured on ViT-B-32: cosine to fp32 0.9996 instead of 0.982).
    """
    return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & cpu_flags())


def autocast_context(precision: str, device: torch.device
                     ) -> contextlib.AbstractContextManager[Any]:
    """The autocast context a model at `precision` on `device` runs its towers in (a no-op
    for fp32, fp32-onnx and int8)."""
    dtype = _AUTOCAST.get(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
