"""What /v1/health checks, part by part: the model, each batcher thread, the index.

A part is "ok" or says why it is down:
- model: loaded (the service holds one);
- batcher:NAME: its worker thread runs (not crashed, not shut down);
- index: the SQLite connection answers a read; the file at the index path is still the
  file the server opened (not deleted or replaced) and still reads as an SQLite file.
If the index lock is held for long (a search or a FAISS rebuild in progress), the index
is reported "ok (busy)" without a new read, rather than waiting.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from clipsift.server.service import Service

LOCK_WAIT_S = 2.0
_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class HealthReport:
    """The state of each part of a running server.

    Attributes:
        checks: part name -> "ok" (or "ok (...)") or the reason it is down.
    """

    checks: dict[str, str]

    @property
    def ok(self) -> bool:
        return all(v == "ok" or v.startswith("ok ") for v in self.checks.values())

    def problems(self) -> str:
        """The down parts as one sentence ("index: ...; batcher:text: ...")."""
        return "; ".join(f"{k}: {v}" for k, v in self.checks.items()
                         if not (v == "ok" or v.startswith("ok ")))


def file_identity(path: str | os.PathLike) -> tuple[int, int] | None:
    """(device, inode) of a file, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def check_service(service: Service) -> HealthReport:
    """Check every part of `service` (blocking: reads the index; run it in a thread)."""
    checks = {"model": "ok" if service.model is not None else "not loaded"}
    for batcher in service.batchers():
        checks[f"batcher:{batcher.name}"] = batcher.state()
    if service.index is not None:
        checks["index"] = _index_state(service)
    return HealthReport(checks)


def _index_state(service: Service) -> str:
    index = service.index
    assert index is not None
    if not service.index_lock.acquire(timeout=LOCK_WAIT_S):
        return "ok (busy: a search or an update of the FAISS index is running)"
    try:
        index.ping()  # a real read on the server's connection
    except sqlite3.Error as ex:
        return f"not readable ({type(ex).__name__}: {ex})"
    finally:
        service.index_lock.release()
    return _file_state(Path(index.path), service.index_identity)


def _file_state(path: Path, identity: tuple[int, int] | None) -> str:
    now = file_identity(path)
    if now is None:
        return f"the index file {path} is gone; restore it and restart the server"
    if identity is not None and now != identity:
        return (f"the index file {path} was replaced by another file since the server "
                "started; restart the server to serve it")
    try:
        with open(path, "rb") as fh:
            head = fh.read(len(_SQLITE_MAGIC))
    except OSError as ex:
        return f"the index file {path} is not readable ({ex.strerror})"
    if head != _SQLITE_MAGIC:
        return f"the index file {path} is not an SQLite file any more (overwritten?)"
    return "ok"
