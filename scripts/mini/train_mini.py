#!/usr/bin/env python3
"""Train the bundled offline model `mini` from the pairs made by prepare_data.py.

    .venv/bin/python scripts/mini/train_mini.py                 # full recipe (~45 min, 2 cores)
    .venv/bin/python scripts/mini/train_mini.py --max-steps 20  # smoke run, measures samples/s
    .venv/bin/python scripts/mini/train_mini.py --resume        # continue after a stop

It trains with `clipsift.train` (the code behind `clipsift train`) in a run folder
(default work-data/mini/run: checkpoints, metrics.jsonl) and then copies the model folder
files (clipsift_model.json, model.safetensors as fp16) and the metrics into
clipsift/assets/mini/. Re-running it rebuilds the model.

The architecture is a small open_clip ViT: 64 px images in 8 px patches, width 192, 6
layers; a text tower of width 128, 4 layers, 32-token context; 256-d embeddings (9.9M
parameters, 19.8 MB as fp16). The text tower's token table (49,408 CLIP BPE tokens x
width) dominates the size, which is why the text width is 128; the vision width of 192
(not 256) trades a little capacity for ~1.6x the samples/s, i.e. more epochs in the same
time. `--vision-width 256` gives 12.0M parameters (24.1 MB); `--tower resnet` swaps in a
small ModifiedResNet image tower (tried, see the model card). Augmentation is strong, and
transparent images (clip art, emoji, cut-out photos) are mostly put on background photos
(terrain, sky and nature photos made by prepare_data.py), because most training images are
drawings while the zero-shot tests are photos.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

# Idle OpenMP threads must sleep, not spin: the data-loading worker shares the 2 cores.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[2]
MAX_BYTES = 25_000_000

MINI_ARCH = {
    "embed_dim": 256,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 192, "layers": 6, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 4},
}
# open_clip's ModifiedResNet (the RN50 family's tower) scaled down: base width 24, two
# bottleneck blocks per stage, attention pooling; --vision-width sets the base width.
RESNET_VISION = {"image_size": 64, "layers": [2, 2, 2, 2], "width": 24, "head_width": 64}
RECIPE = {
    "batch_size": 128,
    "epochs": 12,
    "lr": 1e-3,
    "warmup_steps": 100,
    "weight_decay": 0.1,
    "augment": 1.0,
    "background_share": 0.8,
    "val_fraction": 0.05,
    "val_max_items": 1000,
    "seed": 0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Relative paths are taken from the repository root."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="work-data/mini/pairs.parquet")
    ap.add_argument(
        "--backgrounds",
        default="work-data/mini/backgrounds",
        help="background photos put under transparent images ('' for none)",
    )
    ap.add_argument("--run-dir", default="work-data/mini/run")
    ap.add_argument(
        "--assets",
        default="clipsift/assets/mini",
        help="where the finished model folder files are copied",
    )
    ap.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    ap.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    ap.add_argument("--lr", type=float, default=RECIPE["lr"])
    ap.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop early (smoke runs); nothing is copied to --assets",
    )
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: cores)")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--tower", choices=("vit", "resnet"), default="vit", help="image tower")
    ap.add_argument("--vision-width", type=int, default=None)
    ap.add_argument("--vision-layers", type=int, default=None, help="ViT layers")
    ap.add_argument("--text-layers", type=int, default=MINI_ARCH["text_cfg"]["layers"])
    return ap.parse_args(argv)


def arch_from(args: argparse.Namespace) -> dict:
    arch = json.loads(json.dumps(MINI_ARCH))
    if args.tower == "resnet":
        arch["vision_cfg"] = dict(RESNET_VISION)
    elif args.vision_layers:
        arch["vision_cfg"]["layers"] = args.vision_layers
    if args.vision_width:
        arch["vision_cfg"]["width"] = args.vision_width
    arch["text_cfg"]["layers"] = args.text_layers
    return arch


def fp16_bytes(arch: dict) -> int:
    from clipsift.train.config import module_from_config

    return 2 * sum(t.numel() for t in module_from_config(arch).state_dict().values())


def make_progress(log: list[float]):
    last = [time.time()]

    def on_progress(ev) -> None:
        if ev.kind in ("start", "warning", "done"):
            print(f"[{ev.kind}] {ev.message}", flush=True)
        elif ev.kind == "step":
            log.append(ev.samples_per_s)
            if time.time() - last[0] > 30 or ev.step == ev.total_steps:
                last[0] = time.time()
                loss = float("nan") if ev.loss is None else ev.loss
                print(
                    f"  step {ev.step}/{ev.total_steps} epoch {ev.epoch} loss {loss:.4f} "
                    f"lr {ev.lr:.2e} {ev.samples_per_s:.1f} samples/s",
                    flush=True,
                )
        elif ev.kind == "epoch":
            print("[epoch] " + json.dumps(ev.metrics.to_json()), flush=True)

    return on_progress


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.chdir(REPO)  # relative paths (recorded in the model config) are repository paths
    from clipsift.train import TrainConfig, train

    if not Path(args.data).is_file():
        print(f"no pairs at {args.data}; run scripts/mini/prepare_data.py first", file=sys.stderr)
        return 2
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    arch = arch_from(args)
    size = fp16_bytes(arch)
    print(f"architecture: {json.dumps(arch)}\nweights as fp16: {size / 1e6:.1f} MB", flush=True)
    if size > MAX_BYTES:
        print(f"too large for the package (limit {MAX_BYTES / 1e6:.0f} MB)", file=sys.stderr)
        return 2
    arch_path = run_dir / "mini_arch.json"
    arch_path.write_text(json.dumps(arch, indent=2) + "\n", encoding="utf-8")
    recipe = {**RECIPE, "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}
    cfg = TrainConfig(
        data=args.data,
        output=str(run_dir),
        model=str(arch_path),
        name="mini",
        workers=args.workers,
        threads=args.threads,
        max_steps=args.max_steps,
        resume=args.resume,
        overwrite=not args.resume,
        save_dtype="fp16",
        precision="fp32",
        backgrounds=args.backgrounds or None,
        **recipe,
    )
    speeds: list[float] = []
    result = train(cfg, on_progress=make_progress(speeds))
    steady = speeds[len(speeds) // 4 :] or speeds
    print(
        f"done in {result.seconds:.0f} s: {result.steps} steps, "
        f"{statistics.median(steady):.1f} samples/s (median after warm-up), "
        f"{result.bad_images} bad images",
        flush=True,
    )
    if args.max_steps:
        return 0
    assets = Path(args.assets)
    assets.mkdir(parents=True, exist_ok=True)
    for name in ("clipsift_model.json", "model.safetensors"):
        shutil.copy2(run_dir / name, assets / name)
    shutil.copy2(run_dir / "metrics.jsonl", assets / "training_metrics.jsonl")
    print(
        f"copied the model folder to {assets} "
        f"({(assets / 'model.safetensors').stat().st_size / 1e6:.1f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
