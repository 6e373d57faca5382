"""Open any image safely: one function for every place clipsift reads pixels.

`open_image` returns an RGB `PIL.Image.Image` or raises `ImageError(source, reason)`; no raw
exception escapes for a bad file. It handles EXIF orientation, palette/alpha/CMYK/16-bit and
float modes, the first frame of animations and multi-page files, HEIC/HEIF (pillow-heif),
a decompression-bomb cap checked on the header before any pixel is decoded, and Pillow's
JPEG `draft()` so large JPEGs decode at a reduced scale when a target size is known.

Pillow's soft warning for large images (`DecompressionBombWarning`) is muted while a header
is read, because `max_pixels` is the cap clipsift applies. Pillow's
hard limit (2 x `PIL.Image.MAX_IMAGE_PIXELS`, equal to `MAX_PIXELS` by default) still applies
on top: to accept larger images, raise both.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import stat
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from clipsift.errors import ImageError

#: Default cap on width x height, checked on the header before decoding (Pillow's hard limit).
MAX_PIXELS = 178_956_970

_BASE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".gif", ".webp", ".bmp", ".dib",
    ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico",
)
_HEIF_EXTENSIONS = (".heic", ".heif", ".hif")


def _optional_extensions() -> tuple[str, ...]:
    """Extensions whose decoders are optional, found without importing them."""
    extra: list[str] = []
    if importlib.util.find_spec("pillow_heif") is not None:
        extra.extend(_HEIF_EXTENSIONS)
    if importlib.util.find_spec("PIL._avif") is not None:
        extra.append(".avif")
    return tuple(extra)


#: Lower-case file extensions (with the dot) that clipsift treats as images.
IMAGE_EXTENSIONS: frozenset[str] = frozenset(_BASE_EXTENSIONS + _optional_extensions())

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ORIENTATION_TAG = 0x0112
_SETUP_LOCK = threading.Lock()
_setup_done = False


@dataclass(frozen=True)
class DecodedImage:
    """An opened image and facts about the file it came from.

    Attributes:
        image: the pixels, RGB, EXIF orientation applied (maybe reduced by JPEG draft).
        width: width of the full-size image as displayed (after EXIF orientation).
        height: height of the full-size image as displayed.
        format: Pillow's format name ("JPEG", "PNG", "HEIF", ...), None if unknown.
    """

    image: Image.Image
    width: int
    height: int
    format: str | None


def _setup() -> None:
    """Once per process: register the HEIF opener."""
    global _setup_done
    if _setup_done:
        return
    with _SETUP_LOCK:
        if _setup_done:
            return
        with contextlib.suppress(ImportError):
            import pillow_heif

            pillow_heif.register_heif_opener()
        _setup_done = True


def _label(source: ImageSource) -> str:
    if isinstance(source, bytes | bytearray | memoryview):
        return "<bytes>"
    if isinstance(source, str | os.PathLike):
        return os.fsdecode(source)
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<stream>"


def _stat_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, not an image file"
    return f"cannot read file ({exc.strerror or exc})"


@contextlib.contextmanager
def _open_stream(source: ImageSource, label: str) -> Iterator[BinaryIO]:
    """Yield a seekable binary stream over `source`; raise ImageError for unreadable input."""
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageError(label, "empty data (0 bytes)")
        yield io.BytesIO(source)
        return
    if not isinstance(source, str | os.PathLike):
        yield _seekable(source, label)
        return
    path = os.fspath(source)
    try:
        st = os.stat(path)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(label, "is a directory, not an image file")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(label, "not a regular file (device, pipe or socket)")
        if st.st_size == 0:
            raise ImageError(label, "empty file (0 bytes)")
        fh = open(path, "rb")  # noqa: SIM115 - closed below, after decoding
    except OSError as exc:
        raise ImageError(label, _stat_reason(exc)) from exc
    with fh:
        yield fh


def _seekable(stream: BinaryIO, label: str) -> BinaryIO:
    try:
        if not stream.seekable():
            stream = io.BytesIO(stream.read())
        pos = stream.tell()
        empty = not stream.read(1)
        stream.seek(pos)
    except (OSError, ValueError) as exc:
        raise ImageError(label, f"cannot read stream ({exc})") from exc
    if empty:
        raise ImageError(label, "empty data (0 bytes)")
    return stream


def _unidentified_reason(fp: BinaryIO) -> str:
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


def _bomb_reason(exc: Exception, max_pixels: int) -> str:
    """Reason for Pillow's own DecompressionBombError (it does not give width and height)."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    pixels = found.group(1) if found else "too many"
    limit = min(max_pixels, 2 * (Image.MAX_IMAGE_PIXELS or max_pixels))
    return f"decompression bomb: {pixels} pixels exceeds limit {limit}"


def _check_pixels(label: str, width: int, height: int, max_pixels: int) -> None:
    pixels = width * height
    if pixels > max_pixels:
        raise ImageError(
            label,
            f"decompression bomb: {width}x{height} = {pixels} pixels exceeds limit {max_pixels}",
        )


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # broken EXIF never rejects an image
        return 1


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    w, h = im.size
    return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit integer, 32-bit integer or float greyscale -> 8-bit L, scaled, not clipped.

    I;16 modes map 0..65535 to 0..255. Mode I maps by its value range: 0..255 as is,
    0..65535 as 16-bit, anything else stretched min..max. Mode F maps 0..1 to 0..255,
    0..255 as is, anything else stretched min..max. NaN/inf become 0.
    """
    arr = np.asarray(im).astype(np.float64)  # [H, W]
    arr = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(arr.min()), float(arr.max())) if arr.size else (0.0, 0.0)
    if im.mode.startswith("I;16"):
        scaled = arr / 257.0
    elif im.mode == "F" and lo >= 0.0 and hi <= 1.0:
        scaled = arr * 255.0
    elif lo >= 0.0 and hi <= 255.0:
        scaled = arr
    elif im.mode == "I" and lo >= 0.0 and hi <= 65535.0:
        scaled = arr / 257.0
    else:
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
    return Image.fromarray(np.clip(np.rint(scaled), 0, 255).astype(np.uint8), "L")


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """CMYK -> RGB through the embedded ICC profile when there is one, else Pillow's formula."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst = ImageCms.createProfile("sRGB")
            out = ImageCms.profileToProfile(im, src, dst, outputMode="RGB")
            if out is not None:
                return out
        except Exception:  # a broken profile falls back to the plain conversion
            pass
    return im.convert("RGB")


