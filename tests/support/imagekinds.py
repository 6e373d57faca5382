"""Image files of every awkward kind, and the reference clipsift's pixels must equal.

The reference (what "exact" means, written here without clipsift's code): PIL decodes the
whole file (`Image.open` + `load`, no draft), `ImageOps.exif_transpose` applies the EXIF
orientation, alpha is composited on white (`paste` with the alpha as mask), 16-bit
greyscale is scaled v/257 rounded to 8 bits, then `convert("RGB")`. Those three are
clipsift's documented, deliberate choices; nothing else may change a pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ORIENTATION = 0x0112


def _texture(w: int, h: int, seed: int) -> Image.Image:
    """Noise upscaled over a colour gradient: detail at every scale (draft changes it)."""
    rng = np.random.default_rng(seed)
    noise = Image.fromarray(rng.integers(0, 256, (h // 20, w // 20, 3), dtype=np.uint8))
    base = np.asarray(noise.resize((w, h), Image.Resampling.BICUBIC), np.float32)
    ramp = np.linspace(0, 80, w, dtype=np.float32)[None, :, None]
    fine = rng.integers(0, 40, (h, w, 1)).astype(np.float32)
    return Image.fromarray(np.clip(base * 0.7 + ramp + fine, 0, 255).astype(np.uint8))


def _exif(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return exif.tobytes()


def write_kinds(folder: Path) -> dict[str, Path]:
    """One file per kind: a 3000x2000 JPEG, a big EXIF-rotated JPEG, a small EXIF-rotated
    JPEG, a PNG with alpha, CMYK JPEG, 16-bit greyscale PNG, palette PNG with transparency."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def save(name: str, im: Image.Image, **kw) -> None:
        out[name] = folder / name
        im.save(out[name], **kw)

    save("big.jpg", _texture(3000, 2000, 1), quality=90)
    save("big-rotated.jpg", _texture(2400, 1600, 2), quality=90, exif=_exif(6))
    save("rotated.jpg", _texture(160, 100, 3), quality=92, exif=_exif(8))
    rgba = _texture(120, 90, 4).convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, 120, dtype=np.uint8), (90, 1))
    rgba.putalpha(Image.fromarray(alpha))
    save("alpha.png", rgba)
    save("cmyk.jpg", _texture(100, 80, 5).convert("CMYK"), quality=95)
    rng = np.random.default_rng(6)
    deep = (np.linspace(0, 65535, 150)[None, :] * np.ones((100, 1))
            + rng.integers(0, 2000, (100, 150))).clip(0, 65535).astype(np.uint16)
    save("deep16.png", Image.fromarray(deep))
    pal = _texture(90, 70, 7).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    save("palette.png", pal, transparency=3)
    return out


def reference_rgb(path: Path) -> Image.Image:
    """The pixels clipsift promises for a file (see the module docstring)."""
    with Image.open(path) as im:
        im.load()
        im = ImageOps.exif_transpose(im)
    if im.mode.startswith("I;16"):
        scaled = np.rint(np.asarray(im).astype(np.float64) / 257.0)
        im = Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        im = white
    return im.convert("RGB")


def write_worst_cases(folder: Path, side: int = 8000) -> dict[str, Path]:
    """Small files that decode huge (issue 21): a float32 TIFF and a 16-bit greyscale PNG of
    side x side pixels (8000: 256 MB and 128 MB decoded, from about 0.5 MB and 0.15 MB)."""
    folder.mkdir(parents=True, exist_ok=True)
    steps = (np.arange(side) // max(1, side // 8)).astype(np.float32)
    floats = np.broadcast_to(steps[None, :] / 8, (side, side))
    out = {"float.tif": folder / "float.tif", "deep16.png": folder / "deep16.png"}
    Image.fromarray(np.ascontiguousarray(floats), "F").save(out["float.tif"],
                                                            compression="tiff_adobe_deflate")
    ramp = (steps * 8000).astype(np.uint16)
    Image.fromarray(np.ascontiguousarray(np.broadcast_to(ramp[None, :], (side, side)))).save(
        out["deep16.png"])
    return out
