"""Every bulk verb runs source -> Engine -> sink: classify, iter_classify, embed_to_parquet,
similarity and embed_dataset take `engine=` (None: a LocalEngine with their `workers` and
`fast_decode`) and give the same results through it; folders the walk cannot list are
failures of their results (and of the CLI: listed, exit 1), never skipped silently."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import clipsift
from clipsift.cli.main import main
from clipsift.engines import engine_or_local
from clipsift.engines.local import LocalEngine
from clipsift.errors import UsageError
from clipsift.evaluation.datasets import embed_dataset, load_dataset
from tests.support.fake_model import FakeModel
from tests.support.helpers import photo_tree

LABELS = ["a dog", "a fish"]
EIO = os.strerror(errno.EIO)


class SpyEngine(LocalEngine):
    """A local engine that records the items it embedded."""

    def __init__(self, fast_decode: bool = False) -> None:
        super().__init__(workers=0, fast_decode=fast_decode)
        self.seen: list[str] = []

    def embed(self, model, items, **kwargs):
        def record():
            for item in items:
                self.seen.append(item.key)
                yield item

        return super().embed(model, record(), **kwargs)


@pytest.fixture
def tree(photos, tmp_path) -> Path:
    """root/<class>/ with 3 photos each, and root/dog/deeper/ with 2 more."""
    return photo_tree(tmp_path / "tree", {"dog": photos[:3], "fish": photos[3:6],
                                          "dog/deeper": photos[6:8]})


def unlistable(monkeypatch, folder: Path) -> Path:
    """Make `folder` fail to list (EIO), as on a failing disk or share."""
    real = os.scandir

    def scandir(p=".", *args):
        if os.path.abspath(os.fspath(p)) == str(folder):
            raise OSError(errno.EIO, EIO, str(folder))
        return real(p, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    return folder


@pytest.fixture
def locked(tree, monkeypatch) -> Path:
    """root/dog/deeper cannot be listed."""
    return unlistable(monkeypatch, tree / "dog" / "deeper")


def test_every_verb_runs_on_the_engine_given(tree, tmp_path):
    model = FakeModel()
    plain = clipsift.classify(model, [str(tree)], LABELS, workers=0)
    spy = SpyEngine()
    assert clipsift.classify(model, [str(tree)], LABELS, engine=spy) == plain
    assert len(spy.seen) == 8
    spy = SpyEngine()
    assert list(clipsift.iter_classify(model, [str(tree)], LABELS, engine=spy)) == plain
    assert len(spy.seen) == 8
    spy = SpyEngine()
    s = clipsift.embed_to_parquet(model, [str(tree)], ["a dog"], tmp_path / "e.parquet",
                                  engine=spy)
    assert (s.images, s.texts, len(spy.seen)) == (8, 1, 8)
    spy = SpyEngine()
    sim = clipsift.similarity(model, [str(tree)], ["a dog"], engine=spy)
    assert sim.images == spy.seen and sim.cosine.shape == (8, 1)
    spy = SpyEngine()
    ds = load_dataset(tree)
    emb = embed_dataset(model, ds, engine=spy)
    assert (emb.encoded, len(spy.seen)) == (8, 8)
    assert emb.vectors.shape == embed_dataset(model, ds, workers=0).vectors.shape


def test_the_engine_decides_the_decode_mode(tree, tmp_path):
    model = FakeModel()
    s = clipsift.embed_to_parquet(model, [str(tree)], [], tmp_path / "f.parquet",
                                  engine=SpyEngine(fast_decode=True))
    assert s.decode_mode == "fast"
    meta = pq.read_schema(tmp_path / "f.parquet").metadata
    assert meta[b"clipsift.decode"] == b"fast"
    assert embed_dataset(model, load_dataset(tree), engine=SpyEngine(True)).decode_mode == "fast"
    with pytest.raises(UsageError, match="fast_decode=True"):  # two answers: refused
        engine_or_local(SpyEngine(), fast_decode=True)
    assert engine_or_local(None, 3, True).decode_mode == "fast"


def test_unreadable_folders_are_failures_of_every_verb(tree, locked, tmp_path):
    model = FakeModel()
    why = f"cannot list folder: {EIO}"
    results = clipsift.classify(model, [str(tree)], LABELS, workers=0)
    assert (results[-1].source, results[-1].error) == (str(locked), why)
    assert sum(r.error is None for r in results) == 6
    s = clipsift.embed_to_parquet(model, [str(tree)], [], tmp_path / "e.parquet", workers=0)
    assert (s.images, s.failed) == (6, [(str(locked), why)])
    sim = clipsift.similarity(model, [str(tree)], ["a dog"])
    assert (len(sim.images), sim.failed) == (6, [(str(locked), why)])
    emb = embed_dataset(model, load_dataset(tree), workers=0)
    assert (len(emb.vectors), emb.failures) == (6, [(str(locked), why)])


def test_cli_lists_unreadable_folders_and_exits_1(tree, locked, tmp_path, capsys):
    for argv in (["classify", str(tree), "--labels", "dog,fish", "--workers", "0"],
                 ["embed", str(tree), "-o", str(tmp_path / "c.parquet"), "--workers", "0"],
                 ["similarity", "--images", str(tree), "--texts", "a dog"]):
        assert main([*argv, "--model", "fake"]) == 1, argv
        captured = capsys.readouterr()
        assert str(locked) in captured.err + captured.out, argv


def test_an_unreadable_class_folder_stops_evaluation(tree, monkeypatch):
    unlistable(monkeypatch, tree / "fish")
    with pytest.raises(UsageError, match=f"class folder .*fish.* cannot be read \\({EIO}"):
        load_dataset(tree)
