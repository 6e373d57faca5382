"""The SQLite store: schema, migrations, atomic batches, generations, the writer lock."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from clipsift.errors import IndexInUse, StoreError, UsageError
from clipsift.index.store import (
    SCHEMA_VERSION,
    NewItem,
    Store,
    connect,
    migrate,
    vector_blob,
    writer_lock,
)

DIM = 8


def _vec(seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


def _item(key: str, seed: int, vector: bool = True) -> NewItem:
    return NewItem(key, 100 + seed, float(seed), f"h{seed}", _vec(seed) if vector else None,
                   None if vector else "broken", 10, 20)


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store.create(tmp_path / "s.db", model="fake:8", dim=DIM)
    yield s
    s.close()


def test_create_records_model_dim_schema_and_wal(store, tmp_path):
    meta = store.meta
    assert (meta.model, meta.dim, meta.schema_version) == ("fake:8", DIM, SCHEMA_VERSION)
    assert len(meta.uuid) == 32
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reopened = Store.open(tmp_path / "s.db")
    assert reopened.meta == meta
    with pytest.raises(UsageError, match="already exists"):
        Store.create(tmp_path / "s.db", model="x", dim=2)


def test_open_missing_or_foreign_file(tmp_path):
    with pytest.raises(UsageError, match="no index at"):
        Store.open(tmp_path / "nope.db")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="not a clipsift index"):
        Store.open(junk)


def test_newer_schema_is_refused(store, tmp_path):
    store.db.execute("PRAGMA user_version = 99")
    with pytest.raises(StoreError, match="upgrade clipsift"):
        Store.open(tmp_path / "s.db")


def test_migration_from_v1_keeps_data(tmp_path):
    path = tmp_path / "old.db"
    db = connect(path)
    migrate(db, target=1)  # an index written by schema version 1
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("model", "fake:8"), ("dim", "8")])
    db.execute("INSERT INTO items (key, size, mtime, hash, status) VALUES ('a', 1, 2.0, 'h', 'ok')")
    db.execute("INSERT INTO vectors (id, vec) VALUES (1, ?)", (vector_blob(_vec(1)),))
    db.close()
    s = Store.open(path)
    assert s.meta.schema_version == SCHEMA_VERSION == 3
    assert s.generation() == 0 and s.problems() == [] and s.meta.fingerprint is None
    ids, vecs = next(s.iter_vectors())
    assert ids.tolist() == [1]
    np.testing.assert_allclose(vecs[0], _vec(1), atol=1e-3)
    assert s.tombstones_since(-1).tolist() == []


def test_batch_is_atomic(store):
    with store.transaction():
        store.insert(_item("a", 1))
    gen = store.generation()
    with pytest.raises(RuntimeError, match="boom"), store.transaction():
        store.insert(_item("b", 2))
        store.insert(_item("c", 3))
        raise RuntimeError("boom")
    assert store.count() == 1 and store.vector_count() == 1
    assert store.generation() == gen
    with pytest.raises(RuntimeError, match=r"inside Store\.transaction"):
        store.insert(_item("d", 4))


def test_insert_replace_copy_delete_and_generations(store):
    with store.transaction() as g1:
        a = store.insert(_item("a", 1))
        b = store.insert(_item("b", 2, vector=False))
        assert store.insert(_item("a", 9)) is None  # same key: ignored
    assert store.count() == 2 and store.vector_count() == 1
    assert store.lookup(["b"])["b"].status == "error"
    with store.transaction() as g2:
        store.replace(b, _item("b", 5))
        c = store.insert_copy(a, "c", 7, 7.0)
    assert g2 == g1 + 1
    ids, _ = next(store.iter_vectors(since_gen=g1))
    assert sorted(ids.tolist()) == sorted([b, c])
    _, vecs = store.get_vectors([a, c])
    np.testing.assert_array_equal(vecs[0], vecs[1])
    assert store.rows([c])[c].hash == "h1"
    with store.transaction() as g3:
        assert store.delete([a]) == 1
        store.touch(c, 8, 8.0, key="c2")
    assert store.tombstones_since(g2).tolist() == [a]
    assert store.generation() == g3
    assert [r.key for r in store.iter_rows()] == ["b", "c2"]
    assert store.find_ok_by_hash("h1") == c


def test_float16_storage_and_strided_iteration(store):
    with store.transaction():
        for i in range(10):
            store.insert(_item(f"k{i}", i))
    ids, vecs = next(store.iter_vectors(stride=2))
    assert ids.tolist() == [2, 4, 6, 8, 10]
    assert vecs.dtype == np.float16 and vecs.shape == (5, DIM)
    assert len(store.db.execute("SELECT vec FROM vectors LIMIT 1").fetchone()[0]) == 2 * DIM


def test_readers_work_while_a_write_is_open(store, tmp_path):
    with store.transaction():
        store.insert(_item("a", 1))
    reader = sqlite3.connect(tmp_path / "s.db")
    with store.transaction():
        store.insert(_item("b", 2))
        assert reader.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 1
    assert reader.execute("SELECT COUNT(*) FROM items").fetchone()[0] == 2


def test_writer_lock_in_process(tmp_path):
    path = tmp_path / "x.db"
    held = writer_lock(path)
    held.__enter__()
    with pytest.raises(IndexInUse, match=f"process {os.getpid()} since"), writer_lock(path):
        pass
    held.__exit__(None, None, None)
    with writer_lock(path):  # released
        pass


def test_writer_lock_is_released_when_holder_is_killed(tmp_path):
    path = tmp_path / "x.db"
    code = (
        "import sys, time\nfrom clipsift.index.store import writer_lock\n"
        f"with writer_lock({str(path)!r}):\n"
        "    print('locked', flush=True)\n    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(IndexInUse) as err, writer_lock(path):
            pass
        assert f"process {proc.pid}" in str(err.value)
        assert "wait for it to finish or use another index" in str(err.value)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.time() + 5
    while True:  # the kernel drops the flock with the process: no stale lock
        try:
            with writer_lock(path):
                break
        except IndexInUse:
            assert time.time() < deadline
            time.sleep(0.05)
