"""Model identity is the weights, not the name: an index refuses vectors of another model
that has the same name (two `mymodel` folders, a retrained model), `reembed` rebuilds every
vector and is crash-safe, and an index from an older clipsift adopts the fingerprint once."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

import clipsift
from clipsift.cli.main import main
from clipsift.errors import ModelMismatch
from clipsift.index.index import Index
from tests.support.fake_model import FakeModel
from tests.support.tinymodels import save_named_folder as model_folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("models")
    return model_folder(base / "a" / "mymodel", 1), model_folder(base / "b" / "mymodel", 2)


@pytest.fixture
def tree(photos, tmp_path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    for p in photos[:12]:
        shutil.copy(p, root / p.name)
    return root


def stored(db: Path) -> dict[str, np.ndarray]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT i.key, v.vec FROM items i JOIN vectors v ON v.id = i.id")
        return {k: np.frombuffer(v, "<f2").astype(np.float32) for k, v in rows}
    finally:
        con.close()


def assert_all_from(db: Path, model, keys) -> None:
    want = model.encode_images(sorted(keys))
    got = stored(db)
    assert sorted(got) == sorted(keys)
    np.testing.assert_allclose(np.stack([got[k] for k in sorted(keys)]), want, atol=3e-3)


def test_same_name_other_weights_is_refused(folders, tree, tmp_path, capsys):
    a, b = (clipsift.load(str(f)) for f in folders)
    assert a.name == b.name == "mymodel"
    db = tmp_path / "i.db"
    Index(db, a).add([tree], workers=0)
    with pytest.raises(ModelMismatch) as err:
        Index(db, b).add([tree], workers=0)
    msg = str(err.value)
    assert a.fingerprint.short in msg and b.fingerprint.short in msg
    assert str(folders[0]) in msg and str(folders[1]) in msg and "--reembed" in msg
    code = main(["index", str(tree), "--index", str(db), "--model", str(folders[1]), "-q",
                 "--workers", "0"])
    assert code == 2 and "--reembed" in capsys.readouterr().err
    assert_all_from(db, a, [str(p) for p in tree.iterdir()])  # nothing of `b` got in


def test_reembed_rebuilds_every_vector(folders, tree, tmp_path, capsys):
    a, b = (clipsift.load(str(f)) for f in folders)
    db = tmp_path / "i.db"
    Index(db, a).add([tree], workers=0)
    with Index(db, b, reembed=True) as idx:
        s = idx.add([tree], workers=0)
        assert (s.updated, s.encoded, s.removed) == (12, 12, 0)
        assert idx.fingerprint == b.fingerprint
    assert_all_from(db, b, [str(p) for p in tree.iterdir()])
    with pytest.raises(ModelMismatch):  # the index now belongs to `b`
        Index(db, a)
    assert main(["index", str(tree), "--index", str(db), "--model", str(folders[0]),
                 "--reembed", "-q", "--workers", "0"]) == 0
    assert_all_from(db, a, [str(p) for p in tree.iterdir()])


def test_reembed_stopped_halfway_never_mixes(folders, tree, tmp_path):
    a, b = (clipsift.load(str(f)) for f in folders)
    db = tmp_path / "i.db"
    Index(db, a).add([tree], workers=0)
    stop = threading.Event()
    with Index(db, b, reembed=True) as idx:
        s = idx.add([tree], workers=0, batch_size=4, stop=stop, progress=lambda p: stop.set())
        assert s.interrupted and s.updated == 4
        assert idx.info.stale == 8  # the rest still waits for `b`: it holds no vector
        assert len(idx.search("a dog", k=12)) == 4
        done = {k for k in stored(db)}
    assert_all_from(db, b, done)  # only `b` vectors, never a mix
    with pytest.raises(ModelMismatch):
        Index(db, a).add([tree], workers=0)
    with Index(db, b) as idx:  # no --reembed needed to finish
        s = idx.add([tree], workers=0)
        assert (s.updated, s.unchanged, idx.info.stale) == (8, 4, 0)
    assert_all_from(db, b, [str(p) for p in tree.iterdir()])


def test_precision_class_is_part_of_the_identity(tiny_vit, tree, tmp_path):
    name = f"TinyViT-quickgelu:{tiny_vit['safetensors']}"
    fp32 = clipsift.load(name)
    onnx = clipsift.load(name, precision="fp32-onnx")
    int8 = clipsift.load(name, precision="int8")
    assert fp32.fingerprint == onnx.fingerprint  # same numbers to 1e-5: one class
    assert int8.fingerprint != fp32.fingerprint and int8.fingerprint.precision == "int8"
    db = tmp_path / "i.db"
    Index(db, int8).add([tree], workers=0)
    with pytest.raises(ModelMismatch, match="int8"):
        Index(db, fp32).add([tree], workers=0)
    with Index(db) as idx:  # the recorded model comes back at its recorded precision
        assert idx.model.precision == "int8"
        assert idx.add([tree], workers=0).unchanged == 12


def test_identity_is_the_weights_not_the_file_or_the_name(tiny_vit, arch_configs):
    sd = clipsift.load(f"TinyViT:{tiny_vit['state_dict']}")
    st = clipsift.load(f"TinyViT:{tiny_vit['safetensors']}")
    wrapped = clipsift.load(f"TinyViT:{tiny_vit['wrapped']}")
    assert sd.fingerprint == st.fingerprint == wrapped.fingerprint  # same tensors
    assert sd.fingerprint.source != st.fingerprint.source
    quick = clipsift.load(f"TinyViT-quickgelu:{tiny_vit['safetensors']}")
    assert quick.fingerprint != st.fingerprint  # same tensors, another activation


def test_preprocessing_and_tokenizer_are_part_of_the_identity(tmp_path):
    base = clipsift.load(str(model_folder(tmp_path / "m1", 3)))
    other_mean = clipsift.load(str(model_folder(tmp_path / "m2", 3, mean=(0.5, 0.5, 0.5))))
    other_size = clipsift.load(str(model_folder(tmp_path / "m3", 3, resize_mode="squash")))
    assert base.fingerprint.weights == other_mean.fingerprint.weights
    assert len({base.fingerprint, other_mean.fingerprint, other_size.fingerprint}) == 3
    assert base.fingerprint.tokenizer == other_mean.fingerprint.tokenizer
    assert FakeModel().fingerprint == FakeModel().fingerprint != FakeModel(32).fingerprint


def test_index_from_an_older_clipsift_adopts_the_fingerprint_once(tree, tmp_path):
    db = tmp_path / "old.db"
    Index(db, FakeModel()).add([tree], workers=0)
    con = sqlite3.connect(db)  # what an index written before fingerprints looks like
    con.execute("DELETE FROM meta WHERE key = 'fingerprint'")
    con.commit()
    con.close()
    with Index(db, FakeModel()) as idx:
        assert idx.fingerprint is None
        s = idx.add([tree], workers=0)
        assert s.unchanged == 12 and "adopted" in (s.notice or "")
        assert idx.fingerprint == FakeModel().fingerprint
    with Index(db, FakeModel()) as idx:
        assert idx.add([tree], workers=0).notice is None
