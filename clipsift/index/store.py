"""The SQLite store behind an index: one file (WAL mode) holding catalog, vectors and meta.

Layout (schema version 3, migrations in `clipsift.index.schema`):
    meta(key, value)          model name, dim, fingerprint (JSON), store uuid, generation
                              counter, created
    items(id, key, size, mtime, hash, status, error, width, height)
                              one row per source item; status 'ok', 'error', or 'stale'
                              (waiting to be embedded again by a new model: no vector)
    vectors(id, gen, vec)     float16 blob [dim] per 'ok' item; gen = generation of the write
    tombstones(id, gen)       ids removed at a generation (lets derived FAISS files catch up)
    problems(key, kind, error, time)
                              folders/files a run could not read; their entries are kept

Ids are SQLite rowids (AUTOINCREMENT, never reused), shared with the FAISS ids. Every write
happens inside `Store.transaction()`, which bumps the generation once, so each batch of
items and its vectors commits atomically and derived caches can tell that they are stale.
Reads are in `clipsift.index.reads` (`StoreReads`, inherited). Only `clipsift.index.Index`
(and the add run it drives) uses this module.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from clipsift.errors import StoreError, UsageError
from clipsift.index.lock import writer_lock
from clipsift.index.reads import StoreReads, chunks
from clipsift.index.records import (
    STATUS_ERROR,
    STATUS_OK,
    STATUS_STALE,
    CatalogRow,
    NewItem,
    Problem,
    StoreMeta,
    content_hash,
    vector_blob,
)
from clipsift.index.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    check_index_file,
    connect,
    create_index_file,
    migrate,
)
from clipsift.inputs.keys import key_from_sql, sql_value

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "STATUS_ERROR", "STATUS_OK", "STATUS_STALE",
           "CatalogRow", "NewItem", "Problem", "Store", "StoreMeta", "connect", "content_hash",
           "migrate", "vector_blob", "writer_lock"]


class Store(StoreReads):
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
    def create(cls, path: str | Path, model: str, dim: int,
               fingerprint: str | None = None) -> Store:
        """Create a new store (and its parent folder) atomically.

        The file is built under a temporary name and renamed into place, so a process
        killed while creating leaves either no index or a complete empty one.
        """
        p = Path(path)
        rows = {"model": model, "dim": str(int(dim)), "uuid": uuid.uuid4().hex,
                "created": repr(time.time())}
        if fingerprint is not None:
            rows["fingerprint"] = fingerprint
        create_index_file(p, rows)
        return cls.open(p)

    @classmethod
    def open(cls, path: str | Path) -> Store:
        """Open an existing store, applying pending migrations.

        The file is first checked read-only (`clipsift.index.schema.check_index_file`): a
        file that is not a clipsift index is refused before anything is written to it.

        Raises:
            UsageError: no file at `path`.
            NotAnIndex: the file is not a clipsift index (it is left byte-identical).
            StoreError: unreadable, hard-linked, or a schema newer than this clipsift.
        """
        p = Path(path)
        if not p.is_file():
            raise UsageError(
                f"no index at {p}; create it with `clipsift index PATHS --index {p}`"
            )
        real = Path(os.path.realpath(p))  # SQLite names its WAL after the path it opens
        version = check_index_file(real)
        db = connect(real)
        if version < SCHEMA_VERSION:
            migrate(db)
        return cls(real, db)

    def _read_meta(self) -> StoreMeta:
        rows = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        if "model" not in rows or "dim" not in rows:
            raise StoreError(f"{self.path} is not a clipsift index (no model recorded)")
        return StoreMeta(
            model=rows["model"], dim=int(rows["dim"]), uuid=rows.get("uuid", ""),
            created=float(rows.get("created", "0")),
            schema_version=self.db.execute("PRAGMA user_version").fetchone()[0],
            fingerprint=rows.get("fingerprint"), decode=rows.get("decode"),
        )

    def reload_meta(self) -> StoreMeta:
        """Read the meta again (after another process switched the model)."""
        self.meta = self._read_meta()
        return self.meta

    def current_uuid(self) -> str:
        """The uuid in the file now (a re-embed gives the store a new one)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'uuid'").fetchone()
        return row[0] if row else ""

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
        for chunk in chunks(ids):
            marks = ",".join("?" * len(chunk))
            self._drop_vectors(chunk, gen)
            removed += self.db.execute(f"DELETE FROM items WHERE id IN ({marks})", chunk).rowcount
        return removed

    def set_fingerprint(self, fingerprint: str) -> None:
        """Record the model fingerprint (JSON) of an index that had none."""
        self._write_gen()
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('fingerprint', ?)",
                        (fingerprint,))
        self.reload_meta()

    def set_decode(self, mode: str) -> None:
        """Record how the images behind the vectors were decoded ("exact" / "fast")."""
        self._write_gen()
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('decode', ?)",
                        (mode,))
        self.reload_meta()

    def switch_model(self, model: str, dim: int, fingerprint: str) -> int:
        """Give the index another model, in the current transaction: every vector is
        dropped and every item marked stale (embedded again by the next add run), the
        store gets a new uuid (derived FAISS files are rebuilt) and forgets its decode
        mode (the next add records its own). Returns the items marked.
        """
        gen = self._write_gen()
        self.db.execute("INSERT OR REPLACE INTO tombstones (id, gen) SELECT id, ? FROM vectors",
                        (gen,))
        self.db.execute("DELETE FROM vectors")
        marked = self.db.execute("UPDATE items SET status = ?, error = NULL",
                                 (STATUS_STALE,)).rowcount
        self.db.execute("DELETE FROM meta WHERE key = 'decode'")
        rows = {"model": model, "dim": str(int(dim)), "fingerprint": fingerprint,
                "uuid": uuid.uuid4().hex}
        self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            list(rows.items()))
        self.reload_meta()
        return int(marked)

    def put_problems(self, problems: Iterable[tuple[str, str, str]]) -> None:
        """Record (key, kind, error) of folders/files that could not be read."""
        self._write_gen()
        now = time.time()
        self.db.executemany(
            "INSERT OR REPLACE INTO problems (key, kind, error, time) VALUES (?, ?, ?, ?)",
            [(sql_value(k), kind, err, now) for k, kind, err in problems])

    def clear_problems(self, keys: Iterable[str]) -> None:
        self._write_gen()
        for chunk in chunks(list(keys)):
            marks = ",".join("?" * len(chunk))
            self.db.execute(f"DELETE FROM problems WHERE key IN ({marks})",
                            [sql_value(k) for k in chunk])

    def problems(self) -> list[Problem]:
        """Recorded problems, folders first, then by key."""
        rows = self.db.execute("SELECT key, kind, error, time FROM problems "
                               "ORDER BY kind DESC, key").fetchall()
        return [Problem(key_from_sql(r[0]), *r[1:]) for r in rows]

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
