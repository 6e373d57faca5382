#!/usr/bin/env python3
"""Measure the bundled `mini` model (or any model) for its model card.

    .venv/bin/python scripts/mini/evaluate_mini.py                    # mini, writes scores.json
    .venv/bin/python scripts/mini/evaluate_mini.py --model NAME --out /tmp/s.json

Zero-shot top-1 on the CIFAR-10 test set (10 classes, 10,000 images) and top-1/top-5 over
the 1,000 classes of the ImageNet sample photos (one photo per class), both from
../shared/data; held-out retrieval recall@5 from the training metrics. Neither test set
was used in training.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]
PHOTO_TEMPLATES = ["a photo of a {}.", "a blurry photo of a {}.", "a low resolution photo of "
                   "a {}.", "a photo of the small {}.", "a drawing of a {}.", "a picture of a {}."]


def _extract(tar_path: Path, dest: Path) -> None:
    with tarfile.open(tar_path) as tf:
        tf.extractall(dest, filter="data")


def _embed(model, paths: list[Path]) -> np.ndarray:
    from clipsift.engines.local import embed_items
    from clipsift.inputs.sources import iter_items

    vecs = []
    for batch in embed_items(model, iter_items([str(p) for p in paths]), batch_size=256):
        for r in batch:
            if r.vector is None:
                raise RuntimeError(f"{r.item.key}: {r.error}")
            vecs.append(r.vector)
    return np.stack(vecs)


def _accuracy(model, vecs, truth, classes, templates, ks=(1, 5)) -> dict[str, float]:
    from clipsift.zeroshot.classes import class_embeddings

    scores = vecs @ class_embeddings(model, classes, templates).T  # [N, C]
    order = np.argsort(-scores, axis=1)
    return {f"top{k}": float(np.mean([t in row[:k] for t, row in zip(truth, order,
                                                                      strict=True)]))
            for k in ks if k <= len(classes)}


def cifar10(model, tmp: Path) -> dict:
    _extract(SHARED / "cifar10-test.tar", tmp)
    root = tmp / "cifar10" / "test"
    paths, truth = [], []
    for ci, name in enumerate(CIFAR_CLASSES):
        files = sorted((root / name).glob("*.jpg"))
        paths += files
        truth += [ci] * len(files)
    vecs = _embed(model, paths)
    names = [c.replace("automobile", "car") for c in CIFAR_CLASSES]
    return {
        "images": len(paths),
        "labels_only": _accuracy(model, vecs, truth, names, None, ks=(1,)),
        "ensemble": _accuracy(model, vecs, truth, names, PHOTO_TEMPLATES, ks=(1,)),
        "templates": PHOTO_TEMPLATES,
    }


def imagenet(model, tmp: Path) -> dict:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    _extract(SHARED / "imagenet-samples.tar", tmp)
    files = sorted((tmp / "imagenet-samples").glob("*.JPEG"))
    wnids = sorted({f.name.split("_", 1)[0] for f in files})
    index = {w: i for i, w in enumerate(wnids)}  # standard order: sorted wnids
    truth = [index[f.name.split("_", 1)[0]] for f in files]
    vecs = _embed(model, files)
    from clipsift.zeroshot.templates import named_templates

    return {
        "images": len(files),
        "labels_only": _accuracy(model, vecs, truth, list(IMAGENET_CLASSNAMES), None),
        "imagenet80": _accuracy(model, vecs, truth, list(IMAGENET_CLASSNAMES),
                                named_templates("imagenet80")),
    }


def retrieval(metrics_path: Path) -> dict | None:
    if not metrics_path.is_file():
        return None
    lines = [json.loads(x) for x in metrics_path.read_text().splitlines() if x.strip()]
    return lines[-1] if lines else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="mini")
    ap.add_argument("--out", default=str(REPO / "clipsift/assets/mini/scores.json"))
    args = ap.parse_args(argv)
    import clipsift

    model = clipsift.load(args.model)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        result = {"model": args.model, "cifar10_test": cifar10(model, Path(tmp))}
        result["imagenet_samples"] = imagenet(model, Path(tmp))
    run_metrics = Path(args.model) / "metrics.jsonl"  # a training run folder
    shipped = REPO / "clipsift/assets/mini/training_metrics.jsonl"
    result["heldout_retrieval"] = retrieval(run_metrics if run_metrics.is_file() else shipped)
    result["seconds"] = round(time.time() - start, 1)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    json.dump(result, sys.stdout, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
