"""Helpers shared by tests: real photos from ../shared/data, script loaders, pair rows."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import pytest

from tests.support.tinymodels import SHARED


def extract_photos(dest: Path, count: int) -> list[Path]:
    tar_path = SHARED / "imagenet-samples.tar"
    if not tar_path.exists():
        pytest.skip(f"{tar_path} not found")
    out = []
    with tarfile.open(tar_path) as tf:
        for member in tf:
            if member.isfile() and member.name.lower().endswith(".jpeg"):
                target = dest / Path(member.name).name
                with tf.extractfile(member) as src:
                    target.write_bytes(src.read())
                out.append(target)
                if len(out) >= count:
                    break
    return sorted(out)


def photo_tree(root: Path, layout: dict[str, list[Path]]) -> Path:
    """Copy photos into sub-folders of `root`: {"dog": [...], "dog/deeper": [...]}."""
    for sub, files in layout.items():
        (root / sub).mkdir(parents=True, exist_ok=True)
        for p in files:
            shutil.copy(p, root / sub / p.name)
    return root


def load_script(path: Path, name: str):
    """Import a script that is not in a package (scripts/...) as module `name`; yields it
    and removes it from sys.modules afterwards (use from a fixture)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    try:
        yield module
    finally:
        sys.modules.pop(name, None)


MINI_SCRIPTS = Path(__file__).resolve().parents[2] / "scripts" / "mini"


def load_mini_source(filename: str):
    """Import a scripts/mini data module that imports ``photo_sources`` by name (as
    prepare_data.py does); yields it (use from a fixture)."""
    photo = load_script(MINI_SCRIPTS / "photo_sources.py", "photo_sources")
    next(photo)
    try:
        yield from load_script(MINI_SCRIPTS / filename, f"mini_{Path(filename).stem}")
    finally:
        next(photo, None)


def pair_row(image, caption, group, source, lang="en") -> dict:
    """A pairs.parquet row, as prepare_data.row makes them."""
    return {"image": str(image), "caption": caption, "group": group, "source": source,
            "lang": lang}
