"""The model registry: names parsed once into a typed ModelRef, loaders from a table,
models registered by tests and by plugins ($CLIPSIFT_PLUGINS, seen by subprocesses too),
and close names suggested for typos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import clipsift
from clipsift.cli.main import main
from clipsift.errors import ModelNotAvailable, UnknownModel, UsageError
from clipsift.models.registry import (
    PLUGINS_ENV,
    ModelRef,
    load_plugins,
    parse_name,
    register,
    registered,
    unregister,
)
from tests.support.fake_model import FakeModel


@pytest.fixture()
def folders(tmp_path):
    """One folder of each kind a bare path can name."""
    out = {}
    for kind, marker in (("folder", "clipsift_model.json"), ("hf-hub", "open_clip_config.json"),
                         ("hf", "config.json")):
        out[kind] = tmp_path / kind
        out[kind].mkdir()
        (out[kind] / marker).write_text("{}")
    return out


def test_names_parse_into_typed_refs(folders, tmp_path, monkeypatch):
    cases = {
        "mini": ModelRef("mini", "mini"),
        "hf:openai/clip-vit-base-patch32": ModelRef(
            "hf:openai/clip-vit-base-patch32", "hf", "openai/clip-vit-base-patch32"),
        "hf:/models/clip": ModelRef("hf:/models/clip", "hf", "/models/clip"),
        "hf-hub:timm/ViT-B-16-SigLIP": ModelRef(
            "hf-hub:timm/ViT-B-16-SigLIP", "hf-hub", "timm/ViT-B-16-SigLIP"),
        "ViT-B-32:openai": ModelRef("ViT-B-32:openai", "arch-tag", "openai", "ViT-B-32"),
        "ViT-B-32:/w/ViT-B-32.pt": ModelRef("ViT-B-32:/w/ViT-B-32.pt", "arch-file",
                                            "/w/ViT-B-32.pt", "ViT-B-32"),
        "RN50:weights.safetensors": ModelRef("RN50:weights.safetensors", "arch-file",
                                             "weights.safetensors", "RN50"),
        "fake": ModelRef("fake", "fake"),
        "fake:128": ModelRef("fake:128", "fake", "128"),
        "  mini ": ModelRef("mini", "mini"),
        "ViT-B-32": ModelRef("ViT-B-32", "word", "ViT-B-32"),
    }
    for kind, path in folders.items():
        cases[str(path)] = ModelRef(str(path), kind, str(path))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "openai").mkdir()  # a folder named like a tag does not make it a path
    for name, want in cases.items():
        assert parse_name(name) == want, name
    with pytest.raises(ModelNotAvailable, match="no such file"):
        parse_name(str(tmp_path / "missing" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotAvailable, match=r"clipsift_model\.json"):
        parse_name(str(tmp_path / "empty"))
    (tmp_path / "w.pt").write_bytes(b"x")
    with pytest.raises(UnknownModel, match="say which architecture"):
        parse_name(str(tmp_path / "w.pt"))
    with pytest.raises(UsageError, match="empty model name"):
        parse_name("  ")


@pytest.mark.parametrize(("name", "suggested"), [
    ("mimi", "mini"), ("Mini", "mini"), ("fkae", "fake"), ("vit-b-32:openai", "ViT-B-32"),
    ("ViT-B-33:openai", "ViT-B-32"), ("hf-hubb:org/model", "hf-hub"),
])
def test_typos_suggest_close_names(name, suggested, arch_configs):
    with pytest.raises(UnknownModel) as info:
        clipsift.load(name)
    msg = str(info.value)
    assert f"Did you mean: {suggested}" in msg or f", {suggested}" in msg, msg


def test_typo_from_the_cli_is_one_clear_line(capsys):
    assert main(["models", "mimi"]) == 2
    err = capsys.readouterr().err
    assert "did you mean: mini" in err.lower() and "internal error" not in err


def test_register_a_model_in_process():
    seen = []

    def loader(ref, device):
        seen.append((ref, device))
        return FakeModel(int(ref.ref or 16))

    register("unit-test-model", loader, "a model registered by a test")
    try:
        assert registered()["unit-test-model"] == "a model registered by a test"
        m = clipsift.load("unit-test-model:24")
        assert m.dim == 24 and seen[-1] == (ModelRef("unit-test-model:24", "unit-test-model",
                                                     "24"), "cpu")
        assert clipsift.load("unit-test-model").dim == 16
    finally:
        unregister("unit-test-model")
    with pytest.raises(UnknownModel):
        clipsift.load("unit-test-model")
    with pytest.raises(UsageError, match="cannot register"):
        register("bad name!", loader)
    with pytest.raises(UsageError, match="built-in kind"):
        register("folder", loader)


def test_fake_is_not_part_of_the_package(monkeypatch):
    """The package ships no test model: without the plugin, `fake` is an unknown name."""
    import importlib.util

    from tests.support import fake_model

    assert importlib.util.find_spec("clipsift.models.fake") is None
    monkeypatch.setenv(PLUGINS_ENV, "")
    unregister("fake")
    try:
        with pytest.raises(UnknownModel, match="unknown model 'fake'"):
            clipsift.load("fake")
    finally:
        register("fake", fake_model.load_fake)


PLUGIN = textwrap.dedent("""
    from clipsift.models.registry import register
    from tests.support.fake_model import FakeModel

    register("NAME", lambda ref, device: FakeModel(int(ref.ref or 8)), "from a plugin")
""")

CHILD = textwrap.dedent("""
    import sys
    from clipsift.cli.main import main
    codes = [main(["models", "from-file:12"]), main(["models", "from-module:6"]),
             main(["models"])]
    sys.exit(max(codes))
""")


@pytest.mark.slow  # ~15 s: a CLI process imports torch and open_clip
def test_plugins_are_seen_by_subprocesses(tmp_path):
    """A plugin named by file and one named by module, in a CLI subprocess started in
    another directory."""
    pkg = tmp_path / "plugs"
    pkg.mkdir()
    (pkg / "file_plugin.py").write_text(PLUGIN.replace("NAME", "from-file"))
    (pkg / "module_plugin.py").write_text(PLUGIN.replace("NAME", "from-module"))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, PLUGINS_ENV: f"{pkg / 'file_plugin.py'}{os.pathsep}module_plugin",
           "PYTHONPATH": os.pathsep.join([str(pkg), root])}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "dim: 12" in out.stdout and "dim: 6" in out.stdout
    assert "from-file  (from a plugin)" in out.stdout
    assert "from-module  (from a plugin)" in out.stdout


def test_broken_plugin_is_a_usage_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.setenv(PLUGINS_ENV, str(tmp_path / "broken_plugin.py"))
    assert main(["models", "mini"]) == 2
    err = capsys.readouterr().err
    assert "CLIPSIFT_PLUGINS" in err and "boom" in err and "internal error" not in err


def test_plugin_env_in_this_process(monkeypatch, tmp_path):
    (tmp_path / "inproc_plugin.py").write_text(PLUGIN.replace("NAME", "plugged-here"))
    monkeypatch.setenv(PLUGINS_ENV, os.pathsep.join([os.environ[PLUGINS_ENV],
                                                     str(tmp_path / "inproc_plugin.py")]))
    try:
        load_plugins()
        assert clipsift.load("plugged-here:5").dim == 5
        assert json.dumps(registered()["plugged-here"]) == '"from a plugin"'
    finally:
        unregister("plugged-here")
