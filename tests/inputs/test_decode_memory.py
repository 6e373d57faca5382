"""Memory per decode is bounded (issue 21): a cap on the decoded buffer's bytes, checked on
the header, and high-depth images scaled in blocks with the same results as the whole-image
float64 formula they replace."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsift.errors import ImageError
from clipsift.inputs import modes
from clipsift.inputs.images import open_image
from tests.support.imagekinds import write_worst_cases


def float64_formula(im: Image.Image) -> np.ndarray:
    """What high-depth conversion computed before (whole image in float64): the reference."""
    arr = np.nan_to_num(np.asarray(im).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if im.mode.startswith("I;16"):
        scaled = arr / 257.0
    elif im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = arr * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = arr
    elif im.mode == "I" and lo >= 0.0 and hi <= 65535.0:
        scaled = arr / 257.0
    else:
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _cases() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    shape = (37, 23)
    wild = rng.normal(0, 1e4, shape).astype(np.float32)
    wild[3, 4], wild[10, 1], wild[20, 20] = np.nan, np.inf, -np.inf
    u16 = rng.integers(0, 65536, shape).astype(np.uint16)
    return [
        Image.fromarray(u16),  # I;16
        Image.frombytes("I;16B", shape[::-1], u16.astype(">u2").tobytes()),
        Image.fromarray(rng.integers(0, 256, shape).astype(np.int32), "I"),
        Image.fromarray(rng.integers(0, 65536, shape).astype(np.int32), "I"),
        Image.fromarray(rng.integers(-70000, 90000, shape).astype(np.int32), "I"),
        Image.fromarray(np.full(shape, 7, np.int32), "I"),  # flat: all black
        Image.fromarray(rng.random(shape, np.float32), "F"),
        Image.fromarray((rng.random(shape, np.float32) * 255), "F"),
        Image.fromarray(wild, "F"),
    ]


@pytest.mark.parametrize("block", [1 << 20, 100, 23, 7])
def test_blockwise_scaling_equals_the_float64_formula(monkeypatch, block):
    monkeypatch.setattr(modes, "_BLOCK_PIXELS", block)  # 1 block ... one row per block
    for im in _cases():
        got = np.asarray(modes.high_depth_to_l(im))
        assert np.array_equal(got, float64_formula(im)), im.mode


def test_byte_cap_names_size_and_limit(tmp_path: Path):
    path = tmp_path / "f.tif"
    Image.fromarray(np.zeros((100, 100), np.float32), "F").save(path)
    with pytest.raises(ImageError) as err:
        open_image(path, max_bytes=39_999)
    assert err.value.reason == ("decoded image too large: 100x100 F x 4 bytes per pixel = "
                                "40,000 bytes exceeds limit 39,999 bytes")
    assert open_image(path, max_bytes=40_000).size == (100, 100)
    deep = tmp_path / "d.png"
    Image.fromarray(np.zeros((100, 100), np.uint16)).save(deep)
    assert open_image(deep, max_bytes=20_000).size == (100, 100)  # I;16: 2 bytes per pixel
    rgb = tmp_path / "c.png"
    Image.new("RGB", (100, 100)).save(rgb)
    with pytest.raises(ImageError, match="RGB x 4 bytes per pixel = 40,000"):
        open_image(rgb, max_bytes=39_999)  # Pillow keeps RGB in 4 bytes per pixel


def test_byte_cap_is_checked_before_decoding(tmp_path: Path):
    worst = write_worst_cases(tmp_path, side=4000)
    for path in worst.values():
        start = time.perf_counter()
        with pytest.raises(ImageError, match="exceeds limit 1,000,000 bytes"):
            open_image(path, max_bytes=1_000_000)
        assert time.perf_counter() - start < 0.5


_PEAK = """
import sys
from clipsift.inputs.images import open_image

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
before = hwm()
image = open_image(sys.argv[1])
print(image.size, hwm() - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_worst_case_decodes_cost_a_few_hundred_mb(tmp_path: Path):
    """8000x8000 float TIFF and 16-bit PNG: the decoded buffer, 8-bit copy and RGB result,
    not gigabytes of float64 (was +2.5 GB and +2.3 GB)."""
    for path in write_worst_cases(tmp_path).values():
        out = subprocess.run([sys.executable, "-c", _PEAK, str(path)], capture_output=True,
                             text=True, check=True, timeout=120).stdout.split()
        assert out[:2] == ["(8000,", "8000)"]
        assert int(out[2]) < 700, f"{path.name}: +{out[2]} MB peak"
