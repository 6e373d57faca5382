"""A model whose preprocess the decode worker processes cannot load (a class from a module
they cannot import: a plugin loaded only in this process) is a setup failure, not bad
images: the run stops with one clear error, and nothing is recorded against the items."""

from __future__ import annotations

import multiprocessing as mp
import shutil
import sys
import types

import pytest

from clipsift.engines.local import embed_items
from clipsift.errors import EngineError
from clipsift.index.index import Index
from clipsift.inputs.sources import iter_items
from tests.support.fake_model import FakeModel

GHOST = "clipsift_ghost_plugin"  # a module that exists in this process only


@pytest.fixture
def ghost_model(monkeypatch) -> FakeModel:
    """FakeModel whose preprocess is an instance of a class of the module GHOST, which
    is in this process's sys.modules but on no path a worker process can import from."""
    module = types.ModuleType(GHOST)
    exec("class Preprocess:\n"
         "    def __init__(self, inner):\n"
         "        self.inner = inner\n"
         "    def __call__(self, image):\n"
         "        return self.inner(image)\n", module.__dict__)
    monkeypatch.setitem(sys.modules, GHOST, module)
    model = FakeModel()
    model.preprocess = module.Preprocess(model.preprocess)
    return model


@pytest.fixture
def folder(photos, tmp_path):
    for p in photos[:6]:
        shutil.copy(p, tmp_path / p.name)
    return tmp_path


def test_workers_that_cannot_load_the_preprocess_stop_the_run(ghost_model, folder):
    in_process = [r for b in embed_items(ghost_model, iter_items([str(folder)]), workers=0)
                  for r in b]
    assert all(r.error is None for r in in_process)  # this process can use it
    with pytest.raises(EngineError) as err:
        for _ in embed_items(ghost_model, iter_items([str(folder)]), workers=2, batch_size=2):
            pass
    message = str(err.value)
    assert GHOST in message and "workers=0" in message and "CLIPSIFT_PLUGINS" in message
    assert err.value.exit_code == 2
    assert not mp.active_children()


def test_an_index_add_records_nothing_against_the_items(ghost_model, folder, tmp_path):
    with Index(tmp_path / "i.db", ghost_model) as idx:
        with pytest.raises(EngineError, match=GHOST):
            idx.add([folder], workers=2, batch_size=2)
        assert (idx.count(), idx.errors()) == (0, [])  # nothing to "never retry"
        assert idx.add([folder], workers=0).added == 6


def test_a_preprocess_that_cannot_be_pickled_is_a_clear_error(folder):
    model = FakeModel()
    model.preprocess = lambda image: FakeModel().preprocess(image)
    with pytest.raises(EngineError, match="cannot be sent to decode worker processes"):
        list(embed_items(model, iter_items([str(folder)]), workers=2))
