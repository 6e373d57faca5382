"""Numeric precision of a loaded model: the fp32 reference, autocast, and an int8 CPU path.

`clipsift.load(name, precision=...)` calls `apply_precision` on the loaded model:

    fp32   the reference path: plain float32 torch on CPU or GPU.
    fp32-onnx  float32 too, but the image tower runs in ONNX Runtime with all its graph
           optimisations (fused LayerNorm and GELU kernels); CPU only. Embeddings match
           fp32 to ~1e-5; on ViT-B-32 the tower is about 10% faster (docs/benchmarks.md).
    bf16   torch autocast to bfloat16. On CUDA, and on CPUs with native bf16 units
           (AVX512-BF16 or AMX); elsewhere it is emulated and slower than fp32, and the
           model's `notice` says so.
    fp16   torch autocast to float16, for CUDA only.
    int8   the image tower runs in ONNX Runtime with int8 weights and dynamically
           quantized activations (VNNI/AVX2 integer kernels); CPU only. The text tower stays
           fp32 torch (it is cheap once padding is trimmed).

The exported (and, for int8, quantized) tower is cached under `$CLIPSIFT_CACHE/onnx/`,
keyed by the weights, so only the first load of a model pays for the export (seconds to a
minute).

Embeddings always come back as float32 and L2-normalised, whatever the precision.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from clipsift.errors import UsageError

if TYPE_CHECKING:
    from clipsift.models.base import ClipModel

#: Accepted precision names, reference first.
PRECISIONS: tuple[str, ...] = ("fp32", "fp32-onnx", "bf16", "fp16", "int8")
#: Precisions whose image tower runs in ONNX Runtime (CPU only).
ONNX_PRECISIONS = frozenset({"fp32-onnx", "int8"})
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: Bumped when the export or quantization recipe changes (invalidates the cache).
_RECIPE = "ort-v2"


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


def autocast_context(model: ClipModel) -> contextlib.AbstractContextManager[Any]:
    """The autocast context `model` runs its towers in (a no-op for fp32, fp32-onnx, int8)."""
    dtype = _AUTOCAST.get(getattr(model, "precision", "fp32"))
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=model.device.type, dtype=dtype)


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
        model.image_runner = OnnxImageTower.build(model, quantize=p == "int8")
    elif p == "bf16" and model.device.type == "cpu" and not cpu_has_native_bf16():
        slow = ("note: this CPU has no native bfloat16 (AVX512-BF16/AMX), so bf16 is emulated "
                "and usually slower than fp32; precision int8 is the fast CPU path")
        model.notice = f"{model.notice}\n{slow}" if model.notice else slow
    model.precision = p
    return model


class _TowerModule(torch.nn.Module):
    """Wraps a backend's image features as a module whose parameters export with it."""

    def __init__(self, model: ClipModel, precision: str) -> None:
        super().__init__()
        owner = getattr(model, "module", None)
        if not isinstance(owner, torch.nn.Module):
            raise UsageError(f"precision {precision} needs a torch model; {model.name!r} "
                             f"({model.backend}) has none")
        self.owner = owner
        self._features = model._image_features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._features(pixels)  # [N, 3, H, W] -> [N, D]


@dataclass
class OnnxImageTower:
    """The image tower as an ONNX Runtime session (fp32, or int8 weights).

    Calling it maps a float32 batch [N, 3, H, W] to float32 features [N, D] (unnormalised),
    like `ClipModel._image_features`.

    Attributes:
        path: the ONNX file (in the cache).
        session: the onnxruntime InferenceSession.
    """

    path: Path
    session: Any

    @classmethod
    def build(cls, model: ClipModel, threads: int | None = None, *,
              quantize: bool = True) -> OnnxImageTower:
        """Export (+ quantize to int8 when `quantize`) `model`'s image tower, or reuse the
        cached file; open a session."""
        kind = "int8" if quantize else "fp32-onnx"
        try:
            import onnxruntime as ort
        except ImportError as ex:  # pragma: no cover - a declared dependency
            raise UsageError(f"precision {kind} needs onnxruntime: pip install onnxruntime"
                             ) from ex
        tower = _TowerModule(model, kind).eval()
        path = _cache_dir() / f"{_fingerprint(model, tower)}.{kind}.onnx"
        if not path.is_file():
            _export(tower, model.image_size, path, kind)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return cls(path, session)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(None, {"pixels": x})
        return torch.from_numpy(out)  # [N, D]


def _cache_dir() -> Path:
    from clipsift.models.resolve import cache_dir

    folder = cache_dir() / "onnx"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError:  # read-only home: keep the export for this machine's session only
        folder = Path(tempfile.gettempdir()) / "clipsift-onnx"
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _fingerprint(model: ClipModel, tower: torch.nn.Module) -> str:
    """A key for the exported file: the image-tower weights, sizes and library versions."""
    import onnxruntime

    h = hashlib.blake2b(digest_size=16)
    h.update(f"{_RECIPE}|vnni={cpu_has_vnni()}|{model.image_size}|{torch.__version__}|{onnxruntime.__version__}|"
             f"{type(tower.owner).__qualname__}".encode())
    with torch.no_grad():
        for name, tensor in sorted(tower.owner.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _export(tower: torch.nn.Module, image_size: int, target: Path, kind: str) -> None:
    """Export `tower` to ONNX (fp32) and write it, or for `kind` int8 its dynamic
    quantization, to `target`."""
    example = torch.zeros(2, 3, image_size, image_size)
    with tempfile.TemporaryDirectory(prefix="clipsift-export-") as tmp:
        fp32 = Path(tmp) / "tower.onnx"
        # Grad mode on: torch's fused attention fast path (no-grad only) has no ONNX form.
        with warnings.catch_warnings(), torch.inference_mode(False), torch.enable_grad():
            warnings.simplefilter("ignore")  # tracer/deprecation chatter; the library is quiet
            try:
                torch.onnx.export(
                    tower.to("cpu"), (example,), str(fp32), input_names=["pixels"],
                    output_names=["features"], opset_version=17, dynamo=False,
                    dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}},
                )
            except Exception as ex:  # an exporter failure is this model's limitation
                first = (str(ex).strip().splitlines() or [""])[0][:300]
                raise UsageError(f"precision {kind}: cannot export this image tower to ONNX "
                                 f"({type(ex).__name__}: {first}); use fp32") from None
        part = target.with_name(f"{target.name}.{os.getpid()}.part")
        if kind == "int8":
            _quantize(fp32, part)
        else:
            fp32.replace(part)
        part.replace(target)  # atomic: concurrent loads never see half a file


def _quantize(fp32: Path, target: Path) -> None:
    """int8 weights (per channel) with dynamically quantized activations."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # the quantizer advises on the root logger
    try:
        quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=not cpu_has_vnni())
    finally:
        logging.disable(logging.NOTSET)
