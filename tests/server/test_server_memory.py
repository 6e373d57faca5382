"""The server's decode memory is bounded (issue 21): decodes share a byte budget estimated
from each header, so uploads that decode huge take turns; 8 concurrent worst-case uploads
keep the server process under 2.5 GB peak RSS."""

from __future__ import annotations

import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipsift.inputs.images import decode_cost
from clipsift.server import ServerSettings, create_app
from clipsift.server.decoding import DecodeBudget
from tests.support.fake_model import FakeModel
from tests.support.imagekinds import write_worst_cases
from tests.support.serverkit import LOOPBACK, LiveServer


def _encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **kw)
    return out.getvalue()


def test_decode_cost_from_the_header():
    floats = _encoded(Image.fromarray(np.zeros((100, 200), np.float32), "F"), "TIFF")
    assert decode_cost(floats) == 200 * 100 * (4 + 4) + 200 * 100  # F + RGB + 8-bit copy
    assert decode_cost(floats, rgb_copies=2) == 200 * 100 * (4 + 8) + 200 * 100
    jpeg = _encoded(Image.new("RGB", (800, 400)), "JPEG")
    assert decode_cost(jpeg) == 800 * 400 * 8
    assert decode_cost(jpeg, 100) == 200 * 100 * 8  # a thumbnail's draft decodes at 1/4
    assert decode_cost(b"not an image") == 0


def test_budget_lets_small_decodes_share_and_huge_ones_take_turns():
    budget = DecodeBudget(100)
    inside, most = [0], [0]
    lock = threading.Lock()

    def work(cost: int) -> None:
        with budget.reserve(cost):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    for costs, expect_most in (([30] * 6, 3), ([60] * 4, 1), ([500] * 3, 1)):
        most[0] = 0
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(work, costs))
        assert most[0] == expect_most, costs
        assert budget.used == 0 and budget.peak <= 100


def test_uploads_and_thumbnails_decode_within_the_budget(tmp_path: Path):
    tif = _encoded(Image.fromarray(np.ones((600, 800), np.float32), "F"), "TIFF",
                   compression="tiff_adobe_deflate")
    cost = decode_cost(tif, rgb_copies=2)  # 600x800 x (4 + 8) + 8-bit copy = 6.24 MB
    settings = ServerSettings(decode_memory_bytes=cost + cost // 2, decode_concurrency=4)
    app = create_app(None, FakeModel(), settings)
    with TestClient(app, base_url=LOOPBACK) as client, ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(lambda _: client.post(
            "/v1/embed/images/upload", files={"files": ("f.tif", tif)}).status_code, range(6)))
    budget = app.state.service.decode_budget
    assert codes == [200] * 6
    assert budget.peak == cost and budget.used == 0  # one at a time, every one counted


def _peak_mb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmHWM")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_eight_concurrent_worst_case_uploads_stay_under_2_5_gb(tiny_vit, tmp_path):
    """`clipsift serve` (TinyViT), 8 clients at once: 4 float TIFFs and 4 16-bit PNGs of
    8000x8000 (0.5 MB and 0.14 MB, 256 MB and 128 MB decoded). Was +2 GB per upload."""
    worst = write_worst_cases(tmp_path)
    files = [worst["float.tif"], worst["deep16.png"]] * 4
    model = f"TinyViT-quickgelu:{tiny_vit['safetensors']}"
    with LiveServer(["--model", model, "--timeout", "600"]) as server:
        barrier = threading.Barrier(len(files))

        def upload(path: Path) -> int:
            data = path.read_bytes()
            barrier.wait()
            return httpx.post(f"{server.url}/v1/embed/images/upload", timeout=600,
                              files={"files": (path.name, data)}).status_code

        with ThreadPoolExecutor(len(files)) as pool:
            codes = list(pool.map(upload, files))
        peak = _peak_mb(server.proc.pid)
    assert codes == [200] * len(files)
    assert peak < 2500, f"server peak RSS {peak} MB"
