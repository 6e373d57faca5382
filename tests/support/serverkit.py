"""Helpers shared by the server tests: a tiny real-photo index, clients, counting models,
and a uvicorn server on a loopback port (subprocess) for load and browser tests."""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from clipsift.index.index import Index
from tests.support.fake_model import FakeModel

LOOPBACK = "http://127.0.0.1"


def build_index(photos: list[Path], folder: Path, model=None, count: int = 20) -> Path:
    """Copy `count` photos into `folder`/photos and index them (fake model) -> index path."""
    pics = folder / "photos"
    pics.mkdir(parents=True, exist_ok=True)
    for p in photos[:count]:
        shutil.copy(p, pics / p.name)
    path = folder / "photos.db"
    with Index(path, model or FakeModel()) as idx:
        summary = idx.add([pics], workers=0, batch_size=8)
    assert summary.errors == 0
    return path


class CountingModel(FakeModel):
    """FakeModel that records each forward pass (batch sizes) and can be slowed down."""

    def __init__(self, delay: float = 0.0) -> None:
        super().__init__()
        self.delay = delay
        self.text_calls: list[int] = []
        self.image_calls: list[int] = []
        self._lock = threading.Lock()

    def _text_features(self, texts):
        with self._lock:
            self.text_calls.append(len(texts))
        if self.delay:
            time.sleep(self.delay)
        return super()._text_features(texts)

    def _image_features(self, pixels):
        with self._lock:
            self.image_calls.append(len(pixels))
        if self.delay:
            time.sleep(self.delay)
        return super()._image_features(pixels)


def jpeg_bytes(size: tuple[int, int] = (64, 48), color=(200, 40, 40)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="JPEG")
    return out.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`clipsift serve` in a subprocess on 127.0.0.1 and a free port; stops on exit."""

    def __init__(self, args: list[str], env: dict | None = None, timeout: float = 60.0) -> None:
        self.port = free_port()
        self.url = f"{LOOPBACK}:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed with the object; not a pipe)
        cmd = [sys.executable, "-m", "clipsift", "serve", *args, "--port", str(self.port),
               "--log-level", "warning"]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})},
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self._wait(timeout)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def _wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n"
                                   f"{self.output()}")
            try:
                if httpx.get(f"{self.url}/", timeout=1.0).status_code == 200:  # public page
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not start within {timeout} s")

    def rss_mb(self) -> float:
        """Resident memory of the server process, from /proc."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")
