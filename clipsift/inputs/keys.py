"""Item keys and file names: the one rule for turning them into text, bytes, and back.

A key is a `str`: the absolute path of a file, or "SHARD::MEMBER" for a member of a tar
shard (`join_key` / `split_key`). File names are bytes on POSIX; a name that is not valid
UTF-8 is kept as its `os.fsdecode` string (surrogate escapes: b"caf\\xe9.png" becomes
"caf\\udce9.png"), which `open()` maps back to the same bytes. Such a string cannot be
written as UTF-8 text (JSON, Parquet strings, SQLite), so every writer goes through here:

- people (terminal, HTML): `printable(key)`, undecodable bytes escaped ("caf\\xe9.png");
- JSON lines and server responses: `json_fields("path", key)` gives {"path": text} and,
  only for a name that is not valid UTF-8, "path_bytes": the exact bytes in base64;
  `key_from_json(record)` reads it back;
- Parquet: `parquet_columns("path", keys)` gives a string column "path" and a binary
  column "path_bytes" (the raw bytes where the name is not valid UTF-8, else null);
  `keys_from_columns` reads them back;
- SQLite: `sql_value(key)` binds valid UTF-8 as TEXT and other names as a BLOB of their
  bytes; `key_from_sql(value)` reads either back;
- files and opaque storage: `key_bytes(key)` / `key_from_bytes(raw)` (`os.fsencode`).

To reopen a path from JSON or Parquet anywhere: `raw = base64(path_bytes) if path_bytes
else path.encode("utf-8")`, then open `raw` (bytes) or `os.fsdecode(raw)` in Python.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping, Sequence
from typing import Any

MEMBER_SEP = "::"
#: Shard names whose members become "SHARD::MEMBER" keys (compared case-insensitively).
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
BYTES_SUFFIX = "_bytes"


# ---- shard::member keys ---------------------------------------------------------------------
def join_key(shard: str, member: str) -> str:
    """The key of tar member `member` of `shard` (an absolute .tar/.tar.gz/.tgz path).

    Example:
        >>> join_key("/data/a.tar", "x/1.jpg")
        '/data/a.tar::x/1.jpg'
    """
    return f"{shard}{MEMBER_SEP}{member}"


def split_key(key: str) -> tuple[str, str | None]:
    """Split a key into (file path, tar member name or None for a plain file).

    The shard is the text before the first "::" that follows a tar suffix, so "::" inside
    a folder name, a plain file's name or a member's name is kept where it belongs.

    Args:
        key: an item key.

    Returns:
        (shard path, member) for a tar member, (path, None) for a plain file.

    Example:
        >>> split_key("/d/a::b.tar::x::y.jpg")
        ('/d/a::b.tar', 'x::y.jpg')
        >>> split_key("/d/a::b.jpg")
        ('/d/a::b.jpg', None)
    """
    start = 0
    while (at := key.find(MEMBER_SEP, start)) >= 0:
        if key[:at].lower().endswith(TAR_SUFFIXES):
            return key[:at], key[at + len(MEMBER_SEP):]
        start = at + 1
    return key, None


def key_name(key: str) -> str:
    """The file name of a key: the base name of the member or of the file."""
    path, member = split_key(key)
    return os.path.basename(member if member is not None else path)


# ---- bytes ----------------------------------------------------------------------------------
def key_bytes(key: str) -> bytes:
    """The exact bytes of a key (`os.fsencode`): what the file system calls it."""
    return os.fsencode(key)


def key_from_bytes(raw: bytes) -> str:
    """The key of a file name given as bytes (`os.fsdecode`); inverse of `key_bytes`."""
    return os.fsdecode(raw)


def is_text(key: str) -> bool:
    """True when the key is valid Unicode text (it can be written as UTF-8 as it is)."""
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable(key: str) -> str:
    """The key as text for people: undecodable bytes escaped ("caf\\xe9.png"); lossy."""
    if is_text(key):
        return key
    try:
        return key_bytes(key).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate no file name produces: escape it as is
        return key.encode("utf-8", "backslashreplace").decode("utf-8")


# ---- JSON -----------------------------------------------------------------------------------
def _b64(key: str) -> str:
    return base64.b64encode(key_bytes(key)).decode("ascii")


def json_fields(field: str, key: str | None) -> dict[str, Any]:
    """{field: text} plus {field + "_bytes": base64 bytes} when the name is not UTF-8.

    Example:
        >>> json_fields("path", os.fsdecode(b"caf\\xe9.png"))
        {'path': 'caf\\\\xe9.png', 'path_bytes': 'Y2Fm6S5wbmc='}
    """
    if key is None:
        return {field: None}
    if is_text(key):
        return {field: key}
    return {field: printable(key), field + BYTES_SUFFIX: _b64(key)}


def json_list_fields(field: str, keys: Sequence[str]) -> dict[str, Any]:
    """{field: [text, ...]} plus, when any name is not UTF-8, {field + "_bytes": [base64
    or None, ...]} (None where the text is exact)."""
    out: dict[str, Any] = {field: [printable(k) for k in keys]}
    if not all(is_text(k) for k in keys):
        out[field + BYTES_SUFFIX] = [None if is_text(k) else _b64(k) for k in keys]
    return out


def key_from_json(record: Mapping[str, Any], field: str = "path") -> str:
    """The exact key of a record written with `json_fields`."""
    raw = record.get(field + BYTES_SUFFIX)
    if raw:
        return key_from_bytes(base64.b64decode(raw))
    return record[field]


# ---- Parquet --------------------------------------------------------------------------------
def parquet_columns(field: str, keys: Sequence[str | None]) -> dict[str, Any]:
    """{field: string column, field + "_bytes": binary column (raw bytes where the name is
    not valid UTF-8, else null)} for pyarrow; None keys give nulls in both."""
    import pyarrow as pa

    return {
        field: pa.array([None if k is None else printable(k) for k in keys], pa.string()),
        field + BYTES_SUFFIX: pa.array(
            [None if k is None or is_text(k) else key_bytes(k) for k in keys], pa.binary()),
    }


def keys_from_columns(text: Sequence[str | None], raw: Sequence[bytes | None] | None
                      ) -> list[str | None]:
    """Exact keys from a Parquet "path" column and its "path_bytes" column (if any)."""
    if raw is None:
        return list(text)
    return [key_from_bytes(b) if b is not None else t for t, b in zip(text, raw, strict=True)]


# ---- SQLite ---------------------------------------------------------------------------------
def sql_value(key: str) -> str | bytes:
    """Bind a key in SQLite: TEXT when valid UTF-8, else a BLOB of its bytes."""
    return key if is_text(key) else key_bytes(key)


def key_from_sql(value: str | bytes) -> str:
    """The key of a value stored with `sql_value`."""
    return value if isinstance(value, str) else key_from_bytes(value)
