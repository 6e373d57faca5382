"""Crash safety: `clipsift index` SIGKILLed at random points, then resumed, must end with
exactly the items (same keys, equal vectors, same errors) of an uninterrupted run."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clipsift.index.index import Index
from tests.support.fake_model import FakeModel
from tests.support.helpers import extract_photos

CHILD = "import sys; from clipsift.cli.main import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def many_photos(tmp_path_factory) -> list[Path]:
    return extract_photos(tmp_path_factory.mktemp("kill-photos"), 100)


def make_collection(photos: list[Path], folder: Path) -> Path:
    folder.mkdir()
    for i, p in enumerate(photos[:90]):
        sub = folder / f"d{i % 3}"
        sub.mkdir(exist_ok=True)
        shutil.copy(p, sub / p.name)
    (folder / "d0" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a real jpeg")
    return folder


def start(collection: Path, db: Path, workers: str) -> subprocess.Popen:
    """`clipsift index` in a subprocess; workers "auto" uses the decode process pool."""
    args = ["index", str(collection), "--index", str(db), "--model", "fake",
            "--batch-size", "4", "-q"]
    if workers != "auto":
        args += ["--workers", workers]
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], stderr=subprocess.PIPE,
                            start_new_session=True)


def _count(db: Path, sql: str) -> int:
    """One number from the index, read-only; -1 when it cannot be read (not created yet)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05)
        try:
            return int(con.execute(sql).fetchone()[0])
        finally:
            con.close()
    except (sqlite3.Error, TypeError):
        return -1


def rows_in(db: Path) -> int:
    return _count(db, "SELECT COUNT(*) FROM items")


def commits_in(db: Path) -> int:
    """The index's generation: bumped once by every committed batch (0 before the first)."""
    return max(_count(db, "SELECT value FROM meta WHERE key = 'generation'"), 0)


def keys_in(db: Path) -> set[str]:
    with Index(db) as idx:
        return {row.key for row in idx.store.iter_rows()}


def writing(proc: subprocess.Popen, db: Path) -> bool:
    """True once `proc` holds the index's writer lock (its pid is in INDEX.lock)."""
    try:
        return Path(f"{db}.lock").read_text().split()[:1] == [str(proc.pid)]
    except OSError:
        return False


def kill_after(proc: subprocess.Popen, db: Path, commits: int, delay: float) -> int:
    """SIGKILL `proc` `delay` s after it committed `commits` batches of its own.

    Returns:
        The batches the run had committed when it died; -1 when it ended by itself first.
    """
    base = commits_in(db)
    while proc.poll() is None and not (writing(proc, db) and commits_in(db) >= base + commits):
        time.sleep(0.002)
    time.sleep(delay)
    if proc.poll() is not None:
        return -1
    proc.send_signal(signal.SIGKILL)  # only the indexing process, as the OOM killer would
    proc.wait()
    with contextlib.suppress(ProcessLookupError):  # then clean up its decode workers
        os.killpg(proc.pid, signal.SIGKILL)
    return commits_in(db) - base


def interrupt_at(proc: subprocess.Popen, db: Path, rows: int) -> int:
    """Ctrl-C (SIGINT) once the run wrote `rows` items; returns the exit status."""
    while proc.poll() is None and not (writing(proc, db) and rows_in(db) >= rows):
        time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err, err.decode()
    return proc.returncode


