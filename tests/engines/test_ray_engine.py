"""`--engine ray` gives the same results as the local engine, on a local 2-CPU Ray.

Ray is started once for the module (num_cpus=2, no dashboard, small object store) and
shut down after. Starting it takes ~7-10 s here, so one bounded test runs by default and
the rest are marked slow.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytest.importorskip("ray")

import clipsift
from clipsift.engines import make_engine
from clipsift.engines.local import LocalEngine
from clipsift.engines.ray_engine import RayEngine
from clipsift.errors import UsageError
from clipsift.inputs.sources import iter_items
from clipsift.sift.dedup import collection_from_inputs, find_duplicates
from clipsift.sift.filter import run_filter
from clipsift.sift.rules import Prompt, Rule
from tests.sift.test_filter import extract_cifar
from tests.support.fake_model import FakeModel

pytestmark = pytest.mark.ray
LOCAL = LocalEngine(workers=0)


@pytest.fixture(scope="module")
def ray_engine():
    engine = RayEngine(num_cpus=2, encoders=1, object_store_mb=200)
    engine.start()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> list[str]:
    """Inputs: a folder of 2 CIFAR classes x 12 images plus a broken file, and a tar shard
    of 6 more images (31 items)."""
    folder = extract_cifar(tmp_path_factory.mktemp("raydata") / "data", ("cat", "ship"), 12)
    (folder / "cat" / "broken.jpg").write_bytes(b"not an image at all")
    extra = extract_cifar(tmp_path_factory.mktemp("rayshard"), ("truck",), 6, start=50)
    shard = extra / "shard.tar"
    with tarfile.open(shard, "w") as tf:
        for p in sorted((extra / "truck").iterdir()):
            tf.add(p, arcname=f"truck/{p.name}")
    return [str(folder), str(shard)]


def _results(engine, model, inputs):
    return [r for b in engine.embed(model, iter_items(inputs), batch_size=8) for r in b]


def test_ray_embed_equals_local(ray_engine, data):
    """The bounded default test: one small Ray run, compared item by item."""
    model = FakeModel()
    local = _results(LOCAL, model, data)
    remote = _results(ray_engine, model, data)
    assert len(local) == 31 and sum(r.error is not None for r in local) == 1
    assert [r.item.key for r in remote] == [r.item.key for r in local]
    for a, b in zip(local, remote, strict=True):
        assert (a.error, a.width, a.height) == (b.error, b.width, b.height)
        assert (a.vector is None) == (b.vector is None)
        if a.vector is not None:
            assert np.allclose(a.vector, b.vector, atol=1e-6)


def test_ray_index_equals_local(ray_engine, data, tmp_path):
    """`clipsift index --engine ray`: the same catalog, vectors and errors as the local run."""
    from clipsift.index.index import Index

    model = FakeModel()
    with Index(tmp_path / "local.db", model) as a, Index(tmp_path / "ray.db", model) as b:
        s1 = a.add(data, workers=0, batch_size=8)
        s2 = b.add(data, engine=ray_engine, batch_size=8)
        assert (s1.added, s1.errors) == (s2.added, s2.errors) == (30, 1)
        rows_a = {r.key: r for r in a.store.iter_rows()}
        rows_b = {r.key: r for r in b.store.iter_rows()}
        assert rows_a.keys() == rows_b.keys()
        assert {k: r.error for k, r in rows_a.items()} == {k: r.error for k, r in rows_b.items()}
        hits_a = a.search_vector(model.encode_texts(["ship"])[0], k=30)
        hits_b = b.search_vector(model.encode_texts(["ship"])[0], k=30)
        assert [(h.path, round(h.score, 4)) for h in hits_a] == \
            [(h.path, round(h.score, 4)) for h in hits_b]


@pytest.mark.slow
def test_ray_filter_equals_local(ray_engine, data, tiny_vit, tmp_path):
    model = clipsift.load(f"TinyViT-quickgelu:{tiny_vit['safetensors']}")
    rule = Rule(keep=(Prompt("a photo of a ship"), Prompt("a truck")),
                drop=(Prompt("a photo of a cat"),), top_fraction=0.5)
    s1 = run_filter(model, rule, tmp_path / "local.parquet", inputs=data, engine=LOCAL)
    s2 = run_filter(model, rule, tmp_path / "ray.parquet", inputs=data, engine=ray_engine)
    a = pq.read_table(tmp_path / "local.parquet").to_pandas()
    b = pq.read_table(tmp_path / "ray.parquet").to_pandas()
    assert (s1.items, s1.errors, s1.kept) == (31, 1, 15)
    assert (s1.kept, s1.dropped, s1.errors) == (s2.kept, s2.dropped, s2.errors)
    for name in ("path", "decision", "width", "height", "size"):
        assert a[name].equals(b[name]), name
    assert list(a["error"].isna()) == list(b["error"].isna())
    for name in ("keep:a photo of a ship", "keep:a truck", "drop:a photo of a cat"):
        assert np.allclose(a[name], b[name], atol=1e-5, equal_nan=True)


@pytest.mark.slow
def test_ray_parquet_shards_and_dedup_equal_local(ray_engine, data, tmp_path):
    model = FakeModel()
    local_results = _results(LOCAL, model, data)
    summary = ray_engine.write_parquet(model, iter_items(data), tmp_path / "emb", batch_size=8)
    assert (summary.rows, summary.errors) == (31, 1) and summary.files >= 1
    table = pq.read_table(tmp_path / "emb")
    by_key = {k: v for k, v in zip(table["key"].to_pylist(), table["embedding"].to_pylist(),
                                   strict=True)}
    for r in local_results:
        if r.vector is None:
            assert by_key[r.item.key] is None
        else:
            assert np.allclose(by_key[r.item.key], r.vector, atol=1e-6)
    info = json.loads((tmp_path / "emb" / "_clipsift.json").read_text())
    assert info == {"model": "fake", "dim": 64, "fingerprint": model.fingerprint.digest,
                    "rows": 31, "errors": 1, "unreadable": {}, "decode": "exact"}
    local = collection_from_inputs(model, data, engine=LOCAL)
    remote = collection_from_inputs(model, data, engine=ray_engine)
    assert local.keys == remote.keys and np.allclose(local.vectors, remote.vectors, atol=1e-6)
    groups = [[remote.keys[m] for m in g.members] for g in find_duplicates(remote, 0.9).groups]
    assert groups == [[local.keys[m] for m in g.members]
                      for g in find_duplicates(local, 0.9).groups]


@pytest.mark.slow
def test_ray_stop_and_compressed_shards(ray_engine, data, tmp_path):
    import threading

    gz = tmp_path / "shard.tar.gz"
    with tarfile.open(gz, "w:gz") as tf:
        for p in sorted((Path(data[0]) / "ship").iterdir())[:4]:
            info = tf.gettarinfo(p, arcname=f"ship/{p.name}")
            tf.addfile(info, io.BytesIO(p.read_bytes()))
    model = FakeModel()
    remote = _results(ray_engine, model, [gz])
    local = _results(LOCAL, model, [gz])
    assert [r.item.key for r in remote] == [r.item.key for r in local] and len(local) == 4
    stop = threading.Event()
    batches = []
    for batch in ray_engine.embed(model, iter_items(data), batch_size=4, stop=stop):
        batches.append(batch)
        stop.set()
    assert len(batches) == 1


def test_ray_parquet_names_the_model_and_unreadable_folders(ray_engine, data, tmp_path,
                                                           monkeypatch):
    """Ray shards carry the model keys of every clipsift Parquet file; a folder the driver
    could not list is in the summary and `_clipsift.json`, not silently missing."""
    import errno
    import os

    from clipsift.inputs.sources import Walk

    locked = os.path.join(data[0], "ship")
    real = os.scandir

    def scandir(p=".", *args):
        if os.path.abspath(os.fspath(p)) == locked:
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), locked)
        return real(p, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    model = FakeModel()
    summary = ray_engine.write_parquet(model, Walk([data[0]]), tmp_path / "emb", batch_size=8)
    assert summary.unreadable == {locked: os.strerror(errno.EACCES)}
    assert summary.rows == 13  # the 12 cats and the broken file; the ships are unknown
    info = json.loads((tmp_path / "emb" / "_clipsift.json").read_text())
    assert info["unreadable"] == {locked: os.strerror(errno.EACCES)}
    assert info["fingerprint"] == summary.fingerprint == model.fingerprint.digest
    for f in sorted((tmp_path / "emb").glob("chunk-*/*.parquet")):
        meta = pq.read_schema(f).metadata
        assert (meta[b"clipsift.model"], meta[b"clipsift.dim"]) == (b"fake", b"64"), f
        assert meta[b"clipsift.fingerprint"] == model.fingerprint.digest.encode(), f


@pytest.mark.slow
def test_ray_decodes_exactly_like_the_other_routes(ray_engine, tmp_path):
    """Every kind of file gives the reference vector on Ray too (PIL full decode + EXIF +
    alpha on white, the model's preprocess); fast decoding only when asked, and recorded."""
    from clipsift.engines.base import PipelineStats
    from tests.support.imagekinds import reference_rgb, write_kinds

    kinds = write_kinds(tmp_path / "kinds")
    model = FakeModel()
    by_name = {r.item.key.rsplit("/", 1)[1]: r for r in _results(ray_engine, model,
                                                                  [str(tmp_path / "kinds")])}
    assert sorted(by_name) == sorted(kinds)
    for name, path in kinds.items():
        ref = model.encode_images([reference_rgb(path)])[0]
        assert by_name[name].error is None
        assert float(np.max(np.abs(by_name[name].vector - ref))) <= 1e-6, name
    stats = PipelineStats()
    with RayEngine(fast_decode=True) as fast:  # joins the running Ray, leaves it running
        assert fast.decode_mode == "fast"
        got = [r for b in fast.embed(model, iter_items([str(kinds["big.jpg"])]), stats=stats)
               for r in b]
    assert stats.decode_mode == "fast"
    ref = model.encode_images([reference_rgb(kinds["big.jpg"])])[0]
    assert float(np.max(np.abs(got[0].vector - ref))) > 1e-6


def test_make_engine_names():
    assert make_engine("local", workers=0).name == "local"
    with pytest.raises(UsageError, match="local, ray"):
        make_engine("spark")


@pytest.mark.slow
def test_ray_keeps_file_names_that_are_not_utf8(ray_engine, data, tmp_path):
    """Keys travel to the Ray workers as bytes (clipsift.inputs.keys): a Latin-1 file name
    (and a folder named so) comes back exact, in results and in Parquet shards."""
    import os

    from clipsift.inputs.keys import keys_from_columns

    folder = tmp_path / os.fsdecode(b"d\xe9j\xe0")
    folder.mkdir()
    cats = sorted(Path(data[0], "cat").glob("*.jpg"))[:3]
    for i, src in enumerate(cats):
        (folder / os.fsdecode(b"caf\xe9-%d.jpg" % i)).write_bytes(src.read_bytes())
    model = FakeModel()
    local = _results(LOCAL, model, [str(folder)])
    remote = _results(ray_engine, model, [str(folder)])
    assert [r.item.key for r in remote] == [r.item.key for r in local]
    assert all(r.error is None for r in remote) and len(remote) == 3
    assert os.fsencode(remote[0].item.key).endswith(b"/d\xe9j\xe0/caf\xe9-0.jpg")
    for a, b in zip(local, remote, strict=True):
        assert np.allclose(a.vector, b.vector, atol=1e-6)
    ray_engine.write_parquet(model, iter_items([str(folder)]), tmp_path / "emb", batch_size=2)
    table = pq.read_table(sorted((tmp_path / "emb").glob("chunk-*/*.parquet")))
    keys = keys_from_columns(table["key"].to_pylist(), table["key_bytes"].to_pylist())
    assert sorted(keys) == sorted(r.item.key for r in local)
