"""Pixel modes -> RGB: alpha on white, 16-bit and float scaled, CMYK through its ICC profile,
and EXIF orientation applied.

Used by `clipsift.inputs.images` after decoding. High-depth images are scaled block by block
(a few MB at a time), so converting an 8000x8000 float TIFF costs its 64 MB 8-bit result,
not gigabytes of float64 temporaries.
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from PIL import Image, ImageMode

#: Modes with more than 8 bits per sample; scaled to 8-bit L before anything else.
HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
#: Pixels per block when scaling high-depth images (8 MB of float64 per block).
_BLOCK_PIXELS = 1 << 20


def bytes_per_pixel(mode: str) -> int:
    """Bytes Pillow allocates per pixel of `mode` (8-bit multi-band modes take 4).

    Args:
        mode: a Pillow mode name ("L", "RGB", "I;16", "F"...).

    Returns:
        1 for L/P/1, 2 for I;16*, 4 for I, F and every multi-band mode (RGB, LA, CMYK...).
    """
    try:
        info = ImageMode.getmode(mode)
    except KeyError:
        return 4
    size = np.dtype(info.typestr).itemsize
    return size if len(info.bands) == 1 else 4 * size


def _row_blocks(im: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float64 [rows, W] copy of those rows) for blocks of about 1M pixels."""
    step = max(1, _BLOCK_PIXELS // max(1, im.width))
    for y in range(0, im.height, step):
        block = np.asarray(im.crop((0, y, im.width, min(im.height, y + step))))
        yield y, block.astype(np.float64)  # [rows, W]


def _finite(block: np.ndarray) -> np.ndarray:
    return np.nan_to_num(block, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def _value_range(im: Image.Image) -> tuple[float, float]:
    """(min, max) over the whole image, NaN/inf counted as 0 (as they are drawn)."""
    lo, hi = np.inf, -np.inf
    for _, block in _row_blocks(im):
        block = _finite(block)
        if block.size:
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
    return (lo, hi) if lo <= hi else (0.0, 0.0)


def _scale(block: np.ndarray, mode: str, lo: float, hi: float) -> np.ndarray:
    if mode.startswith("I;16"):
        return block / 257.0
    if mode == "F" and lo >= 0.0 and hi <= 1.0:
        return block * 255.0
    if lo >= 0.0 and hi <= 255.0:
        return block
    if mode == "I" and lo >= 0.0 and hi <= 65535.0:
        return block / 257.0
    return (block - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(block)


def high_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit integer, 32-bit integer or float greyscale -> 8-bit L, scaled, not clipped.

    I;16 modes map 0..65535 to 0..255. Mode I maps by its value range: 0..255 as is,
    0..65535 as 16-bit, anything else stretched min..max. Mode F maps 0..1 to 0..255,
    0..255 as is, anything else stretched min..max. NaN/inf become 0. Works on blocks of
    rows: memory beyond the input is the 8-bit output plus about 16 MB.

    Args:
        im: a loaded image in one of `HIGH_DEPTH_MODES`.

    Returns:
        A new L image of the same size.
    """
    mode = im.mode
    lo, hi = (0.0, 65535.0) if mode.startswith("I;16") else _value_range(im)
    out = np.empty((im.height, im.width), np.uint8)  # [H, W]
    for y, block in _row_blocks(im):
        scaled = _scale(_finite(block), mode, lo, hi)
        out[y : y + len(block)] = np.clip(np.rint(scaled), 0, 255)
    return Image.fromarray(out, "L")


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


def rgb_view(im: Image.Image) -> Image.Image:
    """`im` as RGB: the image itself when it already is RGB, else a converted new image
    (see `to_rgb`)."""
    mode = im.mode
    if mode in HIGH_DEPTH_MODES:
        return high_depth_to_l(im).convert("RGB")
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if "A" in mode or "a" in mode or "transparency" in im.info:
        return _on_white(im)
    if mode == "RGB":
        return im
    return im.convert("RGB")


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert an image of any Pillow mode to RGB, as a new image.

    Alpha (RGBA, LA, PA, palette or greyscale transparency) is composited on white;
    16-bit and float modes are scaled to 8 bits; CMYK goes through its ICC profile.

    Args:
        im: a loaded image in any mode.

    Returns:
        A new RGB image of the same size.
    """
    out = rgb_view(im)
    return out.copy() if out is im else out


_ORIENTATION_TAG = 0x0112
#: Metadata that can carry an orientation (EXIF, XMP's tiff:Orientation).
_ORIENTATION_INFO = ("exif", "XML:com.adobe.xmp", "xmp")
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def orientation(im: Image.Image) -> int:
    """The EXIF/TIFF/XMP orientation (1-8) of an opened image; 1 when absent or broken."""
    try:
        return int(im.getexif().get(_ORIENTATION_TAG, 1))
    except Exception:  # broken EXIF never rejects an image
        return 1


def oriented_size(im: Image.Image) -> tuple[int, int]:
    """(width, height) as displayed, orientation applied, from the header."""
    w, h = im.size
    return (h, w) if orientation(im) in (5, 6, 7, 8) else (w, h)


def _replace(old: Image.Image, new: Image.Image) -> Image.Image:
    """Free `old`'s pixels as soon as `new` replaces it (peak memory: two steps, not all)."""
    if new is not old:
        old.close()
    return new


def to_oriented_rgb(im: Image.Image, turn: int) -> Image.Image:
    """A loaded image -> RGB with EXIF orientation applied, each intermediate freed at once.

    High-depth modes are scaled to 8 bits before transposing (4x less to move); converting
    and transposing commute (both act on each pixel alone / move whole pixels).
    """
    out = im
    if out.mode in HIGH_DEPTH_MODES:
        out = _replace(out, high_depth_to_l(out))
    method = _TRANSPOSE.get(turn)
    if method is not None:
        turned = out.transpose(method)
        for key in _ORIENTATION_INFO:  # applied: no reader may apply it a second time
            turned.info.pop(key, None)
        out = _replace(out, turned)
    return _replace(out, rgb_view(out))
