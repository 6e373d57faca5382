"""Why an image could not be opened, in words a user can act on (for `ImageError`)."""

from __future__ import annotations

import re
from typing import BinaryIO

from PIL import Image

from clipsift.inputs.files import NotRegularFileError


def stat_reason(exc: OSError) -> str:
    """Why a file could not be opened (missing, permission, folder, FIFO/socket/device)."""
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(exc, NotRegularFileError):
        return f"{exc.strerror}, not an image file"
    return f"cannot read file ({exc.strerror or exc})"


def unidentified_reason(fp: BinaryIO) -> str:
    """Explain why Pillow could not identify the data: text, unsupported HEIC/AVIF, garbage."""
    try:
        fp.seek(0)
        head = fp.read(512)
    except (OSError, ValueError):
        head = b""
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1", b"msf1", b"hevc", b"heif"):
            return "HEIC/HEIF image, but pillow-heif is not installed (pip install pillow-heif)"
        if brand in (b"avif", b"avis"):
            return "AVIF image, but this Pillow has no AVIF support"
    if head and b"\x00" not in head:
        try:
            head.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return "not an image: the file holds text"
    return "not a recognised image format (unknown type or corrupt header)"


def bomb_reason(exc: Exception, max_pixels: int) -> str:
    """Reason for Pillow's own DecompressionBombError (it does not give width and height)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = found.group(1) if found else "too many"
    limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
    return f"decompression bomb: {pixels} pixels exceeds limit {limit}"


def error_reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if isinstance(exc, OSError) and "truncated" in text:
        return f"truncated image data ({text})"
    return f"corrupt or unsupported image data ({type(exc).__name__}: {text})"
