"""Shared fixtures: tiny models in every format, and real photos from ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipsift.models.registry import PLUGINS_ENV
from tests.support import fake_model, tinymodels
from tests.support.helpers import extract_photos

SHARED = tinymodels.SHARED

# The deterministic `fake` model is a plugin (tests/support/fake_model.py): registered here by
# the import above, and named by file in $CLIPSIFT_PLUGINS so that subprocesses (the CLI,
# `clipsift serve`, kill tests) register it too, whatever their working directory.
os.environ[PLUGINS_ENV] = os.pathsep.join(
    p for p in (os.environ.get(PLUGINS_ENV, ""), fake_model.__file__) if p)


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
