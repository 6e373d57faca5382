"""The SQLite store behind an index: one file (WAL mode) holding catalog, vectors and meta.

Layout (schema version 2):
    meta(key, value)          model name, dim, store uuid, generation counter, created
    items(id, key, size, mtime, hash, status, error, width, height)
                              one row per source item; status 'ok' or 'error'
    vectors(id, gen, vec)     float16 blob [dim] per 'ok' item; gen = generation of the write
    tombstones(id, gen)       ids removed at a generation (lets derived FAISS files catch up)

Ids are SQLite rowids (AUTOINCREMENT, never reused), shared with the FAISS ids. Every write
happens inside `Store.transaction()`, which bumps the generation once, so each batch of
items and its vectors commits atomically and derived caches can tell that they are stale.
The schema version lives in `PRAGMA user_version`; `MIGRATIONS[i]` upgrades i -> i + 1.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsift.errors import IndexInUse, StoreError, UsageError
from clipsift.inputs.keys import key_from_sql, sql_value

STATUS_OK = "ok"
STATUS_ERROR = "error"
_CHUNK = 500  # max host parameters per IN (...) query


@dataclass(frozen=True)
class StoreMeta:
    """What an index records about itself."""

    model: str
    dim: int
    uuid: str
    created: float
    schema_version: int


@dataclass(frozen=True)
class CatalogRow:
    """One catalog entry. `hash` is a blake2b hex digest of the item's bytes."""

    id: int
    key: str
    size: int
    mtime: float
    hash: str | None
    status: str
    error: str | None
    width: int | None
    height: int | None


@dataclass(frozen=True)
class NewItem:
    """Values written for one item; `vector` is float32/float16 [dim] or None for errors."""

    key: str
    size: int
    mtime: float
    hash: str | None
    vector: np.ndarray | None
    error: str | None = None
    width: int | None = None
    height: int | None = None


