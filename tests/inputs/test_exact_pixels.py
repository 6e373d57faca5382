"""Exact by default (issue 15): a file's pixels and vector equal the reference's, on every
kind of file and by every input route; reduced-scale decoding only when asked, and said.

The reference is `tests.support.imagekinds.reference_rgb`: PIL's full decode +
`ImageOps.exif_transpose` + alpha composited on white (+ 16-bit scaled v/257), then the
model's own `preprocess`. Model: TinyViT (open_clip ViT, 32 px input, random weights).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import clipsift
from clipsift.cli.main import main
from clipsift.embed import embed_to_parquet
from clipsift.engines import make_engine
from clipsift.engines.base import PipelineStats
from clipsift.engines.local import LocalEngine, embed_items
from clipsift.inputs.images import decode_image, open_image
from clipsift.inputs.sources import Item, iter_items
from tests.support.fake_model import FakeModel
from tests.support.imagekinds import reference_rgb, write_kinds

KINDS = ["big.jpg", "big-rotated.jpg", "rotated.jpg", "alpha.png", "cmyk.jpg", "deep16.png",
         "palette.png"]


@pytest.fixture(scope="module")
def tiny(tiny_vit):
    return clipsift.load(f"TinyViT-quickgelu:{tiny_vit['safetensors']}")


@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> dict[str, Path]:
    return write_kinds(tmp_path_factory.mktemp("kinds"))


@pytest.fixture(scope="module")
def reference(tiny, kinds) -> dict[str, np.ndarray]:
    """Reference vectors: the model's preprocess of the reference pixels."""
    return {name: tiny.encode_pixels(tiny.preprocess(reference_rgb(p))[None])[0]
            for name, p in kinds.items()}


def _vectors(model, items, **kw) -> dict[str, np.ndarray]:
    out = {}
    for batch in embed_items(model, items, batch_size=4, **kw):
        for r in batch:
            assert r.error is None, (r.item.key, r.error)
            out[r.item.key.rpartition("::")[2].rpartition("/")[2]] = r.vector
    return out


@pytest.mark.parametrize("name", KINDS)
def test_decoded_pixels_equal_the_reference(tiny, kinds, reference, name):
    path = kinds[name]
    ref = reference_rgb(path)
    got = open_image(path)
    assert got.size == ref.size
    assert np.array_equal(np.asarray(got), np.asarray(ref))  # every pixel, exactly
    pixels = tiny.preprocess(got)
    assert torch.max(torch.abs(pixels - tiny.preprocess(ref))) <= 1e-6
    vec = tiny.encode_pixels(pixels[None])[0]
    assert float(vec @ reference[name]) >= 0.9999


def test_every_input_route_gives_the_same_vector(tiny, kinds, reference, tmp_path):
    """path, PIL image, bytes, tar member (by offset and from a .tar.gz): the same vector to
    1e-6 (worker processes below; server and Ray: their own tests)."""
    names = list(kinds)
    shard, gz = tmp_path / "kinds.tar", tmp_path / "kinds.tar.gz"
    for target, mode in ((shard, "w"), (gz, "w:gz")):
        with tarfile.open(target, mode) as tf:
            for name in names:
                tf.add(kinds[name], arcname=f"sub/{name}")
    data = {n: kinds[n].read_bytes() for n in names}
    routes = {
        "PIL image": dict(zip(names, tiny.encode_images([reference_rgb(kinds[n])
                                                          for n in names]), strict=True)),
        "encode_images(path)": dict(zip(names, tiny.encode_images([str(kinds[n])
                                                                    for n in names]),
                                        strict=True)),
        "encode_images(bytes)": dict(zip(names, tiny.encode_images([data[n] for n in names]),
                                         strict=True)),
        "path": _vectors(tiny, [Item(str(kinds[n]), str(kinds[n])) for n in names],
                         workers=0),
        "bytes item": _vectors(tiny, [Item(n, None, data=data[n]) for n in names], workers=0),
        "tar member": _vectors(tiny, iter_items([str(shard)]), workers=0),
        "tar.gz member": _vectors(tiny, iter_items([str(gz)]), workers=0),
    }
    for route, vecs in routes.items():
        _same(route, vecs, reference)


def test_decode_worker_processes_give_the_same_vector(kinds):
    """Worker processes decode like this process does (the fake model: its preprocess
    imports in the workers in no time; any model shows a pixel difference the same way)."""
    fake = FakeModel()
    reference = {n: fake.encode_images([reference_rgb(p)])[0] for n, p in kinds.items()}
    _same("worker processes", _vectors(fake, [Item(str(p), str(p)) for p in kinds.values()],
                                       workers=2), reference)


