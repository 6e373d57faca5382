"""What one add run may remove: only catalog entries under the roots it was asked to walk,
not under a folder it could not read, and only when the file is confirmed gone.

"Confirmed gone" means the OS said so (ENOENT/ENOTDIR) for the file, and the nearest folder
above it that exists is one the run listed successfully. An unreadable folder (permission
denied, an I/O error, an unmounted network share) or a root that was not walked (a drive
that is unplugged while another folder is indexed) never loses its entries.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from clipsift.inputs.keys import TAR_SUFFIXES, join_key, split_key
from clipsift.inputs.sources import GONE_ERRNOS, WalkError


class Scope:
    """The folders and tar shards one run walks, and what it could not read.

    Args:
        inputs: the run's inputs (files, folders, globs, shards, lists) as given.
        recursive: whether folders are walked recursively.
    """

    def __init__(self, inputs: Sequence[str], recursive: bool) -> None:
        self.recursive = recursive
        self.roots: list[str] = []  # walked folders, absolute, no trailing separator
        self.folders: list[str] = []  # the same with a trailing separator
        self.shards: list[str] = []  # "/abs/shard.tar::" prefixes
        self.unreadable: list[WalkError] = []
        for text in inputs:
            for p in [text] if os.path.exists(text) else glob.glob(text, recursive=True):
                full = os.path.abspath(p)
                if os.path.isdir(full):
                    self.roots.append(full)
                    self.folders.append(os.path.join(full, ""))
                elif full.lower().endswith(TAR_SUFFIXES):
                    self.shards.append(join_key(full, ""))

    def covers(self, key: str) -> bool:
        """Is `key` inside a folder or shard this run walked?"""
        if any(key.startswith(p) for p in self.shards):
            return True
        if self.recursive:
            return any(key.startswith(f) for f in self.folders)
        return os.path.join(os.path.dirname(key), "") in self.folders

    def owns(self, key: str) -> bool:
        """Is `key` a walked root or inside one (what a complete run can vouch for)?"""
        return key in self.roots or self.covers(key)

    def blocked(self, key: str) -> bool:
        """Is `key` at or under a folder (or entry) this run could not read?"""
        return any(key == e.path or key.startswith(os.path.join(e.path, ""))
                   for e in self.unreadable)

    def removable(self, key: str) -> bool:
        """May the entry `key`, not seen by this complete run, be removed?"""
        if not self.covers(key) or self.blocked(key):
            return False
        path, member = split_key(key)
        if member is not None:  # the shard was read to its end: the member is not in it
            try:
                os.stat(path)
                return True
            except OSError as ex:
                return ex.errno in GONE_ERRNOS and self._listed_above(path)
        return confirmed_gone(path) and self._listed_above(path)

    def _listed_above(self, path: str) -> bool:
        """The nearest existing folder above `path` was listed by this run."""
        folder = _nearest_existing(os.path.dirname(path))
        if folder is None or self.blocked(folder):
            return False
        here = os.path.join(folder, "")
        if self.recursive:
            return any(here.startswith(f) for f in self.folders)
        return here in self.folders


def confirmed_gone(path: str) -> bool:
    """True only when the OS says `path` does not exist (ENOENT/ENOTDIR); False when it
    exists or cannot be checked (permission denied, I/O error)."""
    try:
        os.lstat(path)
    except OSError as ex:
        return ex.errno in GONE_ERRNOS
    return False


def _nearest_existing(folder: str) -> str | None:
    """`folder` or its nearest existing ancestor directory; None when a check fails for
    another reason than ENOENT/ENOTDIR (then nothing can be confirmed)."""
    while True:
        try:
            os.stat(folder)
            return folder if os.path.isdir(folder) else None
        except OSError as ex:
            if ex.errno not in GONE_ERRNOS:
                return None
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent
