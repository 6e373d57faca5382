"""What `--fast-decode` buys and costs: exact decoding (the default: every image decoded
whole) against reduced-scale JPEG decoding (`fast_decode=True`: JPEG draft at 1/2-1/8
scale, never below the model's 224 px input), ViT-B-32 with random weights.

    .venv/bin/python bench/bench_fast_decode.py --workdir /tmp/benchFD --large 200 \
        --json bench/results/fast-decode.json

Sets: the 1,000 ImageNet sample photos (../shared/data, typically 500x375) and `--large`
JPEGs of 3, 6, 9 and 12 megapixels made by upscaling them (bench/_common.make_large).
For each set and mode, in alternating order per round:
  decode only  open + preprocess every file in this process, one thread;
  end to end   `embed_items(workers=0)`: decode threads + encoder in this process;
each as wall-clock images/s and as CPU milliseconds per image (this process's CPU time,
all threads: the figure that holds on a machine shared with other jobs, where wall-clock
rates drift by several times), and, once per set, the cosine between each image's fast
and exact vectors (min, 1st percentile, median, mean). Random weights: cosines measure
how much the pixels moved as this architecture sees them; trained weights may react
differently.
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


def _timed(fn, n: int) -> tuple[Any, float, float]:
    """(fn(), images/s wall-clock, CPU ms per image of this process, all threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return out, n / wall, 1000 * cpu / n


def decode_only(model, files: list[Path], fast: bool) -> tuple[float, float]:
    """(images/s, CPU ms per image) of open + preprocess alone, one thread (torch too, as
    in a decode worker: idle intra-op threads would spin and count as CPU)."""
    import torch

    from clipsift.inputs.images import draft_size_for, open_image

    draft = draft_size_for(fast, model.image_size)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, rate, cpu = _timed(lambda: [model.preprocess(open_image(f, draft)) for f in files],
                              len(files))
    finally:
        torch.set_num_threads(threads)
    return rate, cpu


def embed(model, files: list[Path], fast: bool) -> tuple[float, float, np.ndarray]:
    """(images/s, CPU ms per image, vectors [N, D]) through the bulk pipeline, in-process
    (workers=0, so every CPU second is this process's)."""
    from clipsift.engines.local import embed_items
    from clipsift.inputs.sources import iter_items

    def run() -> list[np.ndarray]:
        return [r.vector for b in embed_items(model, iter_items([str(f) for f in files]),
                                              batch_size=64, workers=0, fast_decode=fast)
                for r in b]

    vecs, rate, cpu = _timed(run, len(files))
    return rate, cpu, np.stack(vecs)


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a * b, axis=1)  # unit rows: [N]
    return {"min": float(cos.min()), "p1": float(np.percentile(cos, 1)),
            "median": float(np.median(cos)), "mean": float(cos.mean()),
            "below_0.999": int((cos < 0.999).sum()), "n": len(cos)}


def _speedup(cpu: dict[str, list[float]]) -> float:
    """Median over rounds of exact CPU / fast CPU per image."""
    return statistics.median(e / f for e, f in zip(cpu["exact"], cpu["fast"], strict=True))


def run_set(model, name: str, files: list[Path], rounds: int) -> dict[str, Any]:
    keys = ("decode_per_s", "decode_cpu_ms", "end_to_end_per_s", "end_to_end_cpu_ms")
    out: dict[str, dict[str, list[float]]] = {k: {m: [] for m in MODES} for k in keys}
    vectors: dict[str, np.ndarray] = {}
    for r in range(rounds):
        for mode in (list(MODES) if r % 2 == 0 else list(MODES)[::-1]):
            d_rate, d_cpu = decode_only(model, files, MODES[mode])
            e_rate, e_cpu, vectors[mode] = embed(model, files, MODES[mode])
            for key, value in zip(keys, (d_rate, d_cpu, e_rate, e_cpu), strict=True):
                out[key][mode].append(round(value, 3))
            print(f"{name} round {r} {mode}: decode {d_rate:.1f}/s {d_cpu:.1f} ms CPU, end "
                  f"to end {e_rate:.2f}/s {e_cpu:.0f} ms CPU (load {load_avg()})", flush=True)
    return {"set": name, "files": len(files), **out,
            "cpu_speedup_decode": _speedup(out["decode_cpu_ms"]),
            "cpu_speedup_end_to_end": _speedup(out["end_to_end_cpu_ms"]),
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
        print(f"{s['set']}: CPU per image, end to end x{s['cpu_speedup_end_to_end']:.2f}, "
              f"decode x{s['cpu_speedup_decode']:.2f}; cosine min {c['min']:.5f}, p1 "
              f"{c['p1']:.5f}, median {c['median']:.6f}")
    if args.json:
        write_json(Path(args.json), result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
