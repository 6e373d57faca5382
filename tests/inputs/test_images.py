"""clipsift.inputs.images: every awkward image a collection holds opens as RGB or fails typed."""

from __future__ import annotations

import io
import os
import random
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from clipsift.errors import ImageError
from clipsift.inputs.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    decode_image,
    image_size_of,
    open_image,
    to_rgb,
)
from tests.support.helpers import extract_photos

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height 1-bit pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


def close_to(pixel: tuple[int, ...], colour: tuple[int, int, int], tol: int = 40) -> bool:
    return all(abs(int(a) - b) <= tol for a, b in zip(pixel, colour, strict=True))


def two_frames(path: Path, fmt: str, **kw) -> None:
    frames = [Image.new("RGB", (32, 24), RED), Image.new("RGB", (32, 24), BLUE)]
    frames[0].save(path, fmt, save_all=True, append_images=frames[1:], **kw)


# ---- orientation and modes ---------------------------------------------------------------
def test_exif_orientation_rotates_pixels(tmp_path: Path) -> None:
    stored = Image.new("RGB", (60, 40), RED)
    stored.paste(BLUE, (30, 0, 60, 40))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # display = stored rotated 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    stored.save(path, "JPEG", exif=exif, quality=95)

    decoded = decode_image(path)
    im = decoded.image
    assert im.mode == "RGB" and im.size == (40, 60)
    assert (decoded.width, decoded.height) == (40, 60)
    assert image_size_of(path) == (40, 60)
    assert close_to(im.getpixel((20, 5)), RED)  # the left edge is now at the top
    assert close_to(im.getpixel((20, 55)), BLUE)


def test_palette_with_transparency_goes_on_white(tmp_path: Path) -> None:
    im = Image.new("P", (20, 20), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (0, 0, 10, 20))
    path = tmp_path / "palette.png"
    im.save(path, transparency=0)
    out = open_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((5, 5)) == RED
    assert out.getpixel((15, 5)) == (255, 255, 255)  # transparent index -> white, not black


def half_transparent() -> Image.Image:
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    rgba.paste((200, 0, 0, 255), (0, 0, 10, 20))
    return rgba


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_composited_on_white(tmp_path: Path, mode: str) -> None:
    path = tmp_path / f"alpha-{mode}.png"
    half_transparent().convert(mode).save(path)
    out = open_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((15, 10)) == (255, 255, 255)
    assert out.getpixel((5, 10)) != (255, 255, 255)


@pytest.mark.parametrize("mode", ["PA", "RGBa", "La"])
def test_other_alpha_modes_in_memory(mode: str) -> None:
    im = half_transparent().convert("LA" if mode == "La" else mode)
    out = to_rgb(im.convert(mode))
    assert out.mode == "RGB"
    assert out.getpixel((15, 10)) == (255, 255, 255)
    assert out.getpixel((5, 10)) != (255, 255, 255)


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(path, "JPEG", quality=95)
    with Image.open(path) as raw:
        assert raw.mode == "CMYK"
    out = open_image(path)
    assert out.mode == "RGB"
    assert close_to(out.getpixel((16, 16)), RED, tol=60)


def test_16bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 128 * 64).reshape(64, 128).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as raw:
        assert raw.mode.startswith("I")
    arr = np.asarray(open_image(path))
    assert arr.min() <= 2 and arr.max() >= 253
    assert 100 < arr.mean() < 155  # a ramp, not all-white (clipped) nor all-black
    assert (arr[0, 0] == 0).all() and (arr[-1, -1] == 255).all()


