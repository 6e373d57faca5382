"""Image-embedding speed, end to end from JPEG files: clipsift vs the naive loop vs plain
batching vs `clip-retrieval inference`, plus model-only efficiency against the matmul rate.

One command, one run, one machine, the same files and the same weights for everyone:

    .venv/bin/python bench/bench_embed.py --cr-python /tmp/cr-venv/bin/python --large 200

What it measures (ViT-B-32 with random weights saved to a local file):
  matmul      best fp32 torch.matmul rate of 4096x4096 matrices (GFLOP/s), all cores;
  model-only  `encode_pixels` on preprocessed batches of real photos, per precision;
              efficiency = images/s x 8.8 GFLOP / matmul rate, each timing paired with a
              matmul measurement just before it (median over --rounds rounds);
  naive       open one image, preprocess, encode_image, repeat (open_clip, torch defaults);
  plain       open + preprocess a batch in one process, then encode it (no overlap);
  clipsift    `clipsift.engines.local.embed_items` (decode workers overlapped with the encoder),
              per precision; also the `clipsift embed` CLI;
  clip-retrieval  `clip-retrieval inference` from its own venv (`--cr-python`), with its
              defaults and with settings suited to this machine.
CLI tools are timed on the full set and on a 16-file subset; the rate is
(N - 16) / (T_N - T_16), which removes start-up and model loading from both sides.
Every row records the load average when it finished (other jobs make timings noisy).

Writes a JSON file and a markdown table (`--out`, default bench/results/embed.json/.md).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import (
    ROOT,
    VIT_B32_IMAGE_GFLOP,
    best_rate,
    cores,
    extract_photos,
    link_subset,
    load_avg,
    machine_info,
    make_large,
    markdown_table,
    matmul_gflops,
    vit_b32_weights,
    write_json,
)

SUBSET = 16  # start-up probe: small, so the differential rate covers most files


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=1000, help="sample photos used (max 1000)")
    p.add_argument("--large", type=int, default=200, help="3-12 MP JPEGs to make (0: none)")
    p.add_argument("--precision", default="fp32,fp32-onnx,int8",
                   help="clipsift precisions, comma list")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=5, help="paired model-only/matmul rounds")
    p.add_argument("--sets", default="photos,large",
                   help="end-to-end sets to run, comma list (model-only always uses photos)")
    p.add_argument("--workers", type=int, default=None, help="clipsift decode workers")
    p.add_argument("--cr-python", default="/tmp/cr-venv/bin/python",
                   help="python of a venv with clip-retrieval ('' to skip)")
    p.add_argument("--skip", default="", help="comma list of: naive,plain,cli,cr,model")
    p.add_argument("--workdir", default=None, help="keep data here (default: a temp dir)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "embed.json"))
    return p.parse_args(argv)


def _row(method: str, dataset: str, precision: str, images: int, seconds: float,
         note: str = "") -> dict[str, Any]:
    row = {"method": method, "set": dataset, "precision": precision, "images": images,
           "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 2),
           "load": load_avg(), "note": note}
    print(f"  {method:<28} {dataset:<7} {precision:<9} {row['images_per_s']:8.2f} img/s "
          f"(load {row['load'][0]}) {note}", flush=True)
    return row


# ---- reference loops (open_clip directly, as a tutorial would) ----------------------------
def _open_clip_model(weights: Path, device: str):
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(
        "ViT-B-32", pretrained=str(weights), device=device)
    return model.eval(), preprocess


def naive_loop(weights: Path, files: list[Path], dataset: str, device: str) -> dict[str, Any]:
    import torch
    from PIL import Image

    model, preprocess = _open_clip_model(weights, device)
    t0 = time.perf_counter()
    for path in files:
        image = Image.open(path).convert("RGB")
        x = preprocess(image).unsqueeze(0).to(device)  # [1, 3, 224, 224]
        with torch.no_grad():
            model.encode_image(x).cpu()
    return _row("naive loop", dataset, "fp32", len(files), time.perf_counter() - t0)


def plain_batching(weights: Path, files: list[Path], dataset: str, device: str,
                   batch_size: int) -> dict[str, Any]:
    import torch
    from PIL import Image

    model, preprocess = _open_clip_model(weights, device)
    t0 = time.perf_counter()
    for start in range(0, len(files), batch_size):
        x = torch.stack([preprocess(Image.open(p).convert("RGB"))
                         for p in files[start : start + batch_size]]).to(device)
        with torch.no_grad():
            model.encode_image(x).cpu()
    return _row("plain batching", dataset, "fp32", len(files), time.perf_counter() - t0,
                f"batch {batch_size}")


# ---- clipsift ---------------------------------------------------------------------------------
def clipsift_library(weights: Path, folder: Path, n: int, dataset: str, precision: str,
                     args: argparse.Namespace) -> dict[str, Any]:
    import clipsift
    from clipsift.engines.base import PipelineStats
    from clipsift.engines.local import embed_items
    from clipsift.inputs.sources import iter_items

    model = clipsift.load(f"ViT-B-32:{weights}", device=args.device, precision=precision)
    stats = PipelineStats()
    t0 = time.perf_counter()
    done = sum(len(b) for b in embed_items(model, iter_items([str(folder)]),
                                           batch_size=args.batch_size, workers=args.workers,
                                           stats=stats))
    seconds = time.perf_counter() - t0
    assert done == n and stats.errors == 0, (done, n, stats.errors)
    note = (f"workers {stats.workers}, encoder busy {stats.encode_seconds / seconds:.0%}, "
            f"waited {stats.wait_seconds:.1f}s")
    return _row("clipsift (library)", dataset, precision, n, seconds, note)


def _timed_cmd(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout)[-2000:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({proc.returncode}):\n{tail}")
    return seconds


def differential(make_cmd, full: Path, n: int, small: Path, work: Path) -> tuple[float, str]:
    """Seconds for n - SUBSET images with start-up removed: T(full) - T(subset)."""
    t_small = _timed_cmd(make_cmd(small, work / "out-small"), work)
    t_full = _timed_cmd(make_cmd(full, work / "out-full"), work)
    return t_full - t_small, f"T({n})={t_full:.1f}s, T({SUBSET})={t_small:.1f}s"


def clipsift_cli(weights: Path, sets: dict[str, tuple[Path, Path, int]], precision: str,
                 args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    exe = str(Path(sys.executable).with_name("clipsift"))

    def cmd(folder: Path, out: Path) -> list[str]:
        shutil.rmtree(out, ignore_errors=True)
        return [exe, "embed", str(folder), "-m", f"ViT-B-32:{weights}", "-o",
                str(out / "e.parquet"), "--precision", precision, "--device", args.device,
                "--batch-size", str(args.batch_size)]

    rows = []
    for name, (full, small, n) in sets.items():
        seconds, note = differential(cmd, full, n, small, work)
        rows.append(_row("clipsift embed (CLI)", name, precision, n - SUBSET, seconds, note))
    return rows


def clip_retrieval(weights: Path, sets: dict[str, tuple[Path, Path, int]], args: argparse.Namespace,
                   work: Path) -> list[dict[str, Any]]:
    """`clip-retrieval inference`, its defaults (batch 256, 4 workers) and a 2-core setting."""
    configs = {"defaults": [], "batch 64, 1 worker": ["--batch_size", "64",
                                                      "--num_prepro_workers", "1"]}
    exe = str(Path(args.cr_python).with_name("clip-retrieval"))
    rows = []
    for label, extra in configs.items():
        def cmd(folder: Path, out: Path, extra=extra) -> list[str]:
            shutil.rmtree(out, ignore_errors=True)
            return [exe, "inference", "--input_dataset", str(folder), "--output_folder",
                    str(out), "--clip_model", f"open_clip:ViT-B-32/{weights}",
                    "--enable_text", "False", *extra]

        for name, (full, small, n) in sets.items():
            seconds, note = differential(cmd, full, n, small, work)
            rows.append(_row(f"clip-retrieval ({label})", name, "fp32", n - SUBSET, seconds,
                             note))
    return rows


# ---- model only ----------------------------------------------------------------------------
def model_only(weights: Path, photos: list[Path], precisions: list[str],
               args: argparse.Namespace) -> list[dict[str, Any]]:
    """images/s of `encode_pixels` per precision, and efficiency against the matmul rate.

    This virtual machine's speed drifts by +-20 % within minutes, so each model timing is
    paired with a matmul measurement taken just before it, in `args.rounds` rounds that
    cycle through the precisions; the efficiency is the median of the paired ratios.
    """
    import torch

    import clipsift
    from clipsift.inputs.images import open_image

    models = {p: clipsift.load(f"ViT-B-32:{weights}", device=args.device, precision=p)
              for p in precisions}
    first = next(iter(models.values()))
    pixels = torch.stack([first.preprocess(open_image(p, first.image_size))
                          for p in photos[: args.batch_size]])  # [B, 3, 224, 224]
    pairs: dict[str, list[tuple[float, float]]] = {p: [] for p in precisions}
    for r in range(args.rounds):
        for precision, model in models.items():
            peak = matmul_gflops(reps=3)
            rate = best_rate(lambda m=model: m.encode_pixels(pixels), len(pixels), reps=2)
            pairs[precision].append((rate, peak))
            print(f"  round {r + 1} model-only {precision:<9} {rate:8.2f} img/s, matmul "
                  f"{peak:.1f} GFLOP/s: {rate * VIT_B32_IMAGE_GFLOP / peak:.0%} "
                  f"(load {load_avg()[0]})", flush=True)
    rows = []
    for precision, measured in pairs.items():
        effs = [rate * VIT_B32_IMAGE_GFLOP / peak for rate, peak in measured]
        rows.append({"precision": precision, "batch": len(pixels),
                     "images_per_s": round(statistics.median(r for r, _ in measured), 2),
                     "efficiency": round(statistics.median(effs), 3),
                     "efficiency_range": [round(min(effs), 3), round(max(effs), 3)],
                     "pairs": [[round(r, 2), round(g, 1)] for r, g in measured],
                     "load": load_avg()})
    return rows


# ---- report ----------------------------------------------------------------------------------
def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Ratios per set: each clipsift row against the naive loop and the best clip-retrieval."""
    out: dict[str, Any] = {}
    for dataset in sorted({r["set"] for r in runs}):
        rows = [r for r in runs if r["set"] == dataset]
        naive = next((r["images_per_s"] for r in rows if r["method"] == "naive loop"), None)
        cr = max((r["images_per_s"] for r in rows if r["method"].startswith("clip-retrieval")),
                 default=None)
        ratios = {}
        for r in rows:
            if r["method"].startswith("clipsift"):
                key = f"{r['method']} {r['precision']}"
                ratios[key] = {
                    "vs_naive": round(r["images_per_s"] / naive, 2) if naive else None,
                    "vs_clip_retrieval": round(r["images_per_s"] / cr, 2) if cr else None}
        out[dataset] = {"naive": naive, "best_clip_retrieval": cr, "ratios": ratios}
    return out


