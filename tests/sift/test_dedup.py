"""Near-duplicates and uniqueness on real ImageNet sample photos with planted copies.

The embedder is FakeModel: its image vector is a fixed random projection of an 8x8 colour
thumbnail, which makes it a sensible perceptual stand-in for a real CLIP model here:
re-encoded, resized and slightly cropped copies of a photo get vectors at cosine >= 0.94,
while the 40 distinct photos stay below 0.89 of each other (both checked below). A tiny
random-weight CLIP would not make this meaningful: its vectors carry no image similarity.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from clipsift.cli.main import main
from clipsift.engines.local import LocalEngine
from clipsift.errors import UsageError
from clipsift.sift.dedup import (
    Collection,
    collection_from_index,
    collection_from_inputs,
    find_duplicates,
    similar_pairs,
    write_groups_parquet,
)
from clipsift.sift.dedup_page import write_groups_html
from clipsift.sift.unique import uniqueness
from tests.support.fake_model import FakeModel

THRESHOLD = 0.93
PLANTED = 8


def _variants(src: Path, dest: Path) -> list[Path]:
    """A re-encoded copy (JPEG quality 30), a copy resized to 50%, a 3%-cropped copy."""
    im = Image.open(src).convert("RGB")
    w, h = im.size
    out = [dest / f"{src.stem}-q30.jpg", dest / f"{src.stem}-half.jpg",
           dest / f"{src.stem}-crop.jpg"]
    im.save(out[0], "JPEG", quality=30)
    im.resize((w // 2, h // 2), Image.Resampling.LANCZOS).save(out[1], "JPEG", quality=90)
    im.crop((int(w * .03), int(h * .03), int(w * .97), int(h * .97))).save(out[2], "JPEG",
                                                                             quality=90)
    return out


@pytest.fixture(scope="module")
def planted(photos, tmp_path_factory) -> tuple[Path, dict[str, set[str]]]:
    """40 distinct photos + 3 near-copies of each of the first 8, and one noise image.

    Returns the folder and, per original, the set of keys of its group. Every re-encoded
    copy is made older than its original (same resolution), so the default keeper policy
    (largest resolution, then oldest) picks the copy.
    """
    folder = tmp_path_factory.mktemp("dups")
    (folder / "copies").mkdir()
    groups: dict[str, set[str]] = {}
    for i, p in enumerate(photos[:40]):
        target = folder / p.name
        shutil.copy(p, target)
        os.utime(target, (2_000_000_000, 2_000_000_000))
        if i < PLANTED:
            copies = _variants(target, folder / "copies")
            os.utime(copies[0], (1_000_000_000, 1_000_000_000))
            groups[str(target)] = {str(target), *map(str, copies)}
    noise = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "zz-noise.png")
    return folder, groups


@pytest.fixture(scope="module")
def coll(planted) -> Collection:
    return collection_from_inputs(FakeModel(), [planted[0]], engine=LocalEngine(workers=0))


def test_finds_planted_duplicates_and_no_false_groups(planted, coll):
    folder, groups = planted
    distinct = [i for i, k in enumerate(coll.keys) if Path(k).parent == folder]
    sims = coll.vectors[distinct] @ coll.vectors[distinct].T
    np.fill_diagonal(sims, -1)
    assert sims.max() < THRESHOLD - 0.03, "precondition: distinct photos must differ"
    result = find_duplicates(coll, THRESHOLD)
    found = [{coll.keys[m] for m in g.members} for g in result.groups]
    assert sorted(map(sorted, found)) == sorted(map(sorted, groups.values()))
    assert (len(result.groups), result.duplicates, result.items) == (PLANTED, 3 * PLANTED, 65)
    for g in result.groups:
        keeper = coll.keys[g.keeper]
        assert keeper.endswith("-q30.jpg")  # same pixels as the original, and older
        assert g.similarity[0] == 1.0 and min(g.similarity[1:]) >= THRESHOLD
        assert list(g.similarity[1:]) == sorted(g.similarity[1:], reverse=True)
    by_newest = find_duplicates(coll, THRESHOLD, keep="resolution,newest")
    assert all(Path(coll.keys[g.keeper]).parent == folder for g in by_newest.groups)
    smallest = find_duplicates(coll, THRESHOLD, keep="smallest-file")
    assert all(coll.size[g.keeper] == min(coll.size[m] for m in g.members)
               for g in smallest.groups)
    with pytest.raises(UsageError, match="resolution"):
        find_duplicates(coll, THRESHOLD, keep="biggest")


def test_groups_parquet_and_html(planted, coll, tmp_path):
    result = find_duplicates(coll, THRESHOLD)
    table = pq.read_table(write_groups_parquet(result, coll, tmp_path / "g.parquet"))
    df = table.to_pandas()
    assert len(df) == 4 * PLANTED and df["keeper"].sum() == PLANTED
    assert df.groupby("group")["path"].count().tolist() == [4] * PLANTED
    assert (df[df["keeper"]]["width"] > 0).all()
    assert table.schema.metadata[b"clipsift.threshold"] == str(THRESHOLD).encode()
    page = write_groups_html(result, coll, tmp_path / "g.html").read_text()
    assert page.count("data:image/jpeg;base64,") == 4 * PLANTED
    assert page.count('class="member keeper"') == PLANTED and "<script" not in page


def test_dedup_cli_on_an_index(planted, tmp_path, capsys):
    from clipsift.index.index import Index

    folder, groups = planted
    with Index(tmp_path / "i.db", FakeModel()) as idx:
        idx.add([folder], workers=0)
    from_index = collection_from_index(tmp_path / "i.db")
    assert len(from_index) == 65
    code = main(["dedup", str(tmp_path / "i.db"), "--threshold", str(THRESHOLD), "-o",
                 str(tmp_path / "d.parquet"), "--html", str(tmp_path / "d.html"), "--json"])
    assert code == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert sorted(sorted(g["members"]) for g in lines) == sorted(map(sorted, groups.values()))
    assert (tmp_path / "d.html").stat().st_size > 10_000


def test_union_find_joins_chains_and_ivf_agrees():
    rng = np.random.default_rng(1)
    base = rng.standard_normal((2000, 32)).astype(np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    near = base[:50] + 0.02 * rng.standard_normal((50, 32)).astype(np.float32)
    vecs = np.concatenate([base, near / np.linalg.norm(near, axis=1, keepdims=True)])
    exact = similar_pairs(vecs, 0.97, method="exact")
    ivf = similar_pairs(vecs, 0.97, method="ivf", nprobe=64)
    assert exact[3] == "exact" and ivf[3] == "ivf"
    assert set(zip(*exact[:2], strict=True)) == {(i, 2000 + i) for i in range(50)}
    assert set(zip(*ivf[:2], strict=True)) == set(zip(*exact[:2], strict=True))
    # a chain a~b, b~c with a and c further apart is one group (single linkage)
    angle = np.deg2rad([0.0, 10.0, 20.0])
    chain = np.stack([np.cos(angle), np.sin(angle)], 1).astype(np.float32)
    n = len(chain)
    coll = Collection(["a", "b", "c"], chain, np.full(n, 10), np.full(n, 10),
                      np.arange(n, dtype=np.float64), np.full(n, 1))
    result = find_duplicates(coll, float(np.cos(np.deg2rad(12))))
    assert [sorted(g.members) for g in result.groups] == [[0, 1, 2]]
    assert result.pairs == 2


def test_uniqueness_ranks_the_outlier_first_and_copies_last(planted, coll, capsys):
    folder, groups = planted
    result = uniqueness(coll, k=3)
    ranked = [coll.keys[i] for i in result.order]
    assert ranked[0].endswith("zz-noise.png")
    grouped = set().union(*groups.values())
    assert set(ranked[-len(grouped):]) == grouped  # near-copies are the least unusual
    assert list(result.score) == sorted(result.score, reverse=True)
    assert main(["unique", str(folder), "--model", "fake", "--workers", "0", "-k", "3",
                 "--top", "2", "--json"]) == 0
    rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[0]["path"].endswith("zz-noise.png")
    with pytest.raises(UsageError):
        uniqueness(Collection(["x"], coll.vectors[:1], *(np.zeros(1),) * 4), k=3)


def test_reencoded_bytes_are_not_identical(planted):
    """The planted copies are real re-encodings, not byte copies of the originals."""
    _, groups = planted
    for original, members in groups.items():
        data = {Path(m).read_bytes() for m in members}
        assert len(data) == 4
        with Image.open(io.BytesIO(Path(original).read_bytes())) as im:
            assert im.size[0] > 100


@pytest.mark.parametrize("method", ["exact", "ivf"])
def test_threshold_one_groups_every_byte_identical_copy(photos, tmp_path, method):
    """15 byte-identical files among 20 other photos: ONE group of all 15 at threshold 1.0.

    Identical vectors score 0.99999994 against each other in float32; the threshold keeps
    pairs from `threshold - SIM_TOLERANCE` on, so rounding cannot split the group."""
    for p in photos[:20]:
        shutil.copy(p, tmp_path / p.name)
    data = photos[25].read_bytes()
    for i in range(15):
        (tmp_path / f"copy-{i:02d}.jpg").write_bytes(data)
    coll = collection_from_inputs(FakeModel(), [tmp_path], engine=LocalEngine(workers=0))
    result = find_duplicates(coll, 1.0, method=method)
    assert result.method == method
    assert [sorted(Path(coll.keys[m]).name for m in g.members) for g in result.groups] == [
        [f"copy-{i:02d}.jpg" for i in range(15)]]
    assert result.pairs == 15 * 14 // 2 and result.duplicates == 14