def test_int32_and_float_modes() -> None:
    ramp16 = np.linspace(0, 65535, 256).reshape(16, 16).astype(np.int32)
    out = np.asarray(to_rgb(Image.fromarray(ramp16, "I")))
    assert out.min() == 0 and out.max() == 255

    unit = np.linspace(0, 1, 256).reshape(16, 16).astype(np.float32)
    out = np.asarray(to_rgb(Image.fromarray(unit, "F")))
    assert out.min() == 0 and out.max() == 255

    wild = np.linspace(-5, 5, 256).reshape(16, 16).astype(np.float32)
    wild[0, 0] = np.nan
    out = np.asarray(to_rgb(Image.fromarray(wild, "F")))
    assert out.max() == 255 and 100 < out.mean() < 155


def test_float_tiff(tmp_path: Path) -> None:
    unit = np.linspace(0, 1, 32 * 32).reshape(32, 32).astype(np.float32)
    path = tmp_path / "float.tif"
    Image.fromarray(unit, "F").save(path)
    arr = np.asarray(open_image(path))
    assert arr.min() == 0 and arr.max() == 255


@pytest.mark.parametrize("mode", ["L", "1"])
def test_greyscale_and_bilevel(tmp_path: Path, mode: str) -> None:
    im = Image.new("L", (16, 16), 0)
    im.paste(255, (8, 0, 16, 16))
    path = tmp_path / f"grey-{mode}.png"
    im.convert(mode).save(path)
    out = open_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((2, 2)) == (0, 0, 0) and out.getpixel((12, 2)) == (255, 255, 255)


# ---- animations, pages, formats ----------------------------------------------------------
def test_animated_gif_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.gif"
    two_frames(path, "GIF", duration=100, loop=0)
    assert close_to(open_image(path).getpixel((5, 5)), RED)


@pytest.mark.skipif(not features.check("webp"), reason="no WebP support")
def test_animated_webp_first_frame(tmp_path: Path) -> None:
    path = tmp_path / "anim.webp"
    two_frames(path, "WEBP", duration=100, loop=0, lossless=True)
    with Image.open(path) as raw:
        assert getattr(raw, "n_frames", 1) == 2
    assert close_to(open_image(path).getpixel((5, 5)), RED)


def test_multipage_tiff_first_page(tmp_path: Path) -> None:
    path = tmp_path / "pages.tiff"
    two_frames(path, "TIFF")
    assert close_to(open_image(path).getpixel((5, 5)), RED, tol=0)


def test_heic(tmp_path: Path) -> None:
    pillow_heif = pytest.importorskip("pillow_heif")
    path = tmp_path / "photo.heic"
    try:
        pillow_heif.from_pillow(Image.new("RGB", (64, 48), RED)).save(path, quality=90)
    except Exception as exc:  # a build without an HEVC encoder
        pytest.skip(f"pillow-heif cannot write HEIC here: {exc}")
    assert ".heic" in IMAGE_EXTENSIONS
    out = open_image(path)
    assert out.mode == "RGB" and out.size == (64, 48)
    assert close_to(out.getpixel((32, 24)), RED)
    assert image_size_of(path) == (64, 48)


@pytest.mark.skipif(not features.check("avif"), reason="no AVIF support")
def test_avif(tmp_path: Path) -> None:
    path = tmp_path / "photo.avif"
    Image.new("RGB", (64, 48), BLUE).save(path, "AVIF", quality=90)
    assert ".avif" in IMAGE_EXTENSIONS
    assert close_to(open_image(path).getpixel((32, 24)), BLUE)


