"""The decode mode is part of what made an index's vectors: an index records it on its
first add; an add in the other mode is refused (ModelMismatch naming both) unless the
index is re-embedded; `evaluate --index` checks it too; an index from before the mode was
recorded is "legacy" (adds still work and say so; --reembed makes it exact)."""

from __future__ import annotations

import sqlite3

import pyarrow.parquet as pq
import pytest

from clipsift.cli.main import main
from clipsift.engines.local import LocalEngine
from clipsift.errors import ModelMismatch
from clipsift.evaluation.datasets import embed_dataset, load_dataset
from clipsift.index.export import export_parquet
from clipsift.index.index import Index
from tests.support.fake_model import FakeModel
from tests.support.helpers import photo_tree

EXACT, FAST = LocalEngine(0), LocalEngine(0, fast_decode=True)


@pytest.fixture
def tree(photos, tmp_path):
    """root/dog/ and root/fish/, 3 photos each (a dataset and a folder to index)."""
    return photo_tree(tmp_path / "tree", {"dog": photos[:3], "fish": photos[3:6]})


def _forget_decode(path) -> None:
    """What an index made before clipsift recorded the decode mode looks like."""
    db = sqlite3.connect(path)
    with db:
        db.execute("DELETE FROM meta WHERE key = 'decode'")
    db.close()


def test_first_add_records_the_mode_and_the_other_mode_is_refused(tree, tmp_path):
    path = tmp_path / "i.db"
    with Index(path, FakeModel()) as idx:
        assert idx.identity.decode is None  # nothing embedded yet
        idx.add([tree], engine=FAST)
        assert (idx.identity.decode, idx.info.decode) == ("fast", "fast")
    with Index.open(path) as idx, pytest.raises(ModelMismatch) as err:
        idx.add([tree], engine=EXACT)
    assert "with --fast-decode" in str(err.value) and "exactly" in str(err.value)
    assert "--reembed" in str(err.value)
    with Index.open(path) as idx:
        assert idx.add([tree], engine=FAST).unchanged == 6  # the same mode: fine


def test_reembed_rebuilds_in_the_new_mode(tree, tmp_path):
    path = tmp_path / "i.db"
    with Index(path, FakeModel()) as idx:
        idx.add([tree], engine=FAST)
    with Index.open(path, reembed=True) as idx:
        s = idx.add([tree], engine=EXACT)
        assert (s.updated, s.encoded, s.stale) == (6, 6, 0)
        assert "re-embedding 6 items decoded 'exact' instead of 'fast'" in s.notice
        assert idx.identity.decode == "exact"


def test_a_legacy_index_takes_adds_with_a_notice_until_reembedded(tree, tmp_path):
    path = tmp_path / "i.db"
    with Index(path, FakeModel()) as idx:
        idx.add([tree / "dog"])
    _forget_decode(path)
    with Index.open(path) as idx:
        assert idx.identity.decode == "legacy"
        s = idx.add([tree])
        assert s.added == 3 and "older clipsift" in s.notice and "--reembed" in s.notice
        assert idx.identity.decode == "legacy"  # still: it holds vectors of both kinds
    with Index.open(path, reembed=True) as idx:
        s = idx.add([tree])
        assert (s.updated, s.encoded) == (6, 6) and idx.identity.decode == "exact"
    with Index.open(path) as idx:
        assert idx.add([tree]).notice is None


def test_evaluate_reads_only_vectors_decoded_as_it_decodes(tree, tmp_path):
    path = tmp_path / "i.db"
    model = FakeModel()
    with Index(path, model) as idx:
        idx.add([tree])
    ds = load_dataset(tree)
    assert embed_dataset(model, ds, index=path, workers=0).from_index == 6
    with pytest.raises(ModelMismatch, match=r"exactly .*not with --fast-decode"):
        embed_dataset(model, ds, index=path, fast_decode=True, workers=0)
    _forget_decode(path)
    with pytest.raises(ModelMismatch, match=r"older clipsift.*leave --index out"):
        embed_dataset(model, ds, index=path, workers=0)


def test_cli_refuses_a_mixed_add_and_export_says_the_mode(tree, tmp_path, capsys):
    path = tmp_path / "c.db"
    base = ["index", str(tree), "--index", str(path), "--model", "fake", "--workers", "0", "-q"]
    assert main(base) == 0
    assert main([*base, "--fast-decode"]) == 2
    err = capsys.readouterr().err
    assert "exactly" in err and "--fast-decode" in err and "--reembed" in err
    assert main([*base, "--fast-decode", "--reembed"]) == 0
    with Index.open(path) as idx:
        assert idx.identity.decode == "fast"
        export_parquet(idx, tmp_path / "e.parquet")
    assert pq.read_schema(tmp_path / "e.parquet").metadata[b"clipsift.decode"] == b"fast"
