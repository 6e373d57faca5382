"""Server memory under worst-case uploads (issue 21): peak RSS of `clipsift serve` while N
clients upload, all at once, small files that decode huge: 8000x8000 float32 TIFFs (0.5 MB,
256 MB decoded) and 16-bit PNGs (0.14 MB, 128 MB decoded), half of each.

The server runs in its own process on 127.0.0.1 with its default limits (decode
concurrency 4, decode memory budget 1 GiB); its peak resident memory is read from
/proc/PID/status (VmHWM, which includes the model-loading peak at start-up) before and
after the uploads, and its resident memory (VmRSS) is sampled every 20 ms during them.

    .venv/bin/python bench/bench_server_memory.py --clients 8 \
        --json bench/results/server-memory.json
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._common import load_avg, machine_info, vit_b32_weights, write_json  # noqa: E402


def _status(pid: int, field: str) -> int:
    """A /proc/PID/status memory field (VmHWM, VmRSS) in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def worst_files(folder: Path) -> list[Path]:
    sys.path.insert(0, str(ROOT))
    from tests.support.imagekinds import write_worst_cases

    files = write_worst_cases(folder)
    return [files["float.tif"], files["deep16.png"]]


def start(model: str, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "clipsift", "serve", "--model", model, "--port", str(port),
           "--log-level", "warning", "--timeout", "600"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    import httpx

    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(log.read_text(errors="replace")[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start")


def run(model: str, clients: int, workdir: Path) -> dict:
    import httpx

    from tests.support.serverkit import free_port

    files = worst_files(workdir / "worst")
    port = free_port()
    proc = start(model, port, workdir / "server.log")
    try:
        idle = _status(proc.pid, "VmHWM")
        idle_rss = _status(proc.pid, "VmRSS")
        results: list[tuple[str, int, float]] = [("", 0, 0.0)] * clients
        barrier = threading.Barrier(clients)
        sampled = [idle_rss]
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.02):
                sampled.append(_status(proc.pid, "VmRSS"))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()

        def upload(i: int) -> None:
            path = files[i % len(files)]
            barrier.wait()
            t0 = time.perf_counter()
            r = httpx.post(f"http://127.0.0.1:{port}/v1/embed/images/upload",
                           files={"files": (path.name, path.read_bytes())}, timeout=600)
            results[i] = (path.name, r.status_code, time.perf_counter() - t0)

        threads = [threading.Thread(target=upload, args=(i,)) for i in range(clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        done.set()
        sampler.join()
        peak = _status(proc.pid, "VmHWM")
        after_rss = _status(proc.pid, "VmRSS")
    finally:
        proc.terminate()
        proc.wait(30)
    return {"model": model, "clients": clients, "idle_peak_mb": idle, "peak_mb": peak,
            "idle_rss_mb": idle_rss, "max_rss_during_mb": max(sampled),
            "rss_after_mb": after_rss, "wall_s": round(wall, 2),
            "uploads": [{"file": f, "status": s, "seconds": round(t, 2)}
                        for f, s, t in results]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--model", default="vit-b-32-random",
                    help="'vit-b-32-random' (open_clip ViT-B-32, random weights) or a name")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "bench-mem")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--label", default="", help="what code this run measured (recorded)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model == "vit-b-32-random":
        model = f"ViT-B-32:{vit_b32_weights(args.workdir)}"
    before = load_avg()
    result = run(model, args.clients, args.workdir)
    out = {"label": args.label, "machine": machine_info(), "loadavg_before": before,
           "loadavg_after": load_avg(),
           "command": " ".join(["bench/bench_server_memory.py", *sys.argv[1:]]), **result}
    print(f"{args.clients} concurrent worst-case uploads: peak RSS {result['peak_mb']} MB "
          f"(at start-up {result['idle_peak_mb']} MB); RSS idle {result['idle_rss_mb']} MB, "
          f"max during uploads {result['max_rss_during_mb']} MB, after "
          f"{result['rss_after_mb']} MB; {result['wall_s']} s; statuses "
          f"{[u['status'] for u in result['uploads']]}")
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
