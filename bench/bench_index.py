"""Indexing benchmark (issue 3): throughput against the naive loop, and memory at scale.

Same run, same machine, same ViT-B-32 random weights saved to a local file:
  - naive loop: open one image, preprocess, encode_image, repeat (on --naive-n photos);
  - `clipsift embed` (embed_to_parquet) on the 1,000 sample photos;
  - `clipsift index` (Index.add) on the same photos into a fresh index.
Memory: peak RSS of the whole `clipsift index` process tree (main + decode workers) for
1,000 files and for --mem-n files (the sample photos repeated under other names, each with
a few unique trailing bytes so the content hashes differ and every file is encoded), with
the deterministic `fake` model so the run measures the pipeline and store, not the net.

    .venv/bin/python bench/bench_index.py --out /tmp/bench_index.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

#: The deterministic `fake` model is a test plugin; children load it via CLIPSIFT_PLUGINS.
FAKE_PLUGIN = Path(__file__).resolve().parents[1] / "tests" / "support" / "fake_model.py"

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def extract_photos(dest: Path) -> list[Path]:
    with tarfile.open(SHARED / "imagenet-samples.tar") as tf:
        tf.extractall(dest, filter="data")
    return sorted((dest / "imagenet-samples").glob("*.JPEG"))


def save_vit_b32(dest: Path) -> str:
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    path = dest / "vit-b-32-random.pt"
    torch.save(model.state_dict(), path)
    return f"ViT-B-32:{path}"


def naive_loop(name: str, photos: list[Path]) -> float:
    import torch
    from PIL import Image

    import clipsift

    m = clipsift.load(name)
    start = time.perf_counter()
    with torch.inference_mode():
        for p in photos:
            pixels = m.preprocess(Image.open(p).convert("RGB"))[None]
            m.module.encode_image(pixels)
    return len(photos) / (time.perf_counter() - start)


def clipsift_embed(name: str, folder: Path, out: Path) -> float:
    import clipsift
    from clipsift.embed import embed_to_parquet

    m = clipsift.load(name)
    start = time.perf_counter()
    s = embed_to_parquet(m, [str(folder)], [], out)
    return s.images / (time.perf_counter() - start)


def clipsift_index(name: str, folder: Path, db: Path) -> float:
    import clipsift

    m = clipsift.load(name)
    start = time.perf_counter()
    with clipsift.Index(db, model=m) as index:
        summary = index.add([str(folder)])
    n = summary.added if hasattr(summary, "added") else 1000
    return n / (time.perf_counter() - start)


def make_copies(photos: list[Path], dest: Path, n: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        src = photos[i % len(photos)]
        # trailing bytes after the JPEG end marker: same pixels, different content hash
        (dest / f"{i:06d}_{src.name}").write_bytes(src.read_bytes() + f"#{i}".encode())


def peak_rss_tree(cmd: list[str], env: dict) -> tuple[float, float]:
    """Run cmd; return (seconds, peak summed RSS in MB of it and its children)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.2)

    start = time.perf_counter()
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    _, err = proc.communicate()
    t.join()
    if proc.returncode != 0:
        raise RuntimeError(err.decode()[-2000:])
    return time.perf_counter() - start, peak[0] / 1e6


def _tree_rss(root: int) -> int:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--naive-n", type=int, default=300)
    ap.add_argument("--mem-n", type=int, default=20_000)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--out", default="bench_index.json")
    args = ap.parse_args()
    res: dict = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        photos = extract_photos(tmp_path)
        folder = photos[0].parent
        if not args.skip_speed:
            name = save_vit_b32(tmp_path)
            res["naive_loop_ips"] = naive_loop(name, photos[: args.naive_n])
            res["embed_ips"] = clipsift_embed(name, folder, tmp_path / "e.parquet")
            res["index_ips"] = clipsift_index(name, folder, tmp_path / "speed.db")
            res["index_vs_naive"] = res["index_ips"] / res["naive_loop_ips"]
            res["index_vs_embed"] = res["index_ips"] / res["embed_ips"]
        env = {**os.environ, "CLIPSIFT_INDEX_DIR": str(tmp_path / "idx"),
               "CLIPSIFT_PLUGINS": str(FAKE_PLUGIN)}  # registers the `fake` model
        cli = [sys.executable, "-m", "clipsift", "index", "--model", "fake", "--quiet"]
        for n, src in ((len(photos), folder), (args.mem_n, tmp_path / "many")):
            if n != len(photos):
                make_copies(photos, src, n)
            secs, mb = peak_rss_tree([*cli, str(src), "--index", f"mem{n}"], env)
            res[f"mem_{n}"] = {"seconds": secs, "peak_rss_mb": mb, "items_per_s": n / secs}
    res["load_after"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    json.dump(res, sys.stdout, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
