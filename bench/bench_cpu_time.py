"""CPU time per image of the embedding pipeline (the input of docs/scaling.md's plan).

Wall-clock rates on a shared machine say little about a cluster; CPU seconds per image do
scale with cores. Measured on the first `--n` ImageNet sample photos, ViT-B-32 (random):
  - `embed_to_parquet` (what `clipsift embed` runs), default workers: wall time and CPU
    seconds of the process and its decode workers (getrusage self + children);
  - decode + preprocess only (`decode_chunk`, the pipeline's code), one thread;
  - the image tower only, fp32, batch 64, one thread;
  - the mean JPEG size of the photos, and the in-memory bytes per row of a `filter`
    manifest (one keep and one drop prompt, `fake` model).

    .venv/bin/python bench/bench_cpu_time.py --out bench/results/cpu-time.json
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import extract_photos, load_avg, machine_info, vit_b32_weights, write_json


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def pipeline(model, folder: Path, out: Path, n: int) -> dict:
    """embed_to_parquet on the folder: wall seconds and CPU seconds (process + workers)."""
    from clipsift.embed import embed_to_parquet

    cpu0, t0 = _cpu_seconds(), time.perf_counter()
    summary = embed_to_parquet(model, [str(folder)], [], out)
    wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    assert summary.images == n, summary
    return {"images": n, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
            "cpu_s_per_image": round(cpu / n, 4), "images_per_s": round(n / wall, 2)}


def decode_only(model, photos: list[Path]) -> dict:
    """decode_chunk on one thread: CPU ms per image."""
    import torch

    from clipsift.engines.decode import decode_chunk
    from clipsift.inputs.sources import iter_items

    torch.set_num_threads(1)
    items = list(iter_items([str(p) for p in photos]))
    decode_chunk(items[:8], model.preprocess, model.image_size)  # warm-up
    cpu0 = time.process_time()
    decoded = decode_chunk(items, model.preprocess, model.image_size)
    cpu = time.process_time() - cpu0
    assert not any(decoded.errors)
    return {"images": len(items), "cpu_ms_per_image": round(cpu / len(items) * 1e3, 2)}


def tower_only(model, photos: list[Path], rounds: int = 3) -> dict:
    """The image tower, fp32, a preprocessed batch of 64, one thread: CPU ms per image."""
    import torch

    from clipsift.engines.decode import decode_chunk
    from clipsift.inputs.sources import iter_items

    torch.set_num_threads(1)
    items = list(iter_items([str(p) for p in photos[:64]]))
    pixels = decode_chunk(items, model.preprocess, model.image_size).pixels  # [64, 3, H, W]
    model.encode_pixels(pixels[:4])  # warm-up
    per_image = []
    for _ in range(rounds):
        cpu0 = time.process_time()
        model.encode_pixels(pixels)
        per_image.append((time.process_time() - cpu0) / len(pixels) * 1e3)
    return {"batch": len(pixels), "threads": 1, "rounds_ms": [round(x, 1) for x in per_image],
            "cpu_ms_per_image": round(statistics.median(per_image), 1)}


def manifest_bytes(folder: Path, out: Path) -> dict:
    """In-memory bytes per row of a filter manifest (one keep, one drop prompt)."""
    import pyarrow.parquet as pq

    import clipsift
    from clipsift.sift.filter import run_filter
    from clipsift.sift.rules import Prompt, Rule

    rule = Rule(keep=(Prompt("a photo of a dog"),), drop=(Prompt("a photo of a cat"),))
    summary = run_filter(clipsift.load("fake"), rule, out, inputs=[str(folder)])
    table = pq.read_table(summary.manifest)
    paths = table["path"].to_pylist()
    return {"rows": table.num_rows, "bytes_per_row": round(table.nbytes / table.num_rows, 1),
            "mean_path_chars": round(statistics.mean(map(len, paths)), 1)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200, help="photos for the pipeline run")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    import clipsift

    result: dict = {"machine": machine_info(), "argv": sys.argv[1:], "load_before": load_avg()}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = extract_photos(work / "photos")[: args.n]
        folder = work / "subset"
        folder.mkdir()
        for p in photos:
            (folder / p.name).write_bytes(p.read_bytes())
        model = clipsift.load(f"ViT-B-32:{vit_b32_weights(work)}")
        result["mean_jpeg_kb"] = round(statistics.mean(p.stat().st_size for p in photos)
                                       / 1e3, 1)
        result["pipeline"] = pipeline(model, folder, work / "e.parquet", len(photos))
        result["decode"] = decode_only(model, photos)
        result["tower"] = tower_only(model, photos)
        result["manifest"] = manifest_bytes(folder, work / "filter")
    result["load_after"] = load_avg()
    for key in ("pipeline", "decode", "tower", "manifest"):
        print(key, result[key])
    if args.out:
        write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
