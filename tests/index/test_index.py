"""Index end to end on real photos with the fake model: index, search, incremental runs,
errors, export, model mismatch, the writer lock, stopping, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsift.cli.main import main
from clipsift.errors import IndexInUse, ModelMismatch, UsageError
from clipsift.index.ann import AnnConfig
from clipsift.index.index import Index, resolve_index_path
from tests.support.fake_model import FakeModel


class CountingModel(FakeModel):
    """FakeModel that counts the images it encodes (to prove what is not re-encoded)."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__(dim)
        self.encoded = 0

    def encode_pixels(self, pixels):
        self.encoded += len(pixels)
        return super().encode_pixels(pixels)


@pytest.fixture
def collection(photos, tmp_path) -> Path:
    """30 of the sample photos in a fresh folder (with one sub-folder)."""
    folder = tmp_path / "coll"
    (folder / "sub").mkdir(parents=True)
    for i, p in enumerate(photos[:30]):
        shutil.copy(p, (folder / "sub" if i % 5 == 0 else folder) / p.name)
    return folder


def keys_and_vectors(idx: Index) -> dict[str, np.ndarray]:
    out = {}
    for row in idx.store.iter_rows(status="ok"):
        out[row.key] = idx.store.get_vectors([row.id])[1][0]
    return out


def test_index_and_search(collection, tmp_path):
    model = CountingModel()
    idx = Index(tmp_path / "i.db", model)
    s = idx.add([collection], workers=0, batch_size=8)
    assert (s.added, s.errors, s.encoded, s.interrupted) == (30, 0, 30, False)
    assert len(idx) == 30 and model.encoded == 30
    first = sorted(collection.glob("*.JPEG"))[0]
    hits = idx.search_image(first, k=5)
    assert hits[0].path == str(first) and hits[0].score > 0.99
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert idx.search(f"id:{hits[0].id}", k=1)[0].id == hits[0].id
    text_hits = idx.search("a fish in the water", k=30)
    assert len(text_hits) == 30
    cut = text_hits[10].score
    assert all(h.score >= cut for h in idx.search("a fish in the water", k=30, threshold=cut))
    combo = idx.search('"fish" - "water"', k=3)
    assert len(combo) == 3 and combo != text_hits[:3]
    row = idx.store.rows([hits[0].id])[hits[0].id]
    with Image.open(first) as im:
        assert (row.width, row.height) == im.size
    assert len(row.hash) == 32


def test_incremental_add_modify_delete_rename(collection, tmp_path, photos):
    model = CountingModel()
    idx = Index(tmp_path / "i.db", model)
    idx.add([collection], workers=0)
    before = keys_and_vectors(idx)
    files = sorted(p for p in collection.rglob("*.JPEG"))
    for p in photos[30:35]:  # 5 new
        shutil.copy(p, collection / p.name)
    for p in files[:2]:  # 2 modified (new content)
        with Image.open(p) as im:
            im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(p, quality=90)
    for p in files[2:5]:  # 3 deleted
        p.unlink()
    renamed = {files[5]: collection / "moved-1.jpg", files[6]: collection / "sub" / "moved-2.jpg"}
    old_ids = {str(a): idx.store.lookup([str(a)])[str(a)].id for a in renamed}
    for a, b in renamed.items():
        os.rename(a, b)
    os.utime(files[7], (1, 1))  # touched: same bytes, new mtime
    model.encoded = 0
    s = idx.add([collection], workers=0)
    assert (s.added, s.updated, s.renamed, s.removed, s.errors) == (5, 2, 2, 3, 0)
    assert s.unchanged == 30 - 2 - 3 - 2
    assert model.encoded == s.encoded == 7  # renames and the touched file are not re-encoded
    after = keys_and_vectors(idx)
    assert len(after) == 30 + 5 - 3
    for a, b in renamed.items():
        assert str(a) not in after
        np.testing.assert_array_equal(after[str(b)], before[str(a)])
        assert idx.store.lookup([str(b)])[str(b)].id == old_ids[str(a)]  # same id
    assert not np.array_equal(after[str(files[0])], before[str(files[0])])
    assert idx.store.lookup([str(files[7])])[str(files[7])].mtime == 1.0
    model.encoded = 0
    again = idx.add([collection], workers=0)
    assert (again.unchanged, again.encoded, model.encoded) == (32, 0, 0)