def run_with_kills(collection: Path, db: Path, rng: random.Random, kills: int,
                   final_keys: set[str], workers: str = "0") -> list:
    """Kill `kills` runs at seeded points, each one mid-run, then let one run finish.

    Each kill point is a number of batches the child must have committed (then a seeded
    delay of up to 10 ms), chosen so that 8+ of its transactions remain (a
    pipeline can commit a few prefetched batches within milliseconds): the kill lands
    after the run committed some batches and before it committed all (the index does not
    hold the finished run's keys yet). Both are asserted for every kill.
    """
    log = []
    for _ in range(kills):
        todo = len(final_keys - keys_in(db)) if db.exists() else len(final_keys)
        left = -(-todo // 4) + 1  # batches of 4 still to encode + the final commit
        assert left >= 9, f"too little work left to interrupt a run safely; kills {log}"
        commits = rng.randint(1, min(3, left - 8))
        delay = round(rng.uniform(0, 0.01), 4)
        died_after = kill_after(start(collection, db, workers), db, commits, delay)
        log.append((commits, delay, died_after))
        assert died_after >= commits, f"the run ended before its kill point; kills {log}"
        assert keys_in(db) != final_keys, f"killed after the run had finished; kills {log}"
    Index(db).add([collection], batch_size=4, workers=0)  # the final run, in-process
    return log


def snapshot(db: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    idx = Index(db)
    vectors = {}
    for row in idx.store.iter_rows(status="ok"):
        vectors[row.key] = idx.store.get_vectors([row.id])[1][0].astype(np.float32)
    errors = {r.key: r.error for r in idx.errors()}
    assert idx.store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert idx.store.vector_count() == len(vectors)
    idx.close()
    return vectors, errors


def reference(collection: Path, db: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    Index(db, FakeModel()).add([collection], batch_size=4, workers=0)
    return snapshot(db)


def assert_same(got, want, log) -> None:
    (gv, ge), (wv, we) = got, want
    assert sorted(gv) == sorted(wv), f"kill points {log}"
    assert ge == we, f"kill points {log}"
    for key, vec in wv.items():
        np.testing.assert_allclose(gv[key], vec, atol=2e-3, err_msg=f"{key}; kills {log}")


def change(collection: Path, photos: list[Path]) -> None:
    """Add, delete, rename and modify files (what an incremental run must handle)."""
    files = sorted(collection.rglob("*.JPEG"))
    for p in photos[90:96]:
        shutil.copy(p, collection / "d1" / p.name)
    for p in files[:4]:
        p.unlink()
    for i, p in enumerate(files[4:8]):
        os.rename(p, collection / f"renamed-{i}.jpeg")
    shutil.copy(photos[97], files[8])  # modified: other bytes under the same name
    for i, p in enumerate(files[10:50]):  # new content (bytes after the JPEG's end): encoded
        (collection / "d2" / f"new-{i}.jpeg").write_bytes(p.read_bytes() + bytes([i]) * 8)


def test_sigkill_then_resume_equals_uninterrupted(many_photos, tmp_path):
    collection = make_collection(many_photos, tmp_path / "coll")
    want = reference(collection, tmp_path / "ref.db")
    log = run_with_kills(collection, tmp_path / "k.db", random.Random(1234), 2, set(want[0])
                         | set(want[1]))
    assert_same(snapshot(tmp_path / "k.db"), want, log)


def test_ctrl_c_stops_cleanly_and_resumes(many_photos, tmp_path):
    collection = make_collection(many_photos, tmp_path / "coll")
    want = reference(collection, tmp_path / "ref.db")
    db = tmp_path / "k.db"
    assert interrupt_at(start(collection, db, "0"), db, 8) == 130
    assert 8 <= rows_in(db) < 91  # the committed batches are kept
    Index(db).add([collection], batch_size=4, workers=0)
    assert_same(snapshot(db), want, [])


@pytest.mark.slow
def test_sigkill_many_points_initial_and_incremental(many_photos, tmp_path):
    collection = make_collection(many_photos, tmp_path / "coll")
    rng = random.Random(20240611)  # fixed: a failure names its kill points and reproduces
    want = reference(collection, tmp_path / "ref.db")
    log = run_with_kills(collection, tmp_path / "k.db", rng, 4, set(want[0]) | set(want[1]),
                         workers="auto")
    assert_same(snapshot(tmp_path / "k.db"), want, log)
    change(collection, many_photos)
    want = reference(collection, tmp_path / "ref.db")
    log = run_with_kills(collection, tmp_path / "k.db", rng, 2, set(want[0]) | set(want[1]),
                         workers="auto")
    assert_same(snapshot(tmp_path / "k.db"), want, log)
