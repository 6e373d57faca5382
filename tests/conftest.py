"""Shared fixtures: tiny models in every format, and real photos from ../shared/data."""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from tests import tinymodels

SHARED = tinymodels.SHARED


@pytest.fixture(scope="session")
def arch_configs(tmp_path_factory) -> Path:
    """Tiny architectures registered through $CLIPSIFT_MODEL_CONFIGS (as a user would)."""
    folder = tinymodels.write_arch_configs(tmp_path_factory.mktemp("archs"))
    os.environ["CLIPSIFT_MODEL_CONFIGS"] = str(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_vit(arch_configs, tmp_path_factory) -> dict[str, Path]:
    """TinyViT (QuickGELU, like OpenAI's) saved in every open_clip/OpenAI format."""
    model = tinymodels.make_openclip({**tinymodels.TINY_VIT, "quick_gelu": True}, seed=1)
    return tinymodels.save_openclip_formats(model, tmp_path_factory.mktemp("vit"), "tinyvit")


@pytest.fixture(scope="session")
def tiny_rn(arch_configs, tmp_path_factory) -> dict[str, Path]:
    model = tinymodels.make_openclip(tinymodels.TINY_RN, seed=2)
    return tinymodels.save_openclip_formats(model, tmp_path_factory.mktemp("rn"), "tinyrn")


@pytest.fixture(scope="session")
def hf_clip_dir(tmp_path_factory) -> Path:
    return tinymodels.make_hf_clip(tmp_path_factory.mktemp("hfclip") / "clip")


@pytest.fixture(scope="session")
def hf_cn_clip_dir(tmp_path_factory) -> Path:
    return tinymodels.make_hf_chinese_clip(tmp_path_factory.mktemp("hfcn") / "cnclip")


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> list[Path]:
    """40 real ImageNet sample photos extracted to a temp folder."""
    return extract_photos(tmp_path_factory.mktemp("photos"), 40)


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


MINI_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts" / "mini"


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