def _on_white(im: Image.Image) -> Image.Image:
    """Composite an image with alpha onto a white background -> RGB."""
    if im.mode == "La":  # premultiplied: Pillow converts it to RGBA only through LA
        im = im.convert("LA")
    rgba = im.convert("RGBA")
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to RGB, as a new image.

    Alpha (RGBA, LA, PA, palette or greyscale transparency) is composited on white;
    16-bit and float modes are scaled to 8 bits; CMYK goes through its ICC profile.

    Args:
        im: a loaded image in any mode.

    Returns:
        A new RGB image of the same size.
    """
    mode = im.mode
    if mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_l(im).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if "A" in mode or "a" in mode or "transparency" in im.info:
        return _on_white(im)
    if mode == "RGB":
        return im.copy()
    return im.convert("RGB")


def _open_header(fp: BinaryIO, label: str) -> ImageFile.ImageFile:
    """Image.open (header only); Pillow's soft bomb warning is muted: max_pixels rules."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except UnidentifiedImageError as exc:
        raise ImageError(label, _unidentified_reason(fp)) from exc


def _decode(fp: BinaryIO, label: str, target_size: int | None, max_pixels: int) -> DecodedImage:
    im = _open_header(fp, label)
    with im:
        _check_pixels(label, im.width, im.height, max_pixels)
        width, height = _oriented_size(im)
        fmt = im.format
        if target_size and fmt in ("JPEG", "MPO"):
            # Decode at 1/2, 1/4 or 1/8 scale, never below target_size on either side.
            im.draft("RGB", (target_size, target_size))
        im.load()
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # broken EXIF never rejects an image
            oriented = im
        rgb = to_rgb(oriented)
    return DecodedImage(rgb, width, height, fmt)


def _error_reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, MemoryError):
        return "out of memory while decoding"
    if isinstance(exc, OSError) and "truncated" in text:
        return f"truncated image data ({text})"
    return f"corrupt or unsupported image data ({type(exc).__name__}: {text})"


def decode_image(
    source: ImageSource,
    target_size: int | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    name: str | None = None,
) -> DecodedImage:
    """Open an image safely and also report its full-size dimensions and format.

    Same as `open_image`, for callers (the bulk pipeline) that record the original size.

    Args:
        source: a path, encoded image bytes, or a binary stream (left open).
        target_size: the size the image will be resized to; large JPEGs decode at a reduced
            scale whose shortest side stays >= target_size. None decodes at full size.
        max_pixels: reject images whose header claims more than this many pixels.
        name: how to name the source in errors (defaults to the path or "<bytes>").

    Returns:
        A `DecodedImage` with an RGB image and the original (oriented) width and height.

    Raises:
        ImageError: the source is missing, unreadable, empty, not an image, truncated,
            corrupt or too large; `reason` says which.
    """
    label = name or _label(source)
    _setup()
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images will not be rejected",
            RuntimeWarning,
            stacklevel=2,
        )
    try:
        with _open_stream(source, label) as fp:
            return _decode(fp, label, target_size, max_pixels)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(label, _bomb_reason(exc, max_pixels)) from exc
    except Exception as exc:  # any decoder failure is a per-image error, never a crash
        raise ImageError(label, _error_reason(exc)) from exc


def open_image(
    source: ImageSource,
    target_size: int | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """Open any image file or buffer as an RGB image, or raise `ImageError` with the reason.

    Args:
        source: a path (str or os.PathLike; non-UTF-8 names as produced by os.fsdecode work),
            encoded image bytes, or a binary stream (read, not closed).
        target_size: the size the image will be resized to; large JPEGs then decode at a
            reduced scale whose shortest side stays >= target_size. None decodes full size.
        max_pixels: reject images whose header claims more pixels, before decoding.
        name: how to name the source in errors (defaults to the path or "<bytes>").

    Returns:
        An RGB `PIL.Image.Image`, EXIF orientation applied, alpha composited on white,
        first frame/page only.

    Raises:
        ImageError: missing, unreadable, empty, not an image, truncated, corrupt or a
            decompression bomb.

    Example:
        >>> im = open_image("photo.heic", target_size=224)
        >>> im.mode
        'RGB'
    """
    return decode_image(source, target_size, max_pixels=max_pixels, name=name).image


def image_size_of(source: ImageSource, *, name: str | None = None) -> tuple[int, int]:
    """Width and height of an image as displayed (EXIF orientation applied), header only.

    Args:
        source: a path, encoded image bytes, or a binary stream.
        name: how to name the source in errors.

    Returns:
        (width, height) in pixels, without decoding the pixel data.

    Raises:
        ImageError: the source cannot be read or is not an image.
    """
    label = name or _label(source)
    _setup()
    try:
        with _open_stream(source, label) as fp, _open_header(fp, label) as im:
            return _oriented_size(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(label, _bomb_reason(exc, MAX_PIXELS)) from exc
    except Exception as exc:
        raise ImageError(label, _error_reason(exc)) from exc
