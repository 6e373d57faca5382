"""Open any image safely: one function for every place clipsift reads pixels.

`open_image` returns an RGB `PIL.Image.Image` or raises `ImageError(source, reason)`; no raw
exception escapes for a bad file. It handles EXIF orientation, palette/alpha/CMYK/16-bit and
float modes, the first frame of animations and multi-page files, HEIC/HEIF (pillow-heif),
and two caps checked on the header before any pixel is decoded: pixels (a decompression
bomb) and bytes of the decoded buffer (width x height x bytes per pixel of the mode).
FIFOs, sockets and devices are refused without blocking (`clipsift.inputs.files`).

Exact by default: the pixels are the whole image as PIL decodes it, EXIF orientation
applied, alpha composited on white, so `model.preprocess(open_image(path))` equals the
model's own preprocess of `ImageOps.exif_transpose(Image.open(path))` (on white). Only
when asked (`draft_size`, the engines' `fast_decode`) do large JPEGs decode at a reduced
scale (JPEG `draft()`: faster, approximate; `DECODE_FAST`).

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
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, ImageFile, UnidentifiedImageError

from clipsift.errors import ImageError
from clipsift.inputs.files import NotRegularFileError, open_regular
from clipsift.inputs.modes import HIGH_DEPTH_MODES, bytes_per_pixel, high_depth_to_l, rgb_view
from clipsift.inputs.modes import to_rgb as to_rgb

#: Default cap on width x height, checked on the header before decoding (Pillow's hard limit).
MAX_PIXELS = 178_956_970
#: Default cap on the decoded buffer, width x height x bytes per pixel of the file's mode
#: (checked on the header). 1 GiB: above MAX_PIXELS of any mode of at most 4 bytes/pixel.
MAX_DECODED_BYTES = 1 << 30

#: Decode modes, a plain value to record with results made from the pixels:
#: exact = the whole image; fast = large JPEGs decoded at 1/2-1/8 scale (approximate).
DECODE_EXACT = "exact"
DECODE_FAST = "fast"

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

_ORIENTATION_TAG = 0x0112
#: Metadata that can carry an orientation (EXIF, XMP's tiff:Orientation).
_ORIENTATION_INFO = ("exif", "XML:com.adobe.xmp", "xmp")
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SETUP_LOCK = threading.Lock()
_setup_done = False


@dataclass(frozen=True)
class DecodedImage:
    """An opened image and facts about the file it came from.

    Attributes:
        image: the pixels, RGB, EXIF orientation applied (reduced only with a draft size).
        width: width of the full-size image as displayed (after EXIF orientation).
        height: height of the full-size image as displayed.
        format: Pillow's format name ("JPEG", "PNG", "HEIF", ...), None if unknown.
    """

    image: Image.Image
    width: int
    height: int
    format: str | None


def decode_mode(fast_decode: bool) -> str:
    """The decode mode's name for the `fast_decode` switch: `DECODE_FAST` or `DECODE_EXACT`.

    Args:
        fast_decode: whether large JPEGs decode at reduced scale.

    Returns:
        "fast" or "exact", to record with results.
    """
    return DECODE_FAST if fast_decode else DECODE_EXACT


def draft_size_for(fast_decode: bool, image_size: int) -> int | None:
    """The `draft_size` to decode with for a model input of `image_size` pixels.

    Args:
        fast_decode: the engine's switch.
        image_size: the model's input size (its preprocess resizes to it).

    Returns:
        `image_size` when fast decoding (JPEGs then decode at the smallest 1/2, 1/4 or 1/8
        scale whose sides stay >= image_size), None for exact decoding.
    """
    return image_size if fast_decode else None


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
    if isinstance(exc, NotRegularFileError):
        return f"{exc.strerror}, not an image file"
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
    try:
        fh = open_regular(source)  # refuses FIFOs, sockets, devices without blocking
        empty = os.fstat(fh.fileno()).st_size == 0
    except OSError as exc:
        raise ImageError(label, _stat_reason(exc)) from exc
    with fh:
        if empty:
            raise ImageError(label, "empty file (0 bytes)")
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


def _check_bytes(label: str, im: Image.Image, max_bytes: int) -> None:
    """Refuse an image whose decoded buffer (W x H x bytes per pixel of its mode) is too big."""
    per = bytes_per_pixel(im.mode)
    need = im.width * im.height * per
    if need > max_bytes:
        raise ImageError(
            label,
            f"decoded image too large: {im.width}x{im.height} {im.mode} x {per} bytes per "
            f"pixel = {need:,} bytes exceeds limit {max_bytes:,} bytes",
        )


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # broken EXIF never rejects an image
        return 1


def _oriented_size(im: Image.Image) -> tuple[int, int]:
    w, h = im.size
    return (h, w) if _orientation(im) in (5, 6, 7, 8) else (w, h)


def _open_header(fp: BinaryIO, label: str) -> ImageFile.ImageFile:
    """Image.open (header only); Pillow's soft bomb warning is muted: max_pixels rules."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except UnidentifiedImageError as exc:
        raise ImageError(label, _unidentified_reason(fp)) from exc


