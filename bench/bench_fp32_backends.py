"""fp32 image tower: eager PyTorch vs ONNX Runtime (all graph optimisations), ViT-B-32.

    .venv/bin/python bench/bench_fp32_backends.py [--out bench/results/fp32-backends.json]

Random weights, a random batch of 64 images at 224 px; prints images/s of each (best of
3), the efficiency against 8.8 GFLOP per image and this machine's fp32 matmul rate, and
the largest absolute difference between the two outputs; `--out` also writes them as JSON
with the machine's CPU model, flags and load.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import VIT_B32_IMAGE_GFLOP, load_avg, machine_info, matmul_gflops, write_json


def _rate(fn, batch: int, reps: int = 3) -> float:
    fn()  # warm-up
    best = min(_timed(fn) for _ in range(reps))
    return batch / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    import argparse

    import numpy as np
    import onnxruntime as ort
    import open_clip
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    load_before = load_avg()
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32").eval()
    x = torch.randn(64, 3, 224, 224)

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = model

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.m.encode_image(pixels)

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = str(Path(tmp) / "tower.onnx")
        torch.onnx.export(Tower(), (x[:2],), path, input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False,
                          dynamic_axes={"x": {0: "b"}, "y": {0: "b"}})
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        with torch.inference_mode():
            eager = _rate(lambda: model.encode_image(x), 64)
            ref = model.encode_image(x).numpy()
        onnx = _rate(lambda: session.run(None, {"x": xn}), 64)
        diff = float(np.abs(session.run(None, {"x": xn})[0] - ref).max())
    peak = matmul_gflops()
    for name, rate in (("eager PyTorch", eager), ("ONNX Runtime", onnx)):
        print(f"{name:14s} {rate:6.2f} img/s  efficiency {rate * VIT_B32_IMAGE_GFLOP / peak:.0%}")
    print(f"matmul {peak:.1f} GFLOP/s; max |diff| {diff:.1e}")
    if args.out:
        write_json(Path(args.out), {
            "machine": machine_info(), "argv": sys.argv[1:], "load_before": load_before,
            "load_after": load_avg(), "matmul_gflops": round(peak, 1), "batch": 64,
            "eager_images_per_s": round(eager, 2), "onnx_images_per_s": round(onnx, 2),
            "eager_efficiency": round(eager * VIT_B32_IMAGE_GFLOP / peak, 3),
            "onnx_efficiency": round(onnx * VIT_B32_IMAGE_GFLOP / peak, 3),
            "max_abs_diff": diff})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
