"""The fp32-onnx / int8 export cache is written atomically inside its own directory: no
rename across file systems, nothing left behind on failure, safe concurrent exports."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import clipsift
from clipsift.errors import UsageError
from clipsift.models import apply_precision


@pytest.fixture()
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("CLIPSIFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.fixture()
def model_name(tiny_vit) -> str:
    return f"TinyViT-quickgelu:{tiny_vit['safetensors']}"


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("kind", ["fp32-onnx", "int8"])
def test_export_never_renames_across_file_systems(kind, cache, model_name, photos,
                                                  monkeypatch):
    """Simulate a system temp dir on another file system: any rename into the cache from
    outside it fails with EXDEV, as os.replace does across mounts."""
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).resolve().parent == cache.resolve() and \
                cache.resolve() not in Path(src).resolve().parents:
            raise OSError(errno.EXDEV, "Invalid cross-device link", str(src))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    m = apply_precision(clipsift.load(model_name), kind)
    files = _entries(cache)
    assert len(files) == 1 and files[0].endswith(f".{kind}.onnx"), files  # no leftovers
    ref = clipsift.load(model_name).encode_images([str(photos[0])])
    assert float(m.encode_images([str(photos[0])])[0] @ ref[0]) > 0.99


def test_failed_export_leaves_nothing(cache, model_name, monkeypatch):
    import torch

    def broken(*args, **kwargs):
        Path(args[2]).write_bytes(b"half a file")  # the exporter dies after writing a bit
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(UsageError, match="exporter crashed"):
        apply_precision(clipsift.load(model_name), "fp32-onnx")
    assert _entries(cache) == []


_CHILD = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    import clipsift
    from clipsift.models import apply_precision
    m = clipsift.load(sys.argv[1])
    go = Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.01)
    apply_precision(m, "int8")
    print(m.image_runner.path)
""")


@pytest.mark.slow
def test_concurrent_exports_of_the_same_model(cache, model_name, arch_configs, tmp_path,
                                              photos):
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, model_name, str(go)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    time.sleep(0.5)
    go.touch()  # both start exporting at the same moment
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    paths = {out.strip() for out, _ in outs}
    assert len(paths) == 1 and _entries(cache) == [Path(paths.pop()).name]
    m = apply_precision(clipsift.load(model_name), "int8")  # the cached file is whole
    ref = clipsift.load(model_name).encode_images([str(photos[0])])
    assert np.isfinite(m.encode_images([str(photos[0])])).all()
    assert float(m.encode_images([str(photos[0])])[0] @ ref[0]) > 0.99
