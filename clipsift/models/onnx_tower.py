"""The image tower in ONNX Runtime: exported once (and for int8, quantized), cached under
`$CLIPSIFT_CACHE/onnx/` keyed by the weights, so only the first load of a model pays for the
export (seconds to a minute).
"""

from __future__ import annotations

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
from clipsift.models.precision import cpu_has_vnni

if TYPE_CHECKING:
    from clipsift.models.base import ClipModel

#: Bumped when the export or quantization recipe changes (invalidates the cache).
_RECIPE = "ort-v2"


class _TowerModule(torch.nn.Module):
    """Wraps a backend's image features as a module whose parameters export with it."""

    def __init__(self, model: ClipModel, precision: str) -> None:
        super().__init__()
        owner = model.module
        if not isinstance(owner, torch.nn.Module):
            raise UsageError(f"precision {precision} needs a torch model; {model.name!r} "
                             f"({model.backend}) has none")
        self.owner = owner
        self._features = model.image_features

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._features(pixels)  # [N, 3, H, W] -> [N, D]


@dataclass
class OnnxImageTower:
    """The image tower as an ONNX Runtime session (fp32, or int8 weights).

    Calling it maps a float32 batch [N, 3, H, W] to float32 features [N, D] (unnormalised),
    like `ClipModel.image_features`.

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
    quantization, to `target`, atomically.

    Every temporary file lives in a private folder inside the cache directory itself (the
    same file system, so the final `os.replace` is an atomic rename, never a copy), and that
    folder is removed whatever happens. Concurrent exports of the same model (threads or
    processes) each work in their own folder; readers only ever see a complete file.
    """
    example = torch.zeros(2, 3, image_size, image_size)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
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
        done = fp32
        if kind == "int8":
            done = Path(tmp) / "tower.int8.onnx"
            _quantize(fp32, done)
        os.replace(done, target)  # same directory tree: atomic


def _quantize(fp32: Path, target: Path) -> None:
    """int8 weights (per channel) with dynamically quantized activations."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # the quantizer advises on the root logger
    try:
        quantize_dynamic(str(fp32), str(target), weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=not cpu_has_vnni())
    finally:
        logging.disable(logging.NOTSET)
