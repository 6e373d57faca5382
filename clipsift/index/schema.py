"""The SQLite schema of an index: migrations, connections, and the read-only check that a
file is a clipsift index before anything writes to it.

Versions (`PRAGMA user_version`; `MIGRATIONS[i]` upgrades i -> i + 1):
    1  meta, items, vectors
    2  generations on vectors + tombstones (derived FAISS files catch up)
    3  problems: folders and files a run could not read (their entries are kept)

The model's fingerprint (`clipsift.models.fingerprint`) lives in meta (key `fingerprint`,
JSON); an index written before it has none and adopts the first compatible model's.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path

from clipsift.errors import NotAnIndex, StoreError, UsageError

SQLITE_MAGIC = b"SQLite format 3\x00"


def _migrate_v1(db: sqlite3.Connection) -> None:
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute(
        "CREATE TABLE items (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, "
        "size INTEGER NOT NULL, mtime REAL NOT NULL, hash TEXT, status TEXT NOT NULL, "
        "error TEXT, width INTEGER, height INTEGER)"
    )
    db.execute("CREATE INDEX items_hash ON items (hash)")
    db.execute("CREATE TABLE vectors (id INTEGER PRIMARY KEY, vec BLOB NOT NULL)")


def _migrate_v2(db: sqlite3.Connection) -> None:
    """Generation tracking so the derived FAISS file can be updated instead of rebuilt."""
    db.execute("ALTER TABLE vectors ADD COLUMN gen INTEGER NOT NULL DEFAULT 0")
    db.execute("CREATE INDEX vectors_gen ON vectors (gen)")
    db.execute("CREATE TABLE tombstones (id INTEGER PRIMARY KEY, gen INTEGER NOT NULL)")
    db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', '0')")


def _migrate_v3(db: sqlite3.Connection) -> None:
    """Folders and files a run could not read: `kind` 'folder' or 'file', the OS error,
    when it was last seen. Their catalog entries are kept, so these are not item errors."""
    db.execute("CREATE TABLE problems (key TEXT PRIMARY KEY, kind TEXT NOT NULL, "
               "error TEXT NOT NULL, time REAL NOT NULL)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_v1, _migrate_v2,
                                                          _migrate_v3]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(db: sqlite3.Connection, target: int = SCHEMA_VERSION) -> int:
    """Bring the schema up to `target` in one transaction; returns the version found before."""
    db.execute("BEGIN IMMEDIATE")
    try:
        found = db.execute("PRAGMA user_version").fetchone()[0]
        for version in range(found, target):
            MIGRATIONS[version](db)
        if target > found:
            db.execute(f"PRAGMA user_version = {int(target)}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return found


def connect(path: str | Path) -> sqlite3.Connection:
    """An autocommit connection in WAL mode (we issue BEGIN/COMMIT ourselves).

    Switching to WAL writes to the file: call `check_index_file` first on any file this
    process did not just create.
    """
    db = sqlite3.connect(str(path), isolation_level=None, timeout=30.0, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing
    db.execute("PRAGMA busy_timeout=30000")
    return db


def create_index_file(path: Path, meta: dict[str, str]) -> None:
    """Create a complete, empty index at `path` with `meta`, atomically.

    The file is built under a temporary name and hard-linked into place, so a process
    killed while creating leaves either no index or a complete empty one, and an index
    created meanwhile by another process is never replaced.

    Raises:
        UsageError: `path` already exists.
    """
    if path.exists():
        raise UsageError(f"cannot create index {path}: the file already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.create-{os.getpid()}")
    for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
        leftover.unlink(missing_ok=True)
    db = connect(tmp)
    db.execute("BEGIN IMMEDIATE")
    for step in MIGRATIONS:
        step(db)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", list(meta.items()))
    db.execute("COMMIT")
    db.close()  # checkpoints and removes the WAL: the file is complete on its own
    try:
        os.link(tmp, path)  # unlike rename, never replaces an index created meanwhile
    except FileExistsError:
        raise UsageError(f"cannot create index {path}: the file already exists") from None
    except OSError:  # a filesystem without hard links
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _refuse(path: Path, why: str) -> NotAnIndex:
    return NotAnIndex(
        f"{path} is not a clipsift index ({why}); it was left untouched. Give the path of an "
        "index, or a new file name to create one (`clipsift index PATHS --index NEW.db`)"
    )


def check_index_file(path: Path) -> int:
    """Make sure `path` is a clipsift index without writing to it; returns its schema version.

    Reads the header, then opens the database read-only (`mode=ro`) and looks for the
    catalog tables and the recorded model: a foreign SQLite file, an empty file or any
    other file is refused before a migration or a journal-mode switch could change it.

    An index with several names (hard links) is refused too: SQLite keeps the write-ahead
    log next to the name a database is opened by, so a process opening another name does
    not see commits still in the log, and writes over them.

    Raises:
        NotAnIndex: the file is empty, not SQLite, or SQLite without an index's tables.
        StoreError: the file cannot be read, has hard links, or has a schema newer than
            this clipsift.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
            links = os.fstat(fh.fileno()).st_nlink
    except OSError as ex:
        raise StoreError(f"cannot read index {path}: {ex.strerror or ex}") from ex
    if not head:
        raise _refuse(path, "an empty file")
    if head != SQLITE_MAGIC:
        raise _refuse(path, "not an SQLite database")
    if links > 1:
        raise StoreError(
            f"index {path} has {links} names (hard links); SQLite keeps its write-ahead log "
            "next to the name it opens, so two names of one index can lose each other's "
            "commits. Keep one name and remove the other links (a symlink is safe)")
    try:
        ro = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True, timeout=30.0)
    except sqlite3.Error as ex:
        raise StoreError(f"cannot open index {path} read-only: {ex}") from ex
    try:
        tables = {r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"meta", "items", "vectors"} <= tables:
            raise _refuse(path, "an SQLite database without an index's tables")
        keys = {r[0] for r in ro.execute("SELECT key FROM meta WHERE key IN ('model', 'dim')")}
        if keys != {"model", "dim"}:
            raise _refuse(path, "no model recorded")
        version = int(ro.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.Error as ex:
        raise _refuse(path, f"unreadable as SQLite: {ex}") from ex
    finally:
        ro.close()
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"index {path} has schema version {version}, newer than this clipsift "
            f"understands ({SCHEMA_VERSION}); upgrade clipsift"
        )
    return version
