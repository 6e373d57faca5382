"""Text-embedding speed on short prompts: padding trimmed to the batch's last end-of-text
token (clipsift's default for causal CLIP text towers) vs full context padding.

    .venv/bin/python bench/bench_text.py                  # ViT-B-32, random weights
    .venv/bin/python bench/bench_text.py --model mini     # the bundled model

Prompts: "a photo of a {}." (and a few other templates) over the 1,000 ImageNet class
names, so typical zero-shot prompts of 6-15 tokens. Both modes embed the same strings;
the report gives strings/s, the speed-up and the largest absolute difference between the
two sets of unit embeddings (the goal: >= 3x faster, equal to 1e-5).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import ROOT, load_avg, machine_info, markdown_table, vit_b32_weights, write_json

TEMPLATES = ("a photo of a {}.", "a blurry photo of the {}.", "art of the {}.", "{}",
             "a close-up photo of a small {}.")


def prompts(count: int) -> list[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    out = [t.format(c) for t in TEMPLATES for c in IMAGENET_CLASSNAMES]
    return out[:count]


def rate(model: Any, texts: list[str], batch_size: int, reps: int) -> tuple[float, Any]:
    """Best strings/s over `reps` runs of `encode_texts`, and the embeddings."""
    emb = model.encode_texts(texts[: batch_size], batch_size=batch_size)  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        emb = model.encode_texts(texts, batch_size=batch_size)
        best = min(best, time.perf_counter() - t0)
    return len(texts) / best, emb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model name (default: ViT-B-32, random)")
    p.add_argument("--count", type=int, default=1000, help="prompts to embed")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "text.json"))
    args = p.parse_args(argv)

    import numpy as np

    import clipsift

    with tempfile.TemporaryDirectory(prefix="clipsift-bench-text-") as tmp:
        name = args.model or f"ViT-B-32:{vit_b32_weights(Path(tmp))}"
        model = clipsift.load(name)
    pool = getattr(model, "trim_pool", None)
    if pool is None:
        raise SystemExit(f"{model.name}: padding is not trimmed for this text tower")
    texts = prompts(args.count)
    tokens = [model.count_tokens(t) + 2 for t in texts]
    load_before = load_avg()
    model.trim_pool = None
    full_rate, full = rate(model, texts, args.batch_size, args.reps)
    full_load = load_avg()
    model.trim_pool = pool
    trim_rate, trimmed = rate(model, texts, args.batch_size, args.reps)
    diff = float(np.abs(full - trimmed).max())
    result = {
        "machine": machine_info(), "model": model.name, "strings": len(texts),
        "tokens_mean": round(float(np.mean(tokens)), 1), "tokens_max": max(tokens),
        "context_length": model.context_length, "batch_size": args.batch_size,
        "full_padding_per_s": round(full_rate, 1), "trimmed_per_s": round(trim_rate, 1),
        "speedup": round(trim_rate / full_rate, 2), "max_abs_diff": diff,
        "load": {"before": load_before, "after_full": full_load, "after_trimmed": load_avg()},
    }
    out = Path(args.out)
    write_json(out, result)
    md = markdown_table(
        ["model", "strings", "tokens (mean/max)", "full padding /s", "trimmed /s", "speed-up",
         "max |diff|", "load 1 min"],
        [[model.name if args.model else "ViT-B-32 (random)", len(texts),
          f"{result['tokens_mean']}/{result['tokens_max']}", result["full_padding_per_s"],
          result["trimmed_per_s"], f"{result['speedup']:.2f}x", f"{diff:.1e}",
          f"{load_before[0]:.1f}-{load_avg()[0]:.1f}"]])
    out.with_suffix(".md").write_text(md + "\n", encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
