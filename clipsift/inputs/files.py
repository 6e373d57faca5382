"""Open files that must be regular files, never blocking on a FIFO, socket or device.

A named pipe (FIFO) opened for reading waits for a writer forever; a character device can
stream without end. Wherever clipsift reads a file it expected to hold an image (or a tar
shard), it goes through `open_regular`: the type is checked before opening (so a device is
never even opened), the open itself is non-blocking (so a file swapped for a FIFO between the
check and the open cannot hang us), and the type is checked again on the open descriptor.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import BinaryIO

_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_OPEN_FLAGS = (os.O_RDONLY | _NONBLOCK | getattr(os, "O_NOCTTY", 0)
               | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0))

_KINDS = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


class NotRegularFileError(OSError):
    """The path names a FIFO, socket or device where a regular file was expected."""


def file_kind(mode: int) -> str:
    """What a file of this `st_mode` is, in words ("a named pipe (FIFO)", "a socket"...)."""
    for test, kind in _KINDS:
        if test(mode):
            return kind
    return "not a regular file"


def _check_mode(path: str, mode: int) -> None:
    if stat.S_ISREG(mode):
        return
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", path)
    raise NotRegularFileError(errno.EINVAL, f"not a regular file: {file_kind(mode)}", path)


def check_regular(path: str | os.PathLike) -> os.stat_result:
    """Stat `path` (following symlinks) and refuse anything but a regular file.

    Args:
        path: the file.

    Returns:
        Its `os.stat_result`.

    Raises:
        FileNotFoundError, PermissionError, ...: the file cannot be stat'ed.
        IsADirectoryError: it is a folder.
        NotRegularFileError: it is a FIFO, socket or device (`strerror` says which).
    """
    path = os.fspath(path)
    st = os.stat(path)
    _check_mode(os.fsdecode(path), st.st_mode)
    return st


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """Open a regular file for binary reading; never blocks, never opens a device.

    Args:
        path: the file (str or os.PathLike; symlinks are followed).

    Returns:
        A binary file object (close it, e.g. with `with`).

    Raises:
        OSError: as `open` raises it (FileNotFoundError, PermissionError...),
            IsADirectoryError for a folder, `NotRegularFileError` for a FIFO, socket or
            device (also when the file was swapped for one after the first check).

    Example:
        >>> with open_regular("photo.jpg") as fh:
        ...     data = fh.read()
    """
    path = os.fspath(path)
    label = os.fsdecode(path)
    check_regular(path)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # a socket appeared since the check
            raise NotRegularFileError(errno.EINVAL, "not a regular file: a socket",
                                      label) from exc
        raise
    try:
        _check_mode(label, os.fstat(fd).st_mode)
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike) -> bytes:
    """The whole content of a regular file (see `open_regular`).

    Args:
        path: the file.

    Returns:
        Its bytes.

    Raises:
        OSError: as for `open_regular`, or a read error.
    """
    with open_regular(path) as fh:
        return fh.read()
