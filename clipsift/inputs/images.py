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
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, ImageFile, UnidentifiedImageError

from clipsift.errors import ImageError
from clipsift.inputs.files import open_regular
from clipsift.inputs.modes import (
    HIGH_DEPTH_MODES,
    bytes_per_pixel,
    orientation,
    oriented_size,
    to_oriented_rgb,
)
from clipsift.inputs.modes import to_rgb as to_rgb
from clipsift.inputs.reasons import bomb_reason, error_reason, stat_reason, unidentified_reason

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
        raise ImageError(label, stat_reason(exc)) from exc
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


def _open_header(fp: BinaryIO, label: str) -> ImageFile.ImageFile:
    """Image.open (header only); Pillow's soft bomb warning is muted: max_pixels rules."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(fp)
    except UnidentifiedImageError as exc:
        raise ImageError(label, unidentified_reason(fp)) from exc


def _decode(fp: BinaryIO, label: str, draft_size: int | None, max_pixels: int,
            max_bytes: int) -> DecodedImage:
    im = _open_header(fp, label)
    try:
        _check_pixels(label, im.width, im.height, max_pixels)
        turn = orientation(im)
        width, height = oriented_size(im)
        fmt = im.format
        if draft_size and fmt in ("JPEG", "MPO"):
            # Decode at 1/2, 1/4 or 1/8 scale, never below draft_size on either side.
            im.draft("RGB", (draft_size, draft_size))
        _check_bytes(label, im, max_bytes)
        im.load()
        rgb = to_oriented_rgb(im, turn)
    except BaseException:
        im.close()
        raise
    return DecodedImage(rgb, width, height, fmt)


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
        raise ImageError(label, bomb_reason(exc, max_pixels)) from exc
    except Exception as exc:  # any decoder failure is a per-image error, never a crash
        raise ImageError(label, error_reason(exc)) from exc


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


def decode_cost(source: ImageSource, draft_size: int | None = None, *, rgb_copies: int = 1,
                name: str | None = None) -> int:
    """Bytes a decode of `source` will hold at its peak, estimated from the header.

    The decoded buffer (width x height x bytes per pixel of the file's mode, after any
    draft reduction) plus `rgb_copies` RGB images (4 bytes per pixel in Pillow), plus the
    8-bit copy of a 16-bit or float image. Used to budget concurrent decodes (the server).

    Args:
        source: a path, encoded image bytes, or a binary stream.
        draft_size: as for `decode_image`.
        rgb_copies: full-size RGB images alive at once: 1 for the result; 2 when a
            model's preprocess converts it to RGB again (open_clip's does: a copy).
        name: how to name the source in errors.

    Returns:
        The estimate in bytes; 0 when the header cannot be read (decoding will say why).
    """
    label = name or _label(source)
    _setup()
    try:
        with _open_stream(source, label) as fp, _open_header(fp, label) as im:
            if draft_size and im.format in ("JPEG", "MPO"):
                im.draft("RGB", (draft_size, draft_size))
            pixels = im.width * im.height
            extra = pixels if im.mode in HIGH_DEPTH_MODES else 0
            return pixels * (bytes_per_pixel(im.mode) + 4 * rgb_copies) + extra
    except Exception:  # a bad header costs nothing here; decoding reports it
        return 0


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
            return oriented_size(im)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(label, bomb_reason(exc, MAX_PIXELS)) from exc
    except Exception as exc:
        raise ImageError(label, error_reason(exc)) from exc
