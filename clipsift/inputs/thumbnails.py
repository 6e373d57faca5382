"""Thumbnails: the one place that turns an image into a small JPEG or PNG for display.

Used by the server (`/v1/thumbnail`, which adds its cache and ETags), the dedup HTML page
and the evaluation report. Images are opened with `clipsift.inputs.images.open_image`
(bomb and byte caps, EXIF orientation, alpha on white, FIFOs refused), so only pixels
ever come out, whatever file sits at a path. Thumbnails are for eyes, not for vectors:
large JPEGs are decoded at a reduced scale that stays at least `size` on each side
(JPEG draft), then resized with Lanczos.
"""

from __future__ import annotations

import base64
import io

from PIL import Image

from clipsift.errors import ImageError
from clipsift.inputs.images import MAX_DECODED_BYTES, MAX_PIXELS, ImageSource, open_image

#: Encoder settings per output format.
FORMATS = {"JPEG": ("image/jpeg", {"quality": 82, "optimize": True, "progressive": True}),
           "PNG": ("image/png", {"optimize": True})}


def make_thumbnail(source: ImageSource, size: int, *, max_pixels: int = MAX_PIXELS,
                   max_bytes: int = MAX_DECODED_BYTES, name: str | None = None) -> Image.Image:
    """Open an image and shrink it to fit in `size` x `size` (never enlarged).

    Args:
        source: a path, encoded image bytes, or a binary stream.
        size: the longest side of the thumbnail, in pixels (>= 1).
        max_pixels: decompression-bomb cap (width x height) of the source.
        max_bytes: cap on the decoded buffer of the source.
        name: how to name the source in errors.

    Returns:
        An RGB image whose longer side is at most `size`, aspect ratio kept.

    Raises:
        ImageError: the source cannot be read or decoded (or is over a cap).
    """
    if size < 1:
        raise ValueError(f"thumbnail size must be >= 1, got {size}")
    image = open_image(source, size, max_pixels=max_pixels, max_bytes=max_bytes, name=name)
    image.thumbnail((size, size), Image.Resampling.LANCZOS)
    return image


def thumbnail_bytes(source: ImageSource, size: int, *, fmt: str = "JPEG",
                    max_pixels: int = MAX_PIXELS, max_bytes: int = MAX_DECODED_BYTES,
                    name: str | None = None) -> bytes:
    """A thumbnail encoded as JPEG or PNG.

    Args:
        source, size, max_pixels, max_bytes, name: as for `make_thumbnail`.
        fmt: "JPEG" or "PNG".

    Returns:
        The encoded bytes.

    Raises:
        ImageError: the source cannot be read or decoded.
        ValueError: unknown format.

    Example:
        >>> jpeg = thumbnail_bytes("photo.heic", 256)
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown thumbnail format {fmt!r}; choose one of {sorted(FORMATS)}")
    image = make_thumbnail(source, size, max_pixels=max_pixels, max_bytes=max_bytes, name=name)
    out = io.BytesIO()
    image.save(out, format=fmt, **FORMATS[fmt][1])
    return out.getvalue()


def thumbnail_data_url(source: ImageSource, size: int, *, fmt: str = "JPEG",
                       name: str | None = None) -> str | None:
    """A thumbnail as a base64 `data:` URL for self-contained HTML pages, None if the
    image cannot be read (a page shows a blank, it never fails for one image).

    Args:
        source, size, fmt, name: as for `thumbnail_bytes`.

    Returns:
        "data:image/jpeg;base64,..." (or image/png), or None.
    """
    try:
        data = thumbnail_bytes(source, size, fmt=fmt, name=name)
    except ImageError:
        return None
    return f"data:{FORMATS[fmt][0]};base64," + base64.b64encode(data).decode("ascii")