def to_markdown(result: dict[str, Any]) -> str:
    runs, summary = result["runs"], result["summary"]
    rows = []
    for r in runs:
        s = summary[r["set"]]
        vs_naive = r["images_per_s"] / s["naive"] if s["naive"] else None
        vs_cr = r["images_per_s"] / s["best_clip_retrieval"] if s["best_clip_retrieval"] else None
        rows.append([r["method"], r["set"], r["precision"], r["images_per_s"],
                     f"{vs_naive:.2f}x" if vs_naive else "", f"{vs_cr:.2f}x" if vs_cr else "",
                     "/".join(f"{x:.1f}" for x in r["load"]), r["note"]])
    md = [f"matmul fp32: {result['matmul_gflops']:.1f} GFLOP/s ({result['machine']['cores']} "
          f"cores, load before {result['load_before']})", "",
          markdown_table(["method", "set", "precision", "images/s", "vs naive",
                          "vs clip-retrieval (best)", "load 1/5/15 min", "note"], rows)]
    if result["model_only"]:
        mo = [[m["precision"], m["batch"], m["images_per_s"], f"{m['efficiency']:.0%}",
               "-".join(f"{x:.0%}" for x in m["efficiency_range"]),
               "/".join(f"{x:.1f}" for x in m["load"])] for m in result["model_only"]]
        md += ["", markdown_table(["model-only precision", "batch", "images/s (median)",
                                   "x 8.8 GFLOP / matmul rate (median)", "range", "load"], mo)]
    return "\n".join(md) + "\n"