def test_copies_are_not_reencoded_and_other_roots_are_kept(collection, tmp_path, photos):
    model = CountingModel()
    idx = Index(tmp_path / "i.db", model)
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photos[35], other / "x.jpg")
    idx.add([collection, other], workers=0)
    shutil.copy(photos[0], collection / "copy-of-0.jpg")  # same bytes as an indexed file
    model.encoded = 0
    s = idx.add([collection], workers=0)  # `other` not scanned: its item stays
    assert (s.added, s.renamed, s.removed, s.encoded, model.encoded) == (1, 0, 0, 0, 0)
    assert str(other / "x.jpg") in keys_and_vectors(idx)
    (other / "x.jpg").unlink()  # gone, but its folder is not walked: kept (issue 21)
    assert idx.add([collection], workers=0).removed == 0
    assert idx.add([other], workers=0).removed == 1  # walked and confirmed gone


def test_copy_of_old_bytes_while_the_original_changes(collection, tmp_path):
    idx = Index(tmp_path / "i.db", CountingModel())
    idx.add([collection], workers=0, batch_size=4)
    before = keys_and_vectors(idx)
    original = sorted(collection.glob("*.JPEG"))[3]
    copies = [collection / "aaa-copy.jpg", collection / "zzz-copy.jpg"]  # walked before/after
    for c in copies:
        shutil.copy(original, c)
    with Image.open(original) as im:
        im.rotate(90).save(original, format="JPEG")
    s = idx.add([collection], workers=0, batch_size=4)
    assert (s.added, s.updated, s.renamed, s.removed) == (2, 1, 0, 0)
    after = keys_and_vectors(idx)
    for c in copies:  # the copies keep the original's old content, not its new one
        np.testing.assert_allclose(after[str(c)], before[str(original)], atol=2e-3)
    assert not np.allclose(after[str(original)], before[str(original)], atol=2e-3)