# ---- migrations -------------------------------------------------------------------------
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


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_migrate_v1, _migrate_v2]
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
    """An autocommit connection in WAL mode (we issue BEGIN/COMMIT ourselves)."""
    db = sqlite3.connect(str(path), isolation_level=None, timeout=30.0, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing
    db.execute("PRAGMA busy_timeout=30000")
    return db


def content_hash(data: bytes) -> str:
    """blake2b-128 hex digest of an item's bytes (what rename detection compares)."""
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def vector_blob(vec: np.ndarray) -> bytes:
    """float [dim] -> float16 little-endian bytes."""
    return np.asarray(vec, dtype="<f2").tobytes()


class Store:
    """One index file. Create with `Store.create`, open with `Store.open`.

    Example:
        >>> s = Store.create("photos.db", model="fake", dim=64)
        >>> with s.transaction():
        ...     s.insert(NewItem("a.jpg", 10, 0.0, "ab12", np.ones(64)))
    """

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self.db = db
        self._in_txn = False
        self._gen: int | None = None
        self.meta = self._read_meta()

    # ---- opening ------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, model: str, dim: int) -> Store:
        """Create a new store (and its parent folder) atomically.

        The file is built under a temporary name and renamed into place, so a process
        killed while creating leaves either no index or a complete empty one.
        """
        p = Path(path)
        if p.exists():
            raise UsageError(f"cannot create index {p}: the file already exists")
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.create-{os.getpid()}")
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        db = connect(tmp)
        with _immediate(db):
            for step in MIGRATIONS:
                step(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            rows = {"model": model, "dim": str(int(dim)), "uuid": uuid.uuid4().hex,
                    "created": repr(time.time())}
            db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                           list(rows.items()))
        db.close()  # checkpoints and removes the WAL: the file is complete on its own
        try:
            os.link(tmp, p)  # unlike rename, never replaces an index created meanwhile
        except FileExistsError:
            raise UsageError(f"cannot create index {p}: the file already exists") from None
        except OSError:  # a filesystem without hard links
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)
        return cls.open(p)

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open an existing store, applying pending migrations."""
        p = Path(path)
        if not p.is_file():
            raise UsageError(
                f"no index at {p}; create it with `clipsift index PATHS --index {p}`"
            )
        try:
            db = connect(p)
            version = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as ex:
            raise StoreError(f"{p} is not a clipsift index (not an SQLite file: {ex})") from ex
        if version > SCHEMA_VERSION:
            db.close()
            raise StoreError(
                f"index {p} has schema version {version}, newer than this clipsift "
                f"understands ({SCHEMA_VERSION}); upgrade clipsift"
            )
        if version < SCHEMA_VERSION:
            migrate(db)
        return cls(p, db)

    def _read_meta(self) -> StoreMeta:
        rows = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if "model" not in rows or "dim" not in rows:
            raise StoreError(f"{self.path} is not a clipsift index (no model recorded)")
        return StoreMeta(
            model=rows["model"], dim=int(rows["dim"]), uuid=rows.get("uuid", ""),
            created=float(rows.get("created", "0")),
            schema_version=self.db.execute("PRAGMA user_version").fetchone()[0],
        )

    def close(self) -> None:
        self.db.close()

    # ---- transactions -------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[int]:
        """One atomic write; yields the new generation number stamped on changed vectors."""
        if self._in_txn:
            raise RuntimeError("nested Store.transaction()")
        with _immediate(self.db):
            gen = self.generation() + 1
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (str(gen),))
            self._in_txn, self._gen = True, gen
            try:
                yield gen
            finally:
                self._in_txn, self._gen = False, None

    def _write_gen(self) -> int:
        if not self._in_txn or self._gen is None:
            raise RuntimeError("Store writes must happen inside Store.transaction()")
        return self._gen

    def generation(self) -> int:
        """A counter bumped by every committed write transaction."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    # ---- writes -------------------------------------------------------------------------
    def insert(self, item: NewItem) -> int | None:
        """Add a new catalog row (and its vector); returns its id, None if the key exists."""
        gen = self._write_gen()
        status = STATUS_OK if item.vector is not None else STATUS_ERROR
        cur = self.db.execute(
            "INSERT INTO items (key, size, mtime, hash, status, error, width, height) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING",
            (sql_value(item.key), item.size, item.mtime, item.hash, status, item.error,
             item.width, item.height),
        )
        if cur.rowcount != 1:
            return None
        new_id = int(cur.lastrowid or 0)
        if item.vector is not None:
            self._put_vector(new_id, vector_blob(item.vector), gen)
        return new_id

    def replace(self, item_id: int, item: NewItem) -> None:
        """Overwrite row `item_id` with new content (a changed file)."""
        gen = self._write_gen()
        status = STATUS_OK if item.vector is not None else STATUS_ERROR
        self.db.execute(
            "UPDATE items SET key=?, size=?, mtime=?, hash=?, status=?, error=?, width=?, "
            "height=? WHERE id=?",
            (sql_value(item.key), item.size, item.mtime, item.hash, status, item.error,
             item.width, item.height, item_id),
        )
        if item.vector is not None:
            self._put_vector(item_id, vector_blob(item.vector), gen)
        else:
            self._drop_vectors([item_id], gen)

    def insert_copy(self, source_id: int, key: str, size: int, mtime: float) -> int | None:
        """Add `key` as a copy of item `source_id` (same content): no re-encoding.

        Returns the new id, None if `key` already exists or the source is gone."""
        gen = self._write_gen()
        cur = self.db.execute(
            "INSERT INTO items (key, size, mtime, hash, status, error, width, height) "
            "SELECT ?, ?, ?, hash, status, error, width, height FROM items WHERE id = ? "
            "ON CONFLICT (key) DO NOTHING",
            (sql_value(key), size, mtime, source_id),
        )
        if cur.rowcount != 1:
            return None
        new_id = int(cur.lastrowid or 0)
        self.db.execute(
            "INSERT INTO vectors (id, gen, vec) SELECT ?, ?, vec FROM vectors WHERE id = ?",
            (new_id, gen, source_id),
        )
        return new_id

    def copy_into(self, source_id: int, target_id: int, size: int, mtime: float) -> None:
        """Give existing row `target_id` the content of `source_id` (a changed file whose new
        bytes equal another item's)."""
        gen = self._write_gen()
        self.db.execute(
            "UPDATE items SET size=?, mtime=?, hash=s.hash, status=s.status, error=s.error, "
            "width=s.width, height=s.height FROM (SELECT * FROM items WHERE id=?) AS s "
            "WHERE items.id=?",
            (size, mtime, source_id, target_id),
        )
        self._drop_vectors([target_id], gen)
        self.db.execute(
            "INSERT INTO vectors (id, gen, vec) SELECT ?, ?, vec FROM vectors WHERE id = ?",
            (target_id, gen, source_id),
        )

    def touch(self, item_id: int, size: int, mtime: float, key: str | None = None) -> None:
        """Update size/mtime (and the key, for a rename) without touching content."""
        self._write_gen()
        if key is None:
            self.db.execute("UPDATE items SET size=?, mtime=? WHERE id=?", (size, mtime, item_id))
        else:
            self.db.execute("UPDATE items SET key=?, size=?, mtime=? WHERE id=?",
                            (sql_value(key), size, mtime, item_id))

    def delete(self, ids: Iterable[int]) -> int:
        """Remove items (and vectors); returns how many rows went."""
        gen = self._write_gen()
        ids = list(ids)
        removed = 0
        for chunk in _chunks(ids):
            marks = ",".join("?" * len(chunk))
            self._drop_vectors(chunk, gen)
            removed += self.db.execute(f"DELETE FROM items WHERE id IN ({marks})", chunk).rowcount
        return removed

    def _put_vector(self, item_id: int, blob: bytes, gen: int) -> None:
        if len(blob) != 2 * self.meta.dim:
            raise ValueError(f"vector has {len(blob) // 2} values, index dim is {self.meta.dim}")
        self.db.execute("INSERT OR REPLACE INTO vectors (id, gen, vec) VALUES (?, ?, ?)",
                        (item_id, gen, blob))

    def _drop_vectors(self, ids: Sequence[int], gen: int) -> None:
        marks = ",".join("?" * len(ids))
        gone = self.db.execute(f"DELETE FROM vectors WHERE id IN ({marks}) RETURNING id",
                               list(ids)).fetchall()
        self.db.executemany("INSERT OR REPLACE INTO tombstones (id, gen) VALUES (?, ?)",
                            [(r[0], gen) for r in gone])

    # ---- reads --------------------------------------------------------------------------
    def lookup(self, keys: Sequence[str]) -> dict[str, CatalogRow]:
        """Catalog rows for the given keys (missing keys are absent from the result)."""
        out: dict[str, CatalogRow] = {}
        for chunk in _chunks(list(keys)):
            marks = ",".join("?" * len(chunk))
            for values in self.db.execute(f"{_SELECT_ROW} WHERE key IN ({marks})",
                                          [sql_value(k) for k in chunk]):
                row = _row(values)
                out[row.key] = row
        return out

    def rows(self, ids: Sequence[int]) -> dict[int, CatalogRow]:
        out: dict[int, CatalogRow] = {}
        for chunk in _chunks(list(ids)):
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(f"{_SELECT_ROW} WHERE id IN ({marks})", chunk):
                out[row[0]] = _row(row)
        return out

    def find_ok_by_hash(self, digest: str) -> int | None:
        """Id of an 'ok' item with this content hash, if any."""
        row = self.db.execute(
            "SELECT id FROM items WHERE hash = ? AND status = 'ok' ORDER BY id LIMIT 1",
            (digest,),
        ).fetchone()
        return int(row[0]) if row else None

    def iter_rows(self, status: str | None = None, chunk: int = 10_000) -> Iterator[CatalogRow]:
        """All catalog rows in id order, read in chunks (memory stays flat)."""
        last = -1
        where = "AND status = ?" if status else ""
        while True:
            args: tuple = (last, status, chunk) if status else (last, chunk)
            batch = self.db.execute(
                f"{_SELECT_ROW} WHERE id > ? {where} ORDER BY id LIMIT ?", args
            ).fetchall()
            if not batch:
                return
            yield from (_row(r) for r in batch)
            last = batch[-1][0]

    def count(self, status: str | None = None) -> int:
        if status is None:
            return int(self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0])
        return int(self.db.execute("SELECT COUNT(*) FROM items WHERE status = ?",
                                   (status,)).fetchone()[0])

    def vector_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM vectors").fetchone()[0])

    def iter_vectors(self, chunk: int = 65_536, since_gen: int = -1,
                     stride: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield (ids int64 [n], vectors float16 [n, dim]) in id order.

        `since_gen` keeps only vectors written after that generation; `stride` keeps ids
        divisible by it (a cheap spread-out sample for training).
        """
        last = -1
        while True:
            rows = self.db.execute(
                "SELECT id, vec FROM vectors WHERE id > ? AND gen > ? AND id % ? = 0 "
                "ORDER BY id LIMIT ?", (last, since_gen, stride, chunk),
            ).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, self._decode(b"".join(r[1] for r in rows), len(rows))
            last = int(ids[-1])

    def get_vectors(self, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """(found ids int64 [n], float16 [n, dim]) for the ids that still have vectors."""
        found: list[int] = []
        blobs: list[bytes] = []
        for chunk in _chunks([int(i) for i in ids]):
            marks = ",".join("?" * len(chunk))
            for row_id, blob in self.db.execute(
                f"SELECT id, vec FROM vectors WHERE id IN ({marks})", chunk
            ):
                found.append(row_id)
                blobs.append(blob)
        return np.asarray(found, dtype=np.int64), self._decode(b"".join(blobs), len(found))

    def tombstones_since(self, gen: int) -> np.ndarray:
        rows = self.db.execute("SELECT id FROM tombstones WHERE gen > ?", (gen,)).fetchall()
        return np.asarray([r[0] for r in rows], dtype=np.int64)

    def _decode(self, raw: bytes, n: int) -> np.ndarray:
        return np.frombuffer(raw, dtype="<f2").reshape(n, self.meta.dim)


_SELECT_ROW = "SELECT id, key, size, mtime, hash, status, error, width, height FROM items"


def _row(values: Sequence) -> CatalogRow:
    """A CatalogRow from a `_SELECT_ROW` result (keys that are not UTF-8 are BLOBs)."""
    return CatalogRow(values[0], key_from_sql(values[1]), *values[2:])


@contextlib.contextmanager
def _immediate(db: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (including KeyboardInterrupt)."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def _chunks(values: list, size: int = _CHUNK) -> Iterator[list]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


@contextlib.contextmanager
def writer_lock(store_path: str | Path) -> Iterator[None]:
    """Hold the single-writer lock of an index for the duration of the block.

    An OS lock (`flock`) on a side file `INDEX.lock`: the kernel drops it when the holder
    exits, even on SIGKILL, so a crashed writer never leaves a stale lock. The file records
    the holder's pid and start time for the error message of the next writer.

    Raises:
        IndexInUse: another process (or another writer in this process) holds the lock.
    """
    lock_path = Path(str(store_path) + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
        os.close(fd)
        pid = holder[0] if holder else "?"
        since = "an unknown time"
        if len(holder) > 1:
            with contextlib.suppress(ValueError):
                since = dt.datetime.fromtimestamp(float(holder[1])).isoformat(" ", "seconds")
        raise IndexInUse(
            f"index {store_path} is in use by process {pid} since {since}; "
            "wait for it to finish or use another index"
        ) from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {time.time():.3f}\n".encode(), 0)
        yield
    finally:
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
