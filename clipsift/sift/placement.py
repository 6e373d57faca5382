"""Put kept files into an output folder by copy, symlink or move: never overwriting,
never deleting a source unless moving, and safe to redo after a crash.

Every target is planned first and recorded in a journal (an SQLite table) before any file
is touched; a file that would land on an existing name gets a suffix (`0001.jpg` ->
`0001-1.jpg`). Each operation is atomic and refuses to replace anything (a hard link or
symlink onto a free name; copies go through a temporary file that is then linked), so a
run killed at any point is finished by running it again: a target that already holds the
source's content counts as done, anything else at that name is left alone and the file
gets another name.

Tar members cannot be linked or moved out of their shard: they are always extracted
(copied) and the shard is left as it is.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import tarfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from clipsift.errors import UsageError
from clipsift.inputs.keys import key_from_sql, split_key, sql_value

PLACE_MODES = ("copy", "symlink", "move")
_COMMIT_EVERY = 256


@dataclass(frozen=True)
class PlaceSummary:
    """What `Placer.run` did: files placed now, placed by earlier runs, and failures."""

    placed: int
    already: int
    errors: dict[str, str]  # key -> reason


def relative_name(key: str, roots: Sequence[str]) -> str:
    """The path a kept item gets under the output folder.

    Tar members keep their member path, files under one of `roots` (input folders) keep
    their path relative to it, other files keep their base name. '..' and absolute parts
    are dropped, so nothing lands outside the output folder.
    """
    _, member = split_key(key)
    if member is not None:
        rel = member
    else:
        rel = os.path.basename(key)
        for root in roots:
            prefix = os.path.join(root, "")
            if key.startswith(prefix):
                rel = key[len(prefix):]
                break
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".", "..")]
    return "/".join(parts) or "item"


def check_output(out_dir: Path, roots: Sequence[str]) -> None:
    """Refuse an output folder inside an input folder (placed files would be re-read)."""
    out = os.path.join(os.path.realpath(out_dir), "")
    for root in roots:
        if out.startswith(os.path.join(os.path.realpath(root), "")):
            raise UsageError(f"output folder {out_dir} is inside the input folder {root}; "
                             "choose an output folder outside the inputs")


def _free_name(path: Path, taken: set[str]) -> Path:
    stem, suffix = path.stem, path.suffix
    candidate, n = path, 0
    while os.path.lexists(candidate) or str(candidate) in taken:
        n += 1
        candidate = path.with_name(f"{stem}-{n}{suffix}")
    return candidate


def _same_content(a: str, data: bytes | None, b: Path) -> bool:
    """Does file `b` hold the bytes of `a` (or `data`)?"""
    try:
        if data is not None:
            return b.stat().st_size == len(data) and b.read_bytes() == data
        if os.path.samefile(a, b):
            return True
        if os.path.getsize(a) != b.stat().st_size:
            return False
        with open(a, "rb") as fa, open(b, "rb") as fb:
            while chunk := fa.read(1 << 20):
                if chunk != fb.read(len(chunk)):
                    return False
        return True
    except OSError:
        return False


def _link_new(src: str, target: Path) -> None:
    """Hard-link `src` to `target`, or rename if links are unsupported (never replaces)."""
    try:
        os.link(src, target)
        os.unlink(src)
    except FileExistsError:
        raise
    except OSError as exc:
        if exc.errno == errno.EXDEV:
            raise
        if os.path.lexists(target):
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from exc
        os.rename(src, target)


def _copy_new(src: str, data: bytes | None, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.clipsift-tmp-{os.getpid()}")
    try:
        if data is not None:
            tmp.write_bytes(data)
        else:
            shutil.copy2(src, tmp)
        _link_new(str(tmp), target)
    finally:
        tmp.unlink(missing_ok=True)


class Placer:
    """Plan and carry out the placement of kept files, journaled in `db` (SQLite).

    Example:
        >>> placer = Placer(db, Path("out"), "copy")
        >>> placer.plan([("/data/a.jpg", "a.jpg")])
        >>> placer.run().placed
        1
    """

    def __init__(self, db: sqlite3.Connection, out_dir: Path, mode: str) -> None:
        if mode not in PLACE_MODES:
            raise UsageError(f"unknown placement {mode!r}; choose one of {PLACE_MODES}")
        self.db, self.out_dir, self.mode = db, Path(out_dir), mode
        self._taken: set[str] = set()
        db.execute("CREATE TABLE IF NOT EXISTS placed (key TEXT PRIMARY KEY, target TEXT NOT "
                   "NULL, mode TEXT NOT NULL, state TEXT NOT NULL, error TEXT)")

    def targets(self) -> dict[str, tuple[str, str, str | None]]:
        """key -> (target, state, error) for every planned placement."""
        rows = self.db.execute("SELECT key, target, state, error FROM placed")
        return {key_from_sql(k): (key_from_sql(t), s, e) for k, t, s, e in rows}

    def pending(self) -> int:
        """Planned placements not carried out yet."""
        return int(self.db.execute("SELECT COUNT(*) FROM placed WHERE state = 'pending'"
                                   ).fetchone()[0])

    def plan(self, wanted: Iterable[tuple[str, str]]) -> None:
        """Record a target for each (key, relative name) not planned by an earlier run."""
        known = self.targets()
        taken = {t for t, _, _ in known.values()}
        rows = []
        for key, rel in wanted:
            if key in known:
                continue
            target = _free_name(self.out_dir / rel, taken)
            taken.add(str(target))
            known[key] = (str(target), "pending", None)
            rows.append((sql_value(key), sql_value(str(target)), self.mode, "pending", None))
        with self.db:
            self.db.executemany("INSERT INTO placed VALUES (?, ?, ?, ?, ?)", rows)

    def run(self, on_file: Callable[[], None] | None = None) -> PlaceSummary:
        """Carry out every pending placement; failures are recorded per file, never raised."""
        pending = [(key_from_sql(k), key_from_sql(t), m) for k, t, m in self.db.execute(
            "SELECT key, target, mode FROM placed WHERE state = 'pending' ORDER BY rowid")]
        already = int(self.db.execute("SELECT COUNT(*) FROM placed WHERE state = 'done'"
                                      ).fetchone()[0])
        self._taken = {t for t, _, _ in self.targets().values()}
        by_shard: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
        plain = []
        for row in pending:
            shard, member = split_key(row[0])
            if member is not None:
                by_shard[shard].append(row)
            else:
                plain.append(row)
        updates: list[tuple[str, str | None, str, str]] = []
        for key, target, mode in plain:
            updates.append(self._one(key, None, Path(target), mode))
            self._flush(updates, on_file)
        for shard, rows in by_shard.items():
            for key, data, target in _members(shard, rows):
                updates.append(self._one(key, data, Path(target), "copy"))
                self._flush(updates, on_file)
        self._flush(updates, on_file, force=True)
        errors = {key_from_sql(k): e for k, e in self.db.execute(
            "SELECT key, error FROM placed WHERE state = 'error'")}
        placed = int(self.db.execute("SELECT COUNT(*) FROM placed WHERE state = 'done'"
                                     ).fetchone()[0]) - already
        return PlaceSummary(placed, already, errors)

    def _flush(self, updates: list, on_file: Callable[[], None] | None,
               force: bool = False) -> None:
        if on_file is not None and updates and not force:
            on_file()
        if updates and (force or len(updates) >= _COMMIT_EVERY):
            with self.db:
                self.db.executemany("UPDATE placed SET state = ?, error = ?, target = ? "
                                    "WHERE key = ?", [(s, e, sql_value(t), sql_value(k))
                                                      for s, e, t, k in updates])
            updates.clear()

    def _one(self, key: str, data: bytes | Exception | None, target: Path,
             mode: str) -> tuple[str, str | None, str, str]:
        """Place one file -> (state, error, final target, key) for the journal."""
        if isinstance(data, Exception):
            return "error", f"cannot read tar member: {data}", str(target), key
        base = target
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(1000):
                if not os.path.lexists(target):
                    try:
                        self._do(key, data, target, mode)
                        return "done", None, str(target), key
                    except FileExistsError:
                        continue  # appeared meanwhile: look again
                if self._done_already(key, data, target, mode):
                    return "done", None, str(target), key
                target = _free_name(base, self._taken)  # someone else's file: another name
                self._taken.add(str(target))
            return "error", "no free file name found", str(target), key
        except OSError as exc:
            return "error", f"{mode} failed: {exc.strerror or exc}", str(target), key

    def _done_already(self, key: str, data: bytes | None, target: Path, mode: str) -> bool:
        if not os.path.lexists(target):
            return False
        if mode == "symlink":
            return os.path.islink(target) and os.readlink(target) == key
        if mode == "move" and data is None and not os.path.lexists(key):
            return target.is_file()  # moved by an earlier, interrupted run
        if _same_content(key, data, target):
            if mode == "move" and data is None:
                os.unlink(key)  # linked or copied before a crash; finish the move
            return True
        return False

    @staticmethod
    def _do(key: str, data: bytes | None, target: Path, mode: str) -> None:
        if data is not None or mode == "copy":
            _copy_new(key, data, target)
        elif mode == "symlink":
            os.symlink(key, target)
        else:
            try:
                os.link(key, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                _copy_new(key, None, target)
            os.unlink(key)


def _members(shard: str, rows: list[tuple[str, str, str]]):
    """Yield (key, bytes | exception, target) for wanted members, in one pass over the shard."""
    wanted = {split_key(key)[1]: (key, target) for key, target, _ in rows}
    try:
        with tarfile.open(shard, "r:*") as tf:
            for member in tf:
                hit = wanted.pop(member.name, None)
                tf.members.clear()
                if hit is None:
                    continue
                fh = tf.extractfile(member)
                yield hit[0], (fh.read() if fh is not None else b""), hit[1]
                if not wanted:
                    return
    except (OSError, tarfile.TarError) as exc:
        for key, target in wanted.values():
            yield key, exc, target
        return
    for key, target in wanted.values():
        yield key, FileNotFoundError(f"no member {split_key(key)[1]!r}"), target


def open_journal(path: Path) -> sqlite3.Connection:
    """The SQLite journal of a filter run (WAL, so a killed process loses nothing)."""
    db = sqlite3.connect(str(path), timeout=30.0)
    db.execute("PRAGMA journal_mode=WAL")
    with contextlib.suppress(sqlite3.DatabaseError):
        db.execute("PRAGMA synchronous=NORMAL")
    return db