def test_bad_files_are_recorded_and_not_retried(collection, tmp_path, capsys):
    (collection / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (collection / "empty.png").write_bytes(b"")
    idx = Index(tmp_path / "i.db", CountingModel())
    s = idx.add([collection], workers=0)
    assert (s.added, s.errors) == (30, 2)
    errors = {Path(r.key).name: r.error for r in idx.errors()}
    assert set(errors) == {"broken.jpg", "empty.png"} and all(errors.values())
    s2 = idx.add([collection], workers=0)
    assert (s2.errors, s2.encoded, s2.unchanged) == (0, 0, 32)
    capsys.readouterr()
    assert main(["errors", str(tmp_path / "i.db")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[0].startswith(str(collection / "broken.jpg") + ": ")


def test_tar_shards(photos, tmp_path):
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tf:
        for p in photos[:6]:
            tf.add(p, arcname=f"imgs/{p.name}")
    idx = Index(tmp_path / "i.db", CountingModel())
    assert idx.add([shard], workers=0).added == 6
    assert all("::imgs/" in k for k in keys_and_vectors(idx))
    assert idx.add([shard], workers=0).unchanged == 6
    with tarfile.open(shard, "w") as tf:  # rewritten without one member
        for p in photos[:5]:
            tf.add(p, arcname=f"imgs/{p.name}")
    s = idx.add([shard], workers=0)
    assert (s.removed, s.encoded) == (1, 0)


def test_export_parquet(collection, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    idx = Index(tmp_path / "i.db", FakeModel())
    idx.add([collection], workers=0)
    out = tmp_path / "out.parquet"
    assert main(["export", str(tmp_path / "i.db"), str(out)]) == 0
    table = pq.read_table(out)
    assert table.num_rows == 30
    assert table.schema.names == ["id", "path", "path_bytes", "size", "mtime", "hash", "width",
                                  "height", "embedding"]
    assert table["path_bytes"].null_count == 30  # only names that are not UTF-8 need it
    meta = table.schema.metadata
    assert (meta[b"clipsift.model"], meta[b"clipsift.dim"]) == (b"fake", b"64")
    assert meta[b"clipsift.fingerprint"].decode() == FakeModel().fingerprint.digest
    emb_type = table.schema.field("embedding").type
    assert pa.types.is_list(emb_type) and emb_type.value_type == pa.float32()
    row = table.slice(0, 1).to_pylist()[0]
    stored = idx.store.get_vectors([row["id"]])[1][0].astype(np.float32)
    np.testing.assert_array_equal(np.asarray(row["embedding"], np.float32), stored)
    assert row["path"] == idx.store.rows([row["id"]])[row["id"]].key


def test_model_mismatch(collection, tmp_path):
    Index(tmp_path / "i.db", FakeModel()).add([collection], workers=0)
    with pytest.raises(ModelMismatch, match=r"built with model 'fake' .* not 'fake:32'"):
        Index(tmp_path / "i.db", FakeModel(dim=32))
    Index(tmp_path / "i.db", "fake")  # the recorded name is fine
    code = main(["index", str(collection), "--index", str(tmp_path / "i.db"), "-m", "fake:32",
                 "-q"])
    assert code == 2


def test_missing_index_and_inputs(tmp_path):
    with pytest.raises(UsageError, match="no index at"):
        Index(tmp_path / "nope.db")
    assert not (tmp_path / "nope.db").exists()
    idx = Index(tmp_path / "i.db", FakeModel())
    with pytest.raises(UsageError, match="input not found"):
        idx.add([tmp_path / "does-not-exist"])
    assert main(["search", str(tmp_path / "nope.db"), "x"]) == 2


def test_second_writer_gets_in_use_and_readers_keep_working(collection, tmp_path, capsys):
    path = tmp_path / "i.db"
    idx = Index(path, FakeModel())
    idx.add([collection], workers=0)
    code = ("import time\nfrom clipsift.index.index import Index\nfrom clipsift.index.store import "
            f"writer_lock\nwith writer_lock({str(path)!r}):\n"
            "    print('locked', flush=True)\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(IndexInUse, match=f"in use by process {proc.pid} since"):
            idx.add([collection], workers=0)
        assert main(["index", str(collection), "--index", str(path), "-q"]) == 1
        assert f"in use by process {proc.pid}" in capsys.readouterr().err.replace("\n", "")
        assert len(idx.search("a dog", k=3)) == 3  # reading is fine
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert idx.add([collection], workers=0).unchanged == 30


def test_stop_keeps_committed_batches_and_resumes(collection, tmp_path):
    stop = threading.Event()
    idx = Index(tmp_path / "i.db", CountingModel())
    s = idx.add([collection], workers=0, batch_size=4, stop=stop,
                progress=lambda p: stop.set())
    assert s.interrupted and s.added == 4 and len(idx) == 4
    rest = idx.add([collection], workers=0, batch_size=4)
    assert (rest.added, rest.unchanged, len(idx)) == (26, 4, 30)


def test_ann_path_inside_index(collection, tmp_path):
    idx = Index(tmp_path / "i.db", FakeModel(), ann=AnnConfig(threshold=10, nlist=4))
    idx.add([collection], workers=0)
    first = sorted(collection.glob("*.JPEG"))[0]
    hits = idx.search_image(first, k=5)
    assert idx.vectors.kind == "ivfpq" and hits[0].path == str(first)
    assert (tmp_path / "i.db.faiss").exists() and (tmp_path / "i.db.faiss.json").exists()


def test_cli_index_search_captions(collection, tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    assert main(["index", str(collection), "--index", db, "--model", "fake", "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "30 added, 0 updated, 0 renamed, 0 removed, 0 unchanged, 0 errors" in err
    assert main(["index", str(collection), "--index", db, "-q"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["search", db, '"a fish" - "a bird"', "-k", "4", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4 and set(lines[0]) == {"id", "path", "score"}
    first = str(sorted(collection.glob("*.JPEG"))[0])
    assert main(["search", db, "--image", first, "-k", "1"]) == 0
    assert first in capsys.readouterr().out
    caps = tmp_path / "caps.txt"
    caps.write_text("a fish\na dog\na car\n", encoding="utf-8")
    assert main(["search", db, "--image", first, "--captions", str(caps), "--json"]) == 0
    got = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert sorted(h["text"] for h in got) == ["a car", "a dog", "a fish"]
    assert main(["search", db, "--captions", str(caps)]) == 2


def test_bare_index_names_live_in_the_index_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSIFT_INDEX_DIR", str(tmp_path / "idx"))
    assert resolve_index_path("photos") == tmp_path / "idx" / "photos.db"
    assert resolve_index_path("some/where.db") == Path("some/where.db")