def test_extensions_are_lower_case_with_dot() -> None:
    assert {".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert all(e.startswith(".") and e == e.lower() for e in IMAGE_EXTENSIONS)


# ---- decompression bombs -----------------------------------------------------------------
def test_bomb_beyond_pillow_limit_rejected_fast(tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(bomb_png(100_000, 100_000))
    start = time.perf_counter()
    with pytest.raises(ImageError) as err:
        open_image(path)
    assert time.perf_counter() - start < 1.0
    assert err.value.reason.startswith("decompression bomb: 10000000000 pixels exceeds limit")


def test_bomb_cap_checked_on_header_before_decoding(tmp_path: Path) -> None:
    # 150 M pixels: under Pillow's hard limit, so only clipsift's own header check stops it.
    path = tmp_path / "bomb2.png"
    path.write_bytes(bomb_png(15_000, 10_000))
    start = time.perf_counter()
    with warnings.catch_warnings(), pytest.raises(ImageError) as err:
        warnings.simplefilter("error")  # Pillow's soft warning must not leak out
        open_image(path, max_pixels=100_000_000)
    assert time.perf_counter() - start < 1.0
    assert err.value.reason == (
        "decompression bomb: 15000x10000 = 150000000 pixels exceeds limit 100000000"
    )


def test_max_pixels_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "small.png"
    Image.new("RGB", (64, 48)).save(path)
    assert MAX_PIXELS == 178_956_970
    with pytest.raises(ImageError, match=r"64x48 = 3072 pixels exceeds limit 1000"):
        open_image(path, max_pixels=1000)
    assert open_image(path, max_pixels=3072).size == (64, 48)


# ---- bad files -----------------------------------------------------------------------------
def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match="empty file") as err:
        open_image(path)
    assert err.value.source == str(path)
    with pytest.raises(ImageError, match="empty"):
        open_image(b"")


def test_truncated_jpeg_raises(tmp_path: Path) -> None:
    photo = extract_photos(tmp_path, 1)[0]
    data = photo.read_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        open_image(path)


def test_text_named_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are my holiday notes, not a photo\n")
    with pytest.raises(ImageError, match="text"):
        open_image(path)


def test_garbage_bytes() -> None:
    with pytest.raises(ImageError, match="not a recognised image"):
        open_image(bytes(range(256)) * 4, name="junk.bin")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="file not found"):
        open_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match="is a directory"):
        open_image(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(path)
    path.chmod(0)
    try:
        with pytest.raises(ImageError, match="permission denied"):
            open_image(path)
    finally:
        path.chmod(0o644)


def test_corrupt_files_never_raise_raw_exceptions(tmp_path: Path) -> None:
    photo = extract_photos(tmp_path, 1)[0].read_bytes()
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, "PNG")
    rng = random.Random(0)
    for original in (photo, buf.getvalue()):
        for _ in range(40):
            data = bytearray(original)
            for _ in range(rng.randint(1, 20)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            cut = len(data) if rng.random() < 0.5 else rng.randrange(1, len(data))
            try:
                im = open_image(bytes(data[:cut]), draft_size=64)
            except ImageError as exc:
                assert exc.reason
            else:
                assert im.mode == "RGB"


# ---- names, sources, draft -----------------------------------------------------------------
def test_non_utf8_file_name(tmp_path: Path) -> None:
    raw = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), BLUE).save(buf, "JPEG")
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, buf.getvalue())
    os.close(fd)
    name = os.fsdecode(raw)  # surrogate-escaped str, as os.listdir returns it
    assert open_image(name).size == (20, 10)
    assert image_size_of(name) == (20, 10)


def test_bytes_and_stream_sources() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (20, 10), RED).save(buf, "PNG")
    assert open_image(buf.getvalue()).size == (20, 10)
    buf.seek(0)
    assert open_image(buf).getpixel((1, 1)) == RED
    assert not buf.closed


def test_jpeg_draft_decodes_reduced_but_not_below_target(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)
    Image.fromarray(noise).resize((4000, 3000)).save(path, quality=80)
    decoded = decode_image(path, draft_size=224)
    w, h = decoded.image.size
    assert min(w, h) >= 224 and w <= 1000
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert min(decode_image(path, draft_size=1000).image.size) >= 1000
    assert open_image(path).size == (4000, 3000)


def test_real_photos_open(tmp_path: Path) -> None:
    for path in extract_photos(tmp_path, 5):
        full = image_size_of(path)
        decoded = decode_image(path, draft_size=224)
        assert decoded.image.mode == "RGB"
        assert (decoded.width, decoded.height) == full
        assert min(decoded.image.size) >= min(224, *full)