def _same(route: str, vecs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> None:
    assert sorted(vecs) == sorted(reference), route
    for name, ref in reference.items():
        diff = float(np.max(np.abs(vecs[name] - ref)))
        assert diff <= 1e-6, f"{route} differs on {name}: max abs {diff:.2e}"


def test_fast_decode_is_explicit_and_recorded(tiny, kinds, reference):
    big = kinds["big.jpg"]
    assert decode_image(big).image.size == (3000, 2000)
    assert decode_image(big, 32).image.size == (375, 250)  # 1/8 scale, >= 32 per side
    stats = PipelineStats()
    fast = _vectors(tiny, [Item(str(p), str(p)) for p in kinds.values()], workers=0,
                    fast_decode=True, stats=stats)
    assert stats.decode_mode == "fast"
    for name in ("big.jpg", "big-rotated.jpg", "rotated.jpg"):  # JPEGs >= 2x 32 px change
        assert float(np.max(np.abs(fast[name] - reference[name]))) > 1e-6
    for name in ("alpha.png", "deep16.png", "palette.png"):  # other formats: no draft
        assert float(np.max(np.abs(fast[name] - reference[name]))) <= 1e-6
    exact_stats = PipelineStats()
    _vectors(tiny, [Item(str(big), str(big))], workers=0, stats=exact_stats)
    assert exact_stats.decode_mode == "exact"
    assert LocalEngine().decode_mode == "exact"
    assert make_engine("local", fast_decode=True).decode_mode == "fast"


def test_parquet_and_cli_say_when_decoding_was_fast(tiny, tiny_vit, kinds, tmp_path, capsys):
    exact = embed_to_parquet(tiny, [str(kinds["big.jpg"])], [], tmp_path / "e.parquet",
                             workers=0)
    meta = pq.read_schema(exact.output).metadata
    assert meta[b"clipsift.decode"] == b"exact" and exact.decode_mode == "exact"
    out = tmp_path / "f.parquet"
    code = main(["embed", str(kinds["big.jpg"]), "-o", str(out), "--fast-decode",
                 "--workers", "0", "-m", f"TinyViT-quickgelu:{tiny_vit['safetensors']}"])
    assert code == 0
    assert pq.read_schema(out).metadata[b"clipsift.decode"] == b"fast"
    assert "--fast-decode" in capsys.readouterr().err


def test_evaluation_cache_keeps_fast_and_exact_apart(tiny, kinds, tmp_path):
    from clipsift.evaluation.datasets import EmbeddingCache, embed_dataset, load_dataset

    root = tmp_path / "ds"
    for label, names in (("a", KINDS[:3]), ("b", KINDS[3:])):
        (root / label).mkdir(parents=True)
        for n in names:
            (root / label / n).write_bytes(kinds[n].read_bytes())
    ds = load_dataset(str(root))
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        first = embed_dataset(tiny, ds, cache=cache, workers=0)
        again = embed_dataset(tiny, ds, cache=cache, workers=0)
        fast = embed_dataset(tiny, ds, cache=cache, workers=0, fast_decode=True)
    assert (first.encoded, again.encoded, again.from_cache) == (7, 0, 7)
    assert fast.encoded == 7 and fast.from_cache == 0 and fast.decode_mode == "fast"
    assert np.array_equal(first.vectors, again.vectors)


def test_bytes_and_stream_sources_equal_the_file(kinds):
    for name in ("big-rotated.jpg", "alpha.png", "deep16.png"):
        path = kinds[name]
        ref = np.asarray(reference_rgb(path))
        assert np.array_equal(np.asarray(open_image(path.read_bytes())), ref)
        assert np.array_equal(np.asarray(open_image(io.BytesIO(path.read_bytes()))), ref)


@pytest.mark.parametrize("command", ["embed", "similarity", "classify", "index", "filter",
                                     "dedup", "unique", "evaluate"])
def test_every_decoding_command_has_fast_decode(command, capsys):
    assert main([command, "--help"]) == 0
    assert "--fast-decode" in capsys.readouterr().out


def test_index_with_fast_decode_gets_approximate_vectors(tiny_vit, kinds, reference,
                                                         tmp_path):
    """`clipsift index --fast-decode` really decodes fast (the engine carries the mode)."""
    from clipsift.index.index import Index

    name = f"TinyViT-quickgelu:{tiny_vit['safetensors']}"
    big = str(kinds["big.jpg"])
    vecs = {}
    for flag in ([], ["--fast-decode"]):
        db = tmp_path / f"i{len(flag)}.db"
        assert main(["index", big, "-i", str(db), "-m", name, "-q", "--workers", "0",
                     *flag]) == 0
        with Index(db, create=False) as idx:
            (item_id,) = [r.id for r in idx.store.iter_rows()]
            vecs[bool(flag)] = idx.store.get_vectors([item_id])[1][0].astype(np.float32)
    half = reference["big.jpg"].astype(np.float16).astype(np.float32)  # stored as float16
    assert np.max(np.abs(vecs[False] - half)) <= 1e-3  # exact by default
    assert not np.array_equal(vecs[True], vecs[False])  # --fast-decode: other pixels


def test_orientation_is_applied_once(kinds):
    """The result carries no orientation any more: a caller applying EXIF again (as PIL
    users do) gets the same pixels, not a second rotation."""
    from PIL import ImageOps

    for name in ("rotated.jpg", "big-rotated.jpg"):
        im = open_image(kinds[name])
        again = ImageOps.exif_transpose(im)
        assert again.size == im.size
        assert np.array_equal(np.asarray(again), np.asarray(im))
