"""Nothing lost, nothing mixed: what an index run may remove (only files confirmed gone,
only under the roots it walked), what it reports (unreadable folders and files, exit 1),
the writer lock through aliases, and foreign files left untouched."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clipsift.cli.main import main
from clipsift.errors import IndexInUse, StoreError
from clipsift.index.index import Index
from tests.support.fake_model import FakeModel

CHILD = "import sys; from clipsift.cli.main import main; sys.exit(main(sys.argv[1:]))"
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search",
          "--inh-caps=-dac_override,-dac_read_search", "--"]


@pytest.fixture
def tree(photos, tmp_path) -> Path:
    """root/a (10 photos) and root/b (10 photos)."""
    root = tmp_path / "root"
    for sub, chunk in (("a", photos[:10]), ("b", photos[10:20])):
        (root / sub).mkdir(parents=True)
        for p in chunk:
            shutil.copy(p, root / sub / p.name)
    return root


def counts(db: Path) -> tuple[int, int]:
    """(catalog rows, vectors) read straight from the SQLite file."""
    con = sqlite3.connect(db)
    try:
        return tuple(con.execute(q).fetchone()[0] for q in
                     ("SELECT COUNT(*) FROM items", "SELECT COUNT(*) FROM vectors"))
    finally:
        con.close()


def vectors_by_key(db: Path) -> dict[str, bytes]:
    con = sqlite3.connect(db)
    try:
        return dict(con.execute("SELECT i.key, v.vec FROM items i JOIN vectors v ON v.id = i.id"))
    finally:
        con.close()


def fail_scandir(monkeypatch, path: Path, code: int) -> None:
    """os.scandir raises OSError(code) for `path` only."""
    real = os.scandir

    def scandir(p=".", *args):
        if os.path.abspath(os.fspath(p)) == str(path):
            raise OSError(code, os.strerror(code), str(path))
        return real(p, *args)

    monkeypatch.setattr(os, "scandir", scandir)


def run_cli(args: list[str], *, drop_caps: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cmd = (NO_DAC if drop_caps else []) + [sys.executable, "-c", CHILD, *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)


# ---- 1. an unreadable folder is not a deleted folder ------------------------------------
@pytest.mark.skipif(shutil.which("setpriv") is None or os.geteuid() != 0,
                    reason="needs root and setpriv (util-linux) to drop DAC capabilities")
def test_unreadable_folder_keeps_its_entries_and_is_reported(tree, tmp_path):
    db = tmp_path / "i.db"
    base = ["index", str(tree), "--index", str(db), "--model", "fake", "--workers", "0"]
    assert run_cli(base).returncode == 0
    assert counts(db) == (20, 20)
    before = vectors_by_key(db)
    os.chmod(tree / "b", 0)
    try:
        run = run_cli(base, drop_caps=True)
    finally:
        os.chmod(tree / "b", 0o755)
    assert run.returncode == 1, run.stderr
    assert "could not be read" in run.stderr and "0 removed" in run.stderr
    assert counts(db) == (20, 20) and vectors_by_key(db) == before
    listed = run_cli(["errors", str(db)])
    assert str(tree / "b") in listed.stdout and "Permission denied" in listed.stdout
    again = run_cli(base)  # readable again: a complete run, the problem is gone
    assert again.returncode == 0, again.stderr
    assert str(tree / "b") not in run_cli(["errors", str(db)]).stdout


@pytest.mark.parametrize("code", [errno.EIO, errno.EACCES, errno.ESTALE])
def test_listing_error_removes_nothing_and_is_recorded(tree, tmp_path, monkeypatch, code):
    idx = Index(tmp_path / "i.db", FakeModel())
    assert idx.add([tree], workers=0).added == 20
    fail_scandir(monkeypatch, tree / "b", code)
    s = idx.add([tree], workers=0)
    assert (s.removed, s.unchanged) == (0, 10)
    assert counts(tmp_path / "i.db") == (20, 20)
    problems = idx.problems()
    assert [(p.key, p.kind) for p in problems] == [(str(tree / "b"), "folder")]
    assert os.strerror(code) in problems[0].error
    assert s.unreadable == 1 and s.incomplete


def test_unreadable_root_removes_nothing(tree, tmp_path, monkeypatch):
    idx = Index(tmp_path / "i.db", FakeModel())
    idx.add([tree], workers=0)
    fail_scandir(monkeypatch, tree, errno.EIO)
    s = idx.add([tree], workers=0)
    assert s.removed == 0 and counts(tmp_path / "i.db") == (20, 20)
    assert s.unreadable == 1


def test_unreadable_file_keeps_its_vector(tree, tmp_path, monkeypatch):
    from clipsift.inputs import sources

    db = tmp_path / "i.db"
    idx = Index(db, FakeModel())
    idx.add([tree], workers=0)
    before = vectors_by_key(db)
    victim = sorted((tree / "a").iterdir())[0]
    os.utime(victim, (1, 1))  # changed mtime: the run must read it again
    real = sources.Item.read_bytes

    def read_bytes(item):
        if item.key == str(victim):
            raise PermissionError(errno.EACCES, "Permission denied", item.key)
        return real(item)

    monkeypatch.setattr(sources.Item, "read_bytes", read_bytes)
    s = idx.add([tree], workers=0)
    assert vectors_by_key(db) == before  # the good vector is not replaced by an error
    assert (s.errors, s.removed, s.updated) == (1, 0, 0) and s.incomplete
    assert [(p.key, p.kind) for p in idx.problems()] == [(str(victim), "file")]
    assert idx.errors() == []  # not an item error: the item itself is fine
    monkeypatch.undo()
    s = idx.add([tree], workers=0)  # readable again: same bytes, new mtime, no error left
    assert (s.errors, s.unchanged) == (0, 20)
    assert idx.problems() == []


def test_cli_exits_1_when_files_fail_to_embed(tree, tmp_path, capsys):
    (tree / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    db = str(tmp_path / "i.db")
    assert main(["index", str(tree), "--index", db, "--model", "fake", "--workers", "0"]) == 1
    assert "1 errors" in capsys.readouterr().err
    assert main(["index", str(tree), "--index", db, "--workers", "0", "-q"]) == 0  # recorded


# ---- 2. indexing one folder never removes another folder's items ------------------------
def test_unplugged_drive_outside_the_walked_roots_is_kept(tree, tmp_path, photos):
    drive = tmp_path / "ext" / "drive"
    drive.mkdir(parents=True)
    for p in photos[20:30]:
        shutil.copy(p, drive / p.name)
    idx = Index(tmp_path / "i.db", FakeModel())
    assert idx.add([tree / "a", drive], workers=0).added == 20
    os.rename(tmp_path / "ext", tmp_path / "unplugged")  # the drive is gone from its path
    s = idx.add([tree / "a"], workers=0)
    assert (s.removed, s.renamed) == (0, 0)
    assert counts(tmp_path / "i.db") == (20, 20)
    os.rename(tmp_path / "unplugged", tmp_path / "ext")
    (drive / photos[20].name).unlink()
    assert idx.add([drive], workers=0).removed == 1  # walked and confirmed gone


def test_copy_from_an_unwalked_root_is_not_a_rename(tree, tmp_path, photos):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(photos[30], other / "x.jpg")
    idx = Index(tmp_path / "i.db", FakeModel())
    idx.add([tree, other], workers=0)
    os.rename(other / "x.jpg", tree / "a" / "x.jpg")  # moved; `other` is not walked below
    s = idx.add([tree], workers=0)
    assert (s.added, s.renamed, s.removed, s.encoded) == (1, 0, 0, 0)
    s = idx.add([other], workers=0)
    assert s.removed == 1


# ---- 3. the writer lock holds through symlinks and hard links ---------------------------
def hold_lock(db: Path) -> subprocess.Popen:
    code = ("import time\nfrom clipsift.index.store import writer_lock\n"
            f"with writer_lock({str(db)!r}):\n    print('locked', flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_writer_lock_covers_symlinks_and_hard_links(tree, tmp_path, capsys):
    from clipsift.index.store import writer_lock

    db = tmp_path / "real" / "i.db"
    with Index(db, FakeModel()) as idx:
        idx.add([tree / "a"], workers=0)
    sym = tmp_path / "sym.db"
    sym.symlink_to(db)
    proc = hold_lock(db)
    try:
        with pytest.raises(IndexInUse, match=f"process {proc.pid}"):
            Index(sym).add([tree], workers=0)
        assert main(["index", str(tree), "--index", str(sym), "-q", "--workers", "0"]) == 1
        assert "in use" in capsys.readouterr().err
        hard = tmp_path / "hard.db"
        os.link(db, hard)  # the lock is the inode's, whatever the name
        with pytest.raises(IndexInUse, match=f"process {proc.pid}"), writer_lock(hard):
            pass
        hard.unlink()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert counts(db) == (10, 10)  # nothing was written through an alias meanwhile
    with Index(sym) as idx:
        assert idx.add([tree], workers=0).added == 10


def test_two_writers_through_aliases_never_interleave(tree, tmp_path):
    """A slow `add` through the real name, a second `clipsift index` through a symlink
    meanwhile: the second is refused (exit 1), and the index ends complete (before the fix
    both ran: the first then removed the rows the second had inserted)."""
    db = tmp_path / "i.db"
    with Index(db, FakeModel()) as idx:
        idx.add([tree / "a"], workers=0)
    sym = tmp_path / "alias.db"
    sym.symlink_to(db)
    go_on = tmp_path / "go-on"  # the first writer pauses after its first batch until then
    slow = ("import os, time\nfrom clipsift.index.index import Index\nfirst = []\n"
            "def progress(p):\n    if not first:\n        first.append(1)\n"
            "        print('started', flush=True)\n        t = time.time() + 60\n"
            f"        while not os.path.exists({str(go_on)!r}) and time.time() < t:\n"
            "            time.sleep(0.05)\n"
            f"s = Index({str(db)!r}).add([{str(tree)!r}], workers=0, batch_size=1, "
            "progress=progress)\nprint(s.added, s.removed, flush=True)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    first = subprocess.Popen([sys.executable, "-c", slow], stdout=subprocess.PIPE, text=True,
                             env=env)
    try:
        assert first.stdout.readline().strip() == "started"
        second = run_cli(["index", str(tree), "--index", str(sym), "--workers", "0", "-q"])
        assert second.returncode == 1 and "in use" in second.stderr
    finally:
        go_on.touch()
        assert first.wait(timeout=120) == 0
    assert first.stdout.read().split() == ["10", "0"]
    assert counts(db) == (20, 20)


def test_hard_linked_index_is_refused(tree, tmp_path):
    db = tmp_path / "i.db"
    with Index(db, FakeModel()) as idx:
        idx.add([tree / "a"], workers=0)
    os.link(db, tmp_path / "hard.db")
    for name in (db, tmp_path / "hard.db"):
        with pytest.raises(StoreError, match="hard links"):
            Index(name)
    assert counts(db) == (10, 10)


# ---- 4. a file that is not an index is refused before anything is written ---------------
@pytest.mark.parametrize("kind", ["foreign-sqlite", "empty", "not-sqlite"])
def test_foreign_file_is_refused_and_left_byte_identical(tree, tmp_path, kind):
    path = tmp_path / "data.db"
    if kind == "foreign-sqlite":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        con.execute("INSERT INTO notes (text) VALUES ('my data')")
        con.commit()
        con.close()
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"just some text\n" * 10)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    with pytest.raises(StoreError, match=str(path)) as err:
        Index(path, FakeModel())
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert "not a clipsift index" in str(err.value) and err.value.exit_code == 2
    assert main(["index", str(tree), "--index", str(path), "--model", "fake", "-q"]) == 2
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.db", "root"]


def test_index_vectors_equal_their_source_after_many_runs(tree, tmp_path):
    """Sanity: nothing above changes what a normal incremental run stores."""
    idx = Index(tmp_path / "i.db", FakeModel())
    idx.add([tree], workers=0)
    first = vectors_by_key(tmp_path / "i.db")
    for _ in range(2):
        assert idx.add([tree], workers=0).unchanged == 20
    assert vectors_by_key(tmp_path / "i.db") == first
    key = str(sorted((tree / "b").iterdir())[0])
    want = FakeModel().encode_images([key])[0]
    got = np.frombuffer(first[key], "<f2").astype(np.float32)
    np.testing.assert_allclose(got, want, atol=2e-3)
