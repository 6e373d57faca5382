"""What `--fast-decode` buys and costs: exact decoding (the default: every image decoded
whole) against reduced-scale JPEG decoding (`fast_decode=True`: JPEG draft at 1/2-1/8
scale, never below the model's 224 px input), ViT-B-32 with random weights.

    .venv/bin/python bench/bench_fast_decode.py --workdir /tmp/benchL --large 200 \
        --json bench/results/fast-decode.json

Sets: the 1,000 ImageNet sample photos (../shared/data, typically 500x375) and `--large`
JPEGs of 3, 6, 9 and 12 megapixels made by upscaling them (bench/_common.make_large).
For each set and mode, in alternating order per round:
  decode only  open + preprocess every file in this process, one thread (images/s);
  end to end   `embed_items` with its default decode workers (images/s);
and, once per set, the cosine between each image's fast and exact vectors (min, 1st
percentile, median, mean). Random weights: cosines measure how much the pixels moved as
this architecture sees them; trained weights may react differently.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    extract_photos,
    load_avg,
    machine_info,
    make_large,
    vit_b32_weights,
    write_json,
)

MODES = {"exact": False, "fast": True}


def decode_rate(model, files: list[Path], fast: bool) -> float:
    """Images/s of open + preprocess alone, one thread, this process."""
    from clipsift.inputs.images import draft_size_for, open_image

    draft = draft_size_for(fast, model.image_size)
    start = time.perf_counter()
    for f in files:
        model.preprocess(open_image(f, draft))
    return len(files) / (time.perf_counter() - start)


def embed(model, files: list[Path], fast: bool) -> tuple[float, np.ndarray]:
    """(images/s end to end, vectors [N, D]) through the bulk pipeline, default workers."""
    from clipsift.engines.local import embed_items
    from clipsift.inputs.sources import iter_items

    start = time.perf_counter()
    vecs = [r.vector for b in embed_items(model, iter_items([str(f) for f in files]),
                                          batch_size=64, fast_decode=fast) for r in b]
    rate = len(files) / (time.perf_counter() - start)
    return rate, np.stack(vecs)


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a * b, axis=1)  # unit rows: [N]
    return {"min": float(cos.min()), "p1": float(np.percentile(cos, 1)),
            "median": float(np.median(cos)), "mean": float(cos.mean()),
            "below_0.999": int((cos < 0.999).sum()), "n": len(cos)}


def run_set(model, name: str, files: list[Path], rounds: int) -> dict[str, Any]:
    decode = {m: [] for m in MODES}
    end_to_end = {m: [] for m in MODES}
    vectors: dict[str, np.ndarray] = {}
    for r in range(rounds):
        for mode in (list(MODES) if r % 2 == 0 else list(MODES)[::-1]):
            decode[mode].append(decode_rate(model, files, MODES[mode]))
            rate, vecs = embed(model, files, MODES[mode])
            end_to_end[mode].append(rate)
            vectors[mode] = vecs
            print(f"{name} round {r} {mode}: decode {decode[mode][-1]:.1f}/s, end to end "
                  f"{rate:.2f}/s (load {load_avg()})", flush=True)
    ratio = [f / e for f, e in zip(end_to_end["fast"], end_to_end["exact"], strict=True)]
    dratio = [f / e for f, e in zip(decode["fast"], decode["exact"], strict=True)]
    return {"set": name, "files": len(files), "decode_per_s": decode,
            "end_to_end_per_s": end_to_end, "fast_over_exact_end_to_end": ratio,
            "fast_over_exact_decode": dratio,
            "median_speedup_end_to_end": statistics.median(ratio),
            "median_speedup_decode": statistics.median(dratio),
            "cosine_fast_to_exact": cosines(vectors["fast"], vectors["exact"]),
            "load_avg": load_avg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=None, help="keep data here (default: a temp dir)")
    p.add_argument("--large", type=int, default=200, help="large JPEGs to make (0: none)")
    p.add_argument("--limit", type=int, default=None, help="use only N sample photos")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-fast-decode-"))
    import clipsift

    photos = extract_photos(work / "photos", args.limit)
    sets = {"photos": photos}
    if args.large:
        sets["large"] = make_large(photos, work / "large", args.large)
    model = clipsift.load(f"ViT-B-32:{vit_b32_weights(work)}")
    result: dict[str, Any] = {"machine": machine_info(), "load_before": load_avg(),
                              "argv": sys.argv[1:], "model": "ViT-B-32 (random weights)",
                              "sets": [run_set(model, n, f, args.rounds)
                                       for n, f in sets.items()]}
    result["load_after"] = load_avg()
    for s in result["sets"]:
        c = s["cosine_fast_to_exact"]
        print(f"{s['set']}: end to end x{s['median_speedup_end_to_end']:.2f}, decode "
              f"x{s['median_speedup_decode']:.2f}; cosine min {c['min']:.5f}, p1 "
              f"{c['p1']:.5f}, median {c['median']:.6f}")
    if args.json:
        write_json(Path(args.json), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