def prepare(work: Path, args: argparse.Namespace) -> tuple[Path, dict[str, tuple[Path, Path, int]],
                                                          dict[str, list[Path]]]:
    """Photos, large JPEGs, subset folders and weights under `work`."""
    photos = extract_photos(work / "photos", args.limit)
    files = {"photos": photos}
    folder = work / "photos"
    if len(photos) < len(list(folder.iterdir())):  # --limit: a folder of just those
        folder = link_subset(photos, work / f"photos-{len(photos)}")
    sets = {"photos": (folder, link_subset(photos[:SUBSET], work / "photos-subset"),
                       len(photos))}
    if args.large:
        large = make_large(photos, work / "large", args.large)
        files["large"] = large
        sets["large"] = (work / "large", link_subset(large[:SUBSET], work / "large-subset"),
                         len(large))
    return vit_b32_weights(work), sets, files


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    skip = set(filter(None, args.skip.split(",")))
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    load_before = load_avg()
    weights, sets, files = prepare(work, args)
    wanted = set(filter(None, args.sets.split(",")))
    runs_on = {name: v for name, v in sets.items() if name in wanted}
    gflops = matmul_gflops()
    print(f"matmul fp32 {gflops:.1f} GFLOP/s on {cores()} cores (load {load_avg()})", flush=True)
    result: dict[str, Any] = {"machine": machine_info(), "load_before": load_before,
                              "matmul_gflops": round(gflops, 1), "argv": sys.argv[1:],
                              "runs": [], "model_only": []}
    if "model" not in skip:
        result["model_only"] = model_only(weights, files["photos"], precisions, args)
    runs = result["runs"]
    for name, (folder, _, n) in runs_on.items():
        paths = files[name]
        if "naive" not in skip:
            runs.append(naive_loop(weights, paths, name, args.device))
        if "plain" not in skip:
            runs.append(plain_batching(weights, paths, name, args.device, args.batch_size))
        for precision in precisions:
            runs.append(clipsift_library(weights, folder, n, name, precision, args))
    if "cli" not in skip:
        for precision in precisions:
            runs += clipsift_cli(weights, runs_on, precision, args, work)
    if "cr" not in skip and args.cr_python:
        runs += clip_retrieval(weights, runs_on, args, work)
    result["summary"] = summarize(runs)
    result["load_after"] = load_avg()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctx = (contextlib.nullcontext(args.workdir) if args.workdir
           else tempfile.TemporaryDirectory(prefix="clipsift-bench-"))
    with ctx as work:
        result = run(args, Path(work))
    out = Path(args.out)
    write_json(out, result)
    md = to_markdown(result)
    out.with_suffix(".md").write_text(md, encoding="utf-8")
    print("\n" + md)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
