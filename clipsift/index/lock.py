"""The single-writer lock of an index, held on the real file so that every alias of it (a
symlink, a hard link, a relative path) contends for the same lock.

Two OS locks (`flock`), both dropped by the kernel when the holder exits, even on SIGKILL:
    - on the index file itself (when it exists): every name of the same inode shares it;
      SQLite's own locks are POSIX byte-range locks, which `flock` does not touch on Linux;
    - on a side file `REAL.lock` next to the symlink-resolved path: it guards the creation
      of a new index and records the holder's pid and start time for the error message.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from clipsift.errors import IndexInUse


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _proc_locks_holder(st: os.stat_result) -> str | None:
    """The pid holding a flock on the inode of `st`, from /proc/locks (Linux), if any."""
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    with contextlib.suppress(OSError):
        for line in Path("/proc/locks").read_text().splitlines():
            parts = line.split()
            if len(parts) > 5 and parts[1] == "FLOCK" and parts[5] == dev:
                return parts[4]
    return None


def _holder(real: Path, info_path: Path) -> tuple[str, str]:
    """(pid, since) of the current holder, as well as can be told."""
    recorded: list[str] = []
    with contextlib.suppress(OSError):
        recorded = info_path.read_text(encoding="utf-8", errors="replace").split()
    pid = None
    with contextlib.suppress(OSError):
        pid = _proc_locks_holder(os.stat(real))
    pid = pid or (recorded[0] if recorded else "?")
    since = "an unknown time"
    if len(recorded) > 1 and recorded[0] == pid:
        with contextlib.suppress(ValueError):
            since = dt.datetime.fromtimestamp(float(recorded[1])).isoformat(" ", "seconds")
    return pid, since


@contextlib.contextmanager
def writer_lock(store_path: str | os.PathLike) -> Iterator[None]:
    """Hold the single-writer lock of an index for the duration of the block.

    Raises:
        IndexInUse: another process (or another writer in this process) holds the lock,
            through whatever name it opened the index.
    """
    real = Path(os.path.realpath(store_path))
    info_path = Path(f"{real}.lock")
    fds: list[int] = []
    try:
        with contextlib.suppress(FileNotFoundError):  # not created yet: the side file guards
            fds.append(os.open(real, os.O_RDONLY | os.O_CLOEXEC))
        fds.append(os.open(info_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644))
        for fd in fds:
            if not _try_flock(fd):
                pid, since = _holder(real, info_path)
                raise IndexInUse(
                    f"index {store_path} is in use by process {pid} since {since}; "
                    "wait for it to finish or use another index"
                )
        info = fds[-1]
        os.ftruncate(info, 0)
        os.pwrite(info, f"{os.getpid()} {time.time():.3f}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(info, 0)
    finally:
        for fd in fds:  # closing drops the locks
            os.close(fd)
