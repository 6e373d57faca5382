"""Turn user inputs (files, folders, globs, tar shards, file lists) into a stream of items.

Everything is a generator, so memory stays flat however large the collection: folders are
walked lazily in sorted (deterministic) order, tar shards are read header by header and
their members are read later by offset. File names that are not valid UTF-8 work: they are
kept as `os.fsdecode` strings (surrogate escapes), which `open()` maps back to the same bytes;
`clipsift.inputs.keys` turns them into text, JSON, Parquet and SQLite values and back.

Inputs, by shape:
    - an image file: one item, whatever its extension (the user named it);
    - a folder: its image files, recursively, sorted, skipping hidden files and folders;
    - a glob pattern (`photos/**/*.jpg`): each match handled as an input;
    - a tar shard (`.tar`, `.tar.gz`, `.tgz`, webdataset style): its image members;
    - a file list (`.txt`, `.lst`): one path per line (blank lines and `#` comments skipped),
      relative paths resolved against the list's folder; listed paths that are missing
      still become items, so the run records them as per-item errors.

A folder that cannot be listed (permission denied, an I/O error, a stale network handle) is
never skipped silently: the walker passes a `WalkError` to the caller's `on_error` callback
(or collects it in a `Walk`) and goes on with the rest. Callers that delete what they did
not see (the index) must treat everything under such a folder as unknown, not as gone. A
folder that vanished while being walked (ENOENT/ENOTDIR) is simply gone: no error.
A FIFO, socket or device where an image (or a shard) was expected, named directly, listed,
or found in a folder under an image name, becomes an item whose reading fails at once
("not a regular file: a named pipe (FIFO)"): never a hang, never a silent drop.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
import tarfile
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field

from clipsift.errors import UsageError
from clipsift.inputs.files import open_regular, read_regular
from clipsift.inputs.images import IMAGE_EXTENSIONS
from clipsift.inputs.keys import MEMBER_SEP, TAR_SUFFIXES, join_key

LIST_SUFFIXES = (".txt", ".lst")
__all__ = ["LIST_SUFFIXES", "MEMBER_SEP", "TAR_SUFFIXES", "Item", "count_items", "iter_items",
           "iter_tar"]  # MEMBER_SEP, TAR_SUFFIXES: defined in clipsift.inputs.keys
_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class Item:
    """One image to process, from a plain file or a tar shard member.

    Attributes:
        key: stable id; the absolute path for files, "/abs/shard.tar::member/name.jpg" for
            tar members.
        path: filesystem path when the item is a plain file, else None.
        size: size in bytes, None when unknown (a listed file that does not exist).
        mtime: modification time (seconds since the epoch), None when unknown.
        shard: absolute path of the tar shard holding the member, else None.
        offset: byte offset of the member's data inside an uncompressed shard, else None.
    """

    key: str
    path: str | None
    size: int | None = None
    mtime: float | None = None
    shard: str | None = None
    offset: int | None = None
    data: bytes | None = field(default=None, repr=False, compare=False)

    def read_bytes(self) -> bytes:
        """Read the item's encoded bytes.

        Returns:
            The file content (or the tar member's content, read by offset).

        Raises:
            OSError: the file or shard cannot be read, is not a regular file (a FIFO,
                socket or device: refused at once, never waited on), or the shard is
                shorter than expected.
        """
        if self.data is not None:
            return self.data
        if self.path is not None:
            return read_regular(self.path)
        if self.shard is None or self.offset is None or self.size is None:
            raise OSError(f"item {self.key!r} has no readable location")
        with open_regular(self.shard) as fh:
            fh.seek(self.offset)
            data = fh.read(self.size)
        if len(data) != self.size:
            raise OSError(f"tar member truncated: expected {self.size} bytes, got {len(data)}")
        return data


#: errno values that prove a path is gone (as opposed to unreadable for now)
GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})


@dataclass(frozen=True)
class WalkError:
    """A folder (or folder entry) the walker could not read.

    Attributes:
        path: the absolute path that failed.
        reason: the OS error text, e.g. "Permission denied".
        errno: the OS error number (None when unknown).
    """

    path: str
    reason: str
    errno: int | None = None

    @classmethod
    def from_os(cls, path: str, ex: OSError) -> WalkError:
        return cls(path, ex.strerror or str(ex), ex.errno)

    @property
    def message(self) -> str:
        """The failure as every verb reports it: "cannot list folder: Permission denied"."""
        return f"cannot list folder: {self.reason}"


OnError = Callable[[WalkError], None]


def _has_ext(name: str, extensions: Collection[str]) -> bool:
    return os.path.splitext(name)[1].lower() in extensions


def _is_hidden(name: str) -> bool:
    return name.startswith(".") and name not in (".", "..")


def _file_item(path: str, st: os.stat_result | None = None) -> Item:
    path = os.path.abspath(path)
    if st is None:
        try:
            st = os.stat(path)
        except OSError:
            return Item(key=path, path=path)
    return Item(key=path, path=path, size=st.st_size, mtime=st.st_mtime)


def _walk(
    folder: str,
    *,
    recursive: bool,
    extensions: Collection[str],
    follow_symlinks: bool,
    seen: set[tuple[int, int]],
    on_error: OnError | None,
) -> Iterator[Item]:
    """Yield image files under `folder` in sorted order, depth first."""
    try:
        st = os.stat(folder)
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as ex:
        if ex.errno not in GONE_ERRNOS and on_error is not None:
            on_error(WalkError.from_os(folder, ex))
        return  # unreadable: reported; vanished meanwhile: nothing to list
    if (st.st_dev, st.st_ino) in seen:
        return  # a symlink loop
    seen.add((st.st_dev, st.st_ino))
    for entry in entries:
        if _is_hidden(entry.name) or (entry.is_symlink() and not follow_symlinks):
            continue
        try:
            is_dir = entry.is_dir()
        except OSError as ex:
            if ex.errno not in GONE_ERRNOS and on_error is not None:
                on_error(WalkError.from_os(entry.path, ex))
            continue
        if is_dir and recursive:
            yield from _walk(
                entry.path, recursive=recursive, extensions=extensions,
                follow_symlinks=follow_symlinks, seen=seen, on_error=on_error,
            )
        elif not is_dir and _has_ext(entry.name, extensions):
            # regular files, and FIFOs/sockets/devices named like images: those fail as
            # items ("not a regular file"), so the run reports them
            try:
                yield _file_item(entry.path, entry.stat())
            except OSError:
                yield _file_item(entry.path)  # reading it will say why (a per-item error)


def iter_tar(shard: str, *, extensions: Collection[str] = IMAGE_EXTENSIONS) -> Iterator[Item]:
    """Yield the image members of a tar shard, streaming its headers.

    Members of an uncompressed tar are read later by offset (nothing is held in memory);
    members of a compressed tar are read as they stream past, since it cannot be seeked.

    Args:
        shard: path to a .tar, .tar.gz or .tgz file.
        extensions: member name extensions to keep (lower case, with the dot).

    Returns:
        An iterator of `Item` whose key is "/abs/shard.tar::member/name".

    Raises:
        UsageError: the file is not a readable tar archive.
    """
    shard = os.path.abspath(shard)
    compressed = not shard.lower().endswith(".tar")
    try:
        fh = open_regular(shard)  # closed below, with the tar
    except OSError as exc:
        raise UsageError(f"cannot read tar shard {shard!r}: {exc.strerror or exc}") from exc
    try:
        tf = tarfile.open(shard, mode="r:*" if compressed else "r:", fileobj=fh)  # noqa: SIM115
    except (OSError, tarfile.TarError) as exc:
        fh.close()
        raise UsageError(f"cannot read tar shard {shard!r}: {exc}") from exc
    with fh, tf:
        while True:
            try:
                member = tf.next()
            except (OSError, tarfile.TarError) as exc:
                raise UsageError(f"corrupt tar shard {shard!r}: {exc}") from exc
            if member is None:
                return
            tf.members.clear()  # tarfile keeps every header otherwise: memory would grow
            name = member.name
            if not member.isfile() or not _has_ext(name, extensions):
                continue
            if any(_is_hidden(part) for part in name.split("/")):
                continue
            key = join_key(shard, name)
            if compressed or member.issparse():
                fh = tf.extractfile(member)
                data = fh.read() if fh is not None else b""
                yield Item(key, None, member.size, float(member.mtime), shard, None, data)
            else:
                yield Item(key, None, member.size, float(member.mtime), shard, member.offset_data)


def _read_list(list_file: str) -> Iterator[str]:
    """Yield the paths listed in a file list, resolved against the list's folder."""
    base = os.path.dirname(os.path.abspath(list_file))
    try:
        with open(list_file, "rb") as fh:
            for raw in fh:
                line = os.fsdecode(raw.rstrip(b"\r\n")).strip()
                if line and not line.startswith("#"):
                    yield os.path.join(base, os.path.expanduser(line))
    except OSError as exc:
        raise UsageError(f"cannot read file list {list_file!r}: {exc.strerror or exc}") from exc


def _is_glob(text: str) -> bool:
    return any(ch in _GLOB_CHARS for ch in text)


def _expand(
    text: str,
    *,
    recursive: bool,
    extensions: Collection[str],
    follow_symlinks: bool,
    on_error: OnError | None,
    from_list: bool = False,
) -> Iterator[Item]:
    """Yield the items of one input (file, folder, glob, tar shard or file list)."""
    kw = {"recursive": recursive, "extensions": extensions, "follow_symlinks": follow_symlinks,
          "on_error": on_error}
    try:
        st = os.stat(text)
    except OSError as ex:
        if ex.errno not in GONE_ERRNOS and not from_list:
            raise UsageError(f"cannot read input {text!r}: {ex.strerror or ex}") from ex
        st = None
    if st is None and _is_glob(text) and not from_list:
        matches = sorted(glob.iglob(text, recursive=True))
        if not matches:
            raise UsageError(f"no files match the pattern {text!r}")
        for match in matches:
            yield from _expand(match, **kw, from_list=True)
        return
    if st is None:
        if from_list:  # a listed file that is gone: the run records it as an error
            yield _file_item(text)
            return
        raise UsageError(f"input not found: {text!r} (expected a file, folder, glob, tar or list)")
    is_list = text.lower().endswith(LIST_SUFFIXES) and not from_list
    if stat.S_ISDIR(st.st_mode):
        yield from _walk(os.path.abspath(text), **kw, seen=set())
    elif not stat.S_ISREG(st.st_mode) and not is_list:
        yield _file_item(text, st)  # a FIFO, socket or device: fails as an item, at once
    elif text.lower().endswith(TAR_SUFFIXES):
        yield from iter_tar(text, extensions=extensions)
    elif is_list:  # may be a pipe the user made (e.g. `mkfifo list.txt`): read as given
        for path in _read_list(text):
            yield from _expand(path, **kw, from_list=True)
    else:
        yield _file_item(text, st)


def iter_items(
    inputs: Sequence[str],
    *,
    recursive: bool = True,
    extensions: Collection[str] = IMAGE_EXTENSIONS,
    follow_symlinks: bool = False,
    on_error: OnError | None = None,
) -> Iterator[Item]:
    """Yield the items named by `inputs`, in a deterministic order, lazily.

    Args:
        inputs: files, folders, glob patterns, tar shards and file lists (see module doc);
            str or os.PathLike (a single str or Path is taken as one input).
        recursive: walk sub-folders of folder inputs.
        extensions: lower-case extensions (with the dot) kept when walking folders and
            shards; files named explicitly are always kept.
        follow_symlinks: enter symlinked folders and keep symlinked files found while
            walking (loops are detected); symlinks given as inputs are always followed.
        on_error: called with a `WalkError` for every folder (or entry) that could not
            be read; the walk goes on. None ignores them: pass a callback (or use `Walk`)
            whenever a missing item matters (an index, a filter run).

    Returns:
        An iterator of `Item`. Folders are walked in sorted order; inputs in given order.

    Raises:
        UsageError: an input does not exist or cannot be read, a glob matches nothing, or
            a shard or list cannot be read (raised when the iterator reaches that input).

    Example:
        >>> keys = [it.key for it in iter_items(["photos/", "shards/*.tar"])]
    """
    if isinstance(inputs, str | bytes | os.PathLike):  # one input, not its characters
        inputs = [inputs]
    exts = frozenset(e.lower() for e in extensions)
    for text in inputs:
        yield from _expand(
            os.fsdecode(text), recursive=recursive, extensions=exts,
            follow_symlinks=follow_symlinks, on_error=on_error,
        )


class Walk:
    """The items of `inputs` (as `iter_items` yields them), remembering what could not be
    read: iterate it, then look at `errors`.

    Example:
        >>> walk = Walk(["photos/"])
        >>> keys = [it.key for it in walk]
        >>> [e.path for e in walk.errors]        # folders that could not be listed
        ['/photos/private']
    """

    def __init__(self, inputs: Sequence[str | os.PathLike], **options) -> None:
        self.inputs = [os.fspath(p) for p in
                       ([inputs] if isinstance(inputs, str | bytes | os.PathLike) else inputs)]
        self.options = options
        self.errors: list[WalkError] = []

    def __iter__(self) -> Iterator[Item]:
        self.errors.clear()  # each pass reports what it could not read
        return iter_items(self.inputs, on_error=self.errors.append, **self.options)


def count_items(
    inputs: Sequence[str],
    *,
    recursive: bool = True,
    extensions: Collection[str] = IMAGE_EXTENSIONS,
    follow_symlinks: bool = False,
) -> int:
    """Count the items `iter_items` would yield (walks folders and tar headers, reads no data).

    Compressed shards are decompressed to be counted, so they are not cheap.

    Args:
        inputs: as for `iter_items`.
        recursive: as for `iter_items`.
        extensions: as for `iter_items`.
        follow_symlinks: as for `iter_items`.

    Returns:
        The number of items.
    """
    return sum(
        1 for _ in iter_items(
            inputs, recursive=recursive, extensions=extensions, follow_symlinks=follow_symlinks,
        )
    )
