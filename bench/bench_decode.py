"""Where should images decode on a CPU-only machine? Decode worker processes overlapping the
encoder (clipsift's default) against decoding in the encoder's process between batches
(`workers=0`, one thread per core), end to end from JPEG files, ViT-B-32 random weights.

    .venv/bin/python bench/bench_decode.py --workdir /tmp/benchL --large 448 --rounds 2 \
        --sizes 128,448

On a CPU the encoder's threads use every core, so a decode process competes with them; in
a short run the process pool's start-up also counts. Each round times every mode on the
same files, alternating the order; the ratios are per round (the machine's speed drifts).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    extract_photos,
    load_avg,
    machine_info,
    make_large,
    vit_b32_weights,
    write_json,
)

MODES = {"processes (default_workers())": None, "in-process threads (workers=0)": 0}


def _rate(model, files: list[Path], workers: int | None) -> float:
    from clipsift.engines.local import embed_items
    from clipsift.inputs.sources import iter_items

    start = time.perf_counter()
    for _ in embed_items(model, iter_items([str(f) for f in files]), batch_size=64,
                         workers=workers):
        pass
    return len(files) / (time.perf_counter() - start)


def run(model, files: list[Path], rounds: int) -> dict:
    rates: dict[str, list[float]] = {name: [] for name in MODES}
    for r in range(rounds):
        for name in (list(MODES) if r % 2 == 0 else list(MODES)[::-1]):
            rates[name].append(_rate(model, files, MODES[name]))
    base, other = list(MODES)
    ratios = [b / a for a, b in zip(rates[base], rates[other], strict=True)]
    return {"files": len(files), "rates": rates, "threads_over_processes": ratios,
            "median_ratio": statistics.median(ratios), "load_avg": load_avg()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", default=None, help="keep data here (default: a temp dir)")
    p.add_argument("--large", type=int, default=448, help="3-12 MP JPEGs to make")
    p.add_argument("--sizes", default="128,448", help="run lengths (files) to time")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "decode.json"))
    args = p.parse_args(argv)
    import clipsift

    work = Path(args.workdir or tempfile.mkdtemp(prefix="clipsift-bench-"))
    photos = extract_photos(work / "photos")
    large = make_large(photos, work / "large", args.large)
    model = clipsift.load(f"ViT-B-32:{vit_b32_weights(work)}")
    _rate(model, photos[:64], 0)  # warm-up
    from clipsift.engines.local import default_workers

    result = {"machine": machine_info(), "default_workers": default_workers(), "runs": []}
    for name, files in (("large", large), ("photos", photos)):
        for size in (int(s) for s in args.sizes.split(",")):
            row = {"set": name, **run(model, files[:size], args.rounds)}
            result["runs"].append(row)
            ratios = " ".join(f"{x:.2f}" for x in row["threads_over_processes"])
            print(f"{name} {row['files']} files: threads/processes per round {ratios}", flush=True)
    write_json(Path(args.out), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
