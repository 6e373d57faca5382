"""Effect and speed of the fast precisions against fp32, for the bundled `mini` model (or
ViT-B-32 with random weights while mini is not there yet, or any `--model`).

    .venv/bin/python bench/bench_precision.py                 # mini if bundled, else ViT-B-32
    .venv/bin/python bench/bench_precision.py --model mini --precision int8

Measures, for each precision against fp32 on the same inputs:
  speed     image tower only (`encode_pixels` on a preprocessed batch of real photos);
  cosine    between its and fp32's embeddings of the 1,000 sample photos (min/mean/p1);
  accuracy  zero-shot top-1 on CIFAR-10 test (10,000 images, ../shared/data) with the
            18 "simple" ImageNet templates, when the model is a trained one (mini or
            --model): the drop in points against fp32.
bf16 is included only when the CPU has native bfloat16 (AVX512-BF16/AMX) or on CUDA.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    ROOT,
    SHARED,
    best_rate,
    extract_photos,
    load_avg,
    machine_info,
    markdown_table,
    vit_b32_weights,
    write_json,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="default: mini if bundled, else ViT-B-32")
    p.add_argument("--precision", default=None, help="comma list (default: int8[,bf16])")
    p.add_argument("--device", default="cpu")
    p.add_argument("--photos", type=int, default=1000)
    p.add_argument("--cifar", type=int, default=10000, help="CIFAR-10 test images (0: skip)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "precision.json"))
    return p.parse_args(argv)


def default_precisions(device: str) -> list[str]:
    from clipsift.models.precision import cpu_has_native_bf16

    if device.startswith("cuda"):
        return ["fp16", "bf16"]
    return ["int8", "bf16"] if cpu_has_native_bf16() else ["int8"]


def embed(model: Any, paths: list[Path], batch_size: int):
    import numpy as np

    from clipsift.engines.local import embed_paths

    results, _ = embed_paths(model, [str(p) for p in paths], batch_size=batch_size)
    bad = [r for r in results if r.vector is None]
    if bad:
        raise SystemExit(f"{len(bad)} images failed, e.g. {bad[0].item.key}: {bad[0].error}")
    return np.stack([r.vector for r in results])  # [N, D]


def cifar10(dest: Path, limit: int) -> tuple[list[Path], list[int], list[str]]:
    """CIFAR-10 test images (every class equally, up to `limit`), labels and class names."""
    with tarfile.open(SHARED / "cifar10-test.tar") as tf:
        tf.extractall(dest, filter="data")
    root = dest / "cifar10" / "test"
    classes = sorted(d.name for d in root.iterdir() if d.is_dir())
    per_class = max(1, limit // len(classes))
    paths, labels = [], []
    for i, c in enumerate(classes):
        files = sorted((root / c).glob("*.jpg"))[:per_class]
        paths += files
        labels += [i] * len(files)
    return paths, labels, classes


def zero_shot_top1(model: Any, vectors, labels: list[int], classes: list[str]) -> float:
    import numpy as np

    from clipsift.zeroshot.classifier import ZeroShotClassifier
    from clipsift.zeroshot.templates import named_templates

    clf = ZeroShotClassifier(model, classes, named_templates("simple"))
    probs, _ = clf.probabilities(vectors)
    return float((np.asarray(probs).argmax(1) == np.asarray(labels)).mean())


def compare(name: str, precision: str, ref: dict[str, Any], data: dict[str, Any],
            args: argparse.Namespace) -> dict[str, Any]:
    """One precision against the fp32 reference `ref`."""
    import numpy as np

    import clipsift

    model = clipsift.load(name, device=args.device, precision=precision)
    speed = best_rate(lambda: model.encode_pixels(data["pixels"]), len(data["pixels"]))
    vecs = embed(model, data["photos"], args.batch_size)
    cos = (vecs * ref["photos"]).sum(1)
    row: dict[str, Any] = {
        "precision": precision, "images_per_s": round(speed, 2),
        "speedup": round(speed / ref["images_per_s"], 2),
        "cosine_min": round(float(cos.min()), 5), "cosine_mean": round(float(cos.mean()), 5),
        "cosine_p1": round(float(np.percentile(cos, 1)), 5), "load": load_avg()}
    if "cifar" in data:
        paths, labels, classes = data["cifar"]
        acc = zero_shot_top1(model, embed(model, paths, args.batch_size), labels, classes)
        row["cifar10_top1"] = round(acc, 4)
        row["cifar10_drop_points"] = round(100 * (ref["cifar10_top1"] - acc), 2)
    print(row, flush=True)
    return row


def reference(name: str, data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import clipsift
    from clipsift.inputs.images import open_image

    model = clipsift.load(name, device=args.device)
    data["pixels"] = torch.stack([model.preprocess(open_image(p, model.image_size))
                                  for p in data["photos"][: args.batch_size]])
    ref: dict[str, Any] = {"precision": "fp32", "images_per_s": round(best_rate(
        lambda: model.encode_pixels(data["pixels"]), len(data["pixels"])), 2)}
    ref["photos"] = embed(model, data["photos"], args.batch_size)
    if "cifar" in data:
        paths, labels, classes = data["cifar"]
        ref["cifar10_top1"] = round(zero_shot_top1(
            model, embed(model, paths, args.batch_size), labels, classes), 4)
    ref["load"] = load_avg()
    print({k: v for k, v in ref.items() if k != "photos"}, flush=True)
    return ref


def main(argv: list[str] | None = None) -> int:
    from clipsift.models import mini_available

    args = parse_args(argv)
    precisions = (args.precision.split(",") if args.precision
                  else default_precisions(args.device))
    with tempfile.TemporaryDirectory(prefix="clipsift-bench-precision-") as tmp:
        work = Path(tmp)
        name = args.model or ("mini" if mini_available() else
                              f"ViT-B-32:{vit_b32_weights(work)}")
        trained = args.model is not None or name == "mini"
        data: dict[str, Any] = {"photos": extract_photos(work / "photos", args.photos)}
        if trained and args.cifar:
            data["cifar"] = cifar10(work / "cifar", args.cifar)
        ref = reference(name, data, args)
        rows = [compare(name, p, ref, data, args) for p in precisions]
    shown = name if trained else "ViT-B-32 (random weights)"
    result = {"machine": machine_info(), "model": shown, "reference": {
        k: v for k, v in ref.items() if k != "photos"}, "rows": rows}
    out = Path(args.out)
    write_json(out, result)
    table = [["fp32", ref["images_per_s"], "1.00x", "1", "1", ref.get("cifar10_top1", ""), "",
              f"{ref['load'][0]:.1f}"]]
    table += [[r["precision"], r["images_per_s"], f"{r['speedup']:.2f}x", r["cosine_min"],
               r["cosine_mean"], r.get("cifar10_top1", ""), r.get("cifar10_drop_points", ""),
               f"{r['load'][0]:.1f}"] for r in rows]
    md = f"model: {shown}\n\n" + markdown_table(
        ["precision", "image tower img/s", "speed-up", "cos min", "cos mean", "CIFAR-10 top-1",
         "drop (points)", "load 1 min"], table)
    out.with_suffix(".md").write_text(md + "\n", encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
