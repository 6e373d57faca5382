"""scripts/mini/photo_sources.py: names, captions, the Qt resource reader, image saving."""

import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from tests.support.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mini" / "photo_sources.py"


@pytest.fixture(scope="module")
def ps():
    yield from load_script(SCRIPT, "mini_photo_sources")


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ("leaningTowerOfPisa", "leaning tower of pisa"),
        ("polar_bear", "polar bear"),
        ("fish27", "fish"),
        ("animals/scarlet_macaw", "scarlet macaw"),
        ("tiger-2", "tiger"),
        ("measuringTape1", "measuring tape"),
    ],
)
def test_words(ps, raw, name):
    assert ps.words(raw) == name


@pytest.mark.parametrize(
    ("stem", "name"),
    [
        ("fauna_bear_brown", "brown bear"),
        ("fauna_deer", "deer"),
        ("athen_ship_trireme", "trireme ship"),
        ("cart_cavalry_spearman", "cavalry spearman on a horse"),
        ("cart_champion_cavalry", "cavalry on a horse"),
    ],
)
def test_zeroad_name(ps, stem, name):
    assert ps.zeroad_name(stem) == name


def test_photo_captions_and_articles(ps):
    assert ps.photo_captions("owl", "a photo", "birds") == [
        "owl", "a photo of an owl", "an owl.", "a photo of an owl, birds"]
    assert ps.article("our moon") == "our moon" and ps.article("") == ""


def test_tuxpaint_description(ps, tmp_path):
    txt = tmp_path / "truck.txt"
    txt.write_text("A pickup truck.\nde.utf8=Ein Pick-up.\n", encoding="utf-8")
    assert ps.tuxpaint_description(txt) == "a pickup truck"
    assert ps.tuxpaint_description(tmp_path / "missing.txt") == ""


def _qres(files: dict[str, tuple[bytes, bool]]) -> bytes:
    """A version-1 Qt resource bundle with one folder `res` holding `files` (name ->
    (payload, zlib-compressed?)), laid out as Qt's rcc writes it."""
    names, name_offsets = b"", {}
    for name in ["res", *files]:
        name_offsets[name] = len(names)
        encoded = name.encode("utf-16-be")
        names += struct.pack(">HI", len(name), 0) + encoded
    data, data_offsets = b"", {}
    for name, (payload, compressed) in files.items():
        stored = struct.pack(">I", len(payload)) + zlib.compress(payload) if compressed \
            else payload
        data_offsets[name] = len(data)
        data += struct.pack(">I", len(stored)) + stored
    tree = struct.pack(">IHII", 0, 2, 1, 1)  # root: a folder with 1 child at index 1
    tree += struct.pack(">IHII", name_offsets["res"], 2, len(files), 2)
    for name, (_, compressed) in files.items():
        tree += struct.pack(">IHHHI", name_offsets[name], 1 if compressed else 0, 0, 0,
                            data_offsets[name])
    header = 20
    return (b"qres" + struct.pack(">IIII", 1, header, header + len(tree),
                                  header + len(tree) + len(data)) + tree + data + names)


def test_rcc_reader_lists_plain_and_compressed_files(ps, tmp_path):
    bundle = tmp_path / "x.rcc"
    bundle.write_bytes(_qres({"a.txt": (b"hello", False), "b.webp": (b"x" * 300, True)}))
    assert dict(ps.rcc_files(bundle)) == {"/res/a.txt": b"hello", "/res/b.webp": b"x" * 300}
    (tmp_path / "bad.rcc").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a Qt resource bundle"):
        list(ps.rcc_files(tmp_path / "bad.rcc"))


def test_save_image_keeps_transparency_and_crops(ps, tmp_path):
    im = Image.new("RGBA", (300, 200), (0, 0, 0, 0))
    im.paste(Image.new("RGBA", (100, 50), (200, 10, 10, 255)), (20, 30))
    assert ps.save_image(im, tmp_path / "cut.png", 64, keep_alpha=True)
    with Image.open(tmp_path / "cut.png") as out:
        assert out.mode == "RGB" and out.size == (64, 32)  # fully opaque after the crop
    im.putpixel((299, 199), (0, 0, 0, 10))
    assert ps.save_image(im, tmp_path / "cut2.png", 64, keep_alpha=True)
    with Image.open(tmp_path / "cut2.png") as out:
        assert out.mode == "RGBA" and max(out.size) == 64
    assert not ps.save_image(Image.new("RGBA", (9, 9)), tmp_path / "blank.png", 64, True)