def _replace(old: Image.Image, new: Image.Image) -> Image.Image:
    """Free `old`'s pixels as soon as `new` replaces it (peak memory: two steps, not all)."""
    if new is not old:
        old.close()
    return new


def _to_oriented_rgb(im: Image.Image, orientation: int) -> Image.Image:
    """A loaded image -> RGB with EXIF orientation applied, each intermediate freed at once.

    High-depth modes are scaled to 8 bits before transposing (4x less to move); converting
    and transposing commute (both act on each pixel alone / move whole pixels).
    """
    out = im
    if out.mode in HIGH_DEPTH_MODES:
        out = _replace(out, high_depth_to_l(out))
    method = _TRANSPOSE.get(orientation)
    if method is not None:
        turned = out.transpose(method)
        for key in _ORIENTATION_INFO:  # applied: no reader may apply it a second time
            turned.info.pop(key, None)
        out = _replace(out, turned)
    return _replace(out, rgb_view(out))


def _decode(fp: BinaryIO, label: str, draft_size: int | None, max_pixels: int,
            max_bytes: int) -> DecodedImage:
    im = _open_header(fp, label)
    try:
        _check_pixels(label, im.width, im.height, max_pixels)
        orientation = _orientation(im)
        width, height = _oriented_size(im)
        fmt = im.format
        if draft_size and fmt in ("JPEG", "MPO"):
            # Decode at 1/2, 1/4 or 1/8 scale, never below draft_size on either side.
            im.draft("RGB", (draft_size, draft_size))
        _check_bytes(label, im, max_bytes)
        im.load()
        rgb = _to_oriented_rgb(im, orientation)
    except BaseException:
        im.close()
        raise
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
    draft_size: int | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_DECODED_BYTES,
    name: str | None = None,
) -> DecodedImage:
    """Open an image safely and also report its full-size dimensions and format.

    Same as `open_image`, for callers (the bulk pipeline) that record the original size.

    Args:
        source: a path, encoded image bytes, or a binary stream (left open).
        draft_size: None (default) decodes the whole image, exactly. A size asks for fast,
            approximate decoding: large JPEGs decode at the smallest 1/2, 1/4 or 1/8 scale
            whose sides stay >= draft_size (other formats are not affected).
        max_pixels: reject images whose header claims more than this many pixels.
        max_bytes: reject images whose decoded buffer (width x height x bytes per pixel of
            the file's mode, after any draft reduction) would be larger.
        name: how to name the source in errors (defaults to the path or "<bytes>").

    Returns:
        A `DecodedImage` with an RGB image and the original (oriented) width and height.

    Raises:
        ImageError: the source is missing, not a regular file, unreadable, empty, not an
            image, truncated, corrupt or too large; `reason` says which.
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
            return _decode(fp, label, draft_size, max_pixels, max_bytes)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(label, _bomb_reason(exc, max_pixels)) from exc
    except Exception as exc:  # any decoder failure is a per-image error, never a crash
        raise ImageError(label, _error_reason(exc)) from exc


def open_image(
    source: ImageSource,
    draft_size: int | None = None,
    *,
    max_pixels: int = MAX_PIXELS,
    max_bytes: int = MAX_DECODED_BYTES,
    name: str | None = None,
) -> Image.Image:
    """Open any image file or buffer as an RGB image, or raise `ImageError` with the reason.

    Args:
        source: a path (str or os.PathLike; non-UTF-8 names as produced by os.fsdecode work),
            encoded image bytes, or a binary stream (read, not closed).
        draft_size: None (default): the whole image, exactly as PIL decodes it. A size asks
            for fast, approximate decoding of large JPEGs (see `decode_image`).
        max_pixels: reject images whose header claims more pixels, before decoding.
        max_bytes: reject images whose decoded buffer would take more bytes, before decoding.
        name: how to name the source in errors (defaults to the path or "<bytes>").

    Returns:
        An RGB `PIL.Image.Image`, EXIF orientation applied, alpha composited on white,
        first frame/page only.

    Raises:
        ImageError: missing, not a regular file, unreadable, empty, not an image,
            truncated, corrupt, a decompression bomb or over the byte cap.

    Example:
        >>> im = open_image("photo.heic")
        >>> im.mode
        'RGB'
    """
    return decode_image(source, draft_size, max_pixels=max_pixels, max_bytes=max_bytes,
                        name=name).image


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
