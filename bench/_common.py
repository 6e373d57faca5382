"""Shared helpers of the speed benchmarks: machine facts, data, weights, matmul rate, output.

Data comes from ../shared/data (extracted to a temporary folder, never into the repository);
ViT-B-32 gets random weights saved to a local file, so no download is needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import subprocess
import tarfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
#: ViT-B/32 image tower cost per 224px image (open_clip's model profile: 4.41 GMACs).
VIT_B32_IMAGE_GFLOP = 8.8


def load_avg() -> list[float]:
    """1, 5 and 15 minute load averages of this machine."""
    return [round(x, 2) for x in os.getloadavg()]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_info() -> dict[str, Any]:
    """CPU model, cores, RAM, relevant CPU flags and library versions."""
    import torch

    model = platform.processor() or "unknown"
    with_lscpu = _run(["lscpu"])
    m = re.search(r"^Model name:\s*(.+)$", with_lscpu, re.M)
    if m:
        model = m.group(1).strip()
    ram = 0.0
    with contextlib.suppress(ValueError, OSError, AttributeError):
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    flags = _cpu_flags()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
    info: dict[str, Any] = {
        "cpu": model, "cores": cores(), "ram_gib": round(ram, 1),
        "cpu_flags": [f for f in wanted if f in flags],
        "python": platform.python_version(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    return set(m.group(1).split()) if m else set()


def _run(cmd: Sequence[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def extract_photos(dest: Path, limit: int | None = None) -> list[Path]:
    """The ImageNet sample photos (sorted), extracted flat into `dest`."""
    tar_path = SHARED / "imagenet-samples.tar"
    if not tar_path.exists():
        raise SystemExit(f"{tar_path} not found")
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with tarfile.open(tar_path) as tf:
        for member in tf:
            if member.isfile() and member.name.lower().endswith((".jpeg", ".jpg")):
                target = dest / Path(member.name).name
                if not target.exists():
                    with tf.extractfile(member) as src:
                        target.write_bytes(src.read())
                out.append(target)
    out.sort()
    return out[:limit] if limit else out


def _upscale_one(args: tuple[str, str, int]) -> str:
    from PIL import Image

    src, dst, megapixels = args
    with Image.open(src) as im:
        im = im.convert("RGB")
        scale = (megapixels * 1e6 / (im.width * im.height)) ** 0.5
        big = im.resize((round(im.width * scale), round(im.height * scale)),
                        Image.Resampling.BILINEAR)
        big.save(dst, quality=90)
    return dst


def make_large(photos: Sequence[Path], dest: Path, count: int) -> list[Path]:
    """`count` JPEGs of 3, 6, 9 and 12 megapixels (cycling), upscaled from `photos`."""
    from concurrent.futures import ProcessPoolExecutor

    dest.mkdir(parents=True, exist_ok=True)
    jobs = [(str(p), str(dest / f"large-{i:04d}.jpg"), (3, 6, 9, 12)[i % 4])
            for i, p in enumerate(photos[:count])]
    todo = [j for j in jobs if not Path(j[1]).exists()]
    with ProcessPoolExecutor(cores()) as pool:
        list(pool.map(_upscale_one, todo))
    return [Path(j[1]) for j in jobs]


def link_subset(paths: Sequence[Path], dest: Path) -> Path:
    """A folder of hard links to `paths` (for runs on a subset of the files).

    Hard links, not symlinks: clipsift (like rclip) skips symlinked files found while
    walking a folder unless asked to follow them, so a symlink subset would be empty.
    """
    import os
    import shutil

    dest.mkdir(parents=True, exist_ok=True)
    for p in paths:
        link = dest / p.name
        if link.is_symlink():
            link.unlink()
        if not link.exists():
            try:
                os.link(p, link)
            except OSError:  # another filesystem
                shutil.copyfile(p, link)
    return dest


def vit_b32_weights(dest: Path, seed: int = 0) -> Path:
    """ViT-B-32 with random weights (seeded) saved as an open_clip state dict."""
    import logging

    import open_clip
    import torch

    path = dest / f"vit-b-32-random-{seed}.pt"
    if not path.exists():
        logging.getLogger().setLevel(logging.ERROR)
        torch.manual_seed(seed)
        model = open_clip.create_model("ViT-B-32", pretrained=None)
        torch.save(model.state_dict(), path)
    return path


def matmul_gflops(n: int = 4096, reps: int = 5, threads: int | None = None) -> float:
    """Best fp32 torch.matmul rate (GFLOP/s) of two n x n matrices, over `reps` runs."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads or cores())
    try:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.matmul(a, b)  # warm-up
        best = min(_seconds(lambda: torch.matmul(a, b)) for _ in range(reps))
    finally:
        torch.set_num_threads(old)
    return 2 * n**3 / best / 1e9


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_rate(fn: Callable[[], Any], items: int, reps: int = 3) -> float:
    """items/s of the fastest of `reps` calls of `fn` (after one warm-up call)."""
    fn()
    return items / min(_seconds(fn) for _ in range(reps))


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
