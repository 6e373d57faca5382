"""Photo-like training pairs and background photos for ``mini`` (used by prepare_data.py).

Clip art and emoji alone teach little about photographs, the domain of the zero-shot tests.
These Debian packages add cut-out photos, photos, realistic renders and landscape textures:

- ``tuxpaint-stamps-default``: Tux Paint stamps, mostly cut-out photos of animals, vehicles,
  food and objects, each with a one-sentence English description (``NAME.txt``);
- ``gcompris-qt-data``: photos of GCompris activities (farm and world animals, vocabulary
  words, monuments, renewable energy, tools, fish), named by their file names, read out of
  the Qt resource (.rcc) bundles;
- ``0ad-data``: 0 A.D. unit portraits (animals, ships, cavalry, plants): realistic renders;
  its terrain and sky textures, and ``mate-backgrounds`` nature photos, become the background
  photos that training puts under transparent images (``clipsift train --backgrounds``).
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from PIL import Image

TUXPAINT = "usr/share/tuxpaint/stamps"
GCOMPRIS_RCC = "usr/share/gcompris-qt/rcc"
ZEROAD_ZIP = "usr/share/games/0ad/mods/public/public.zip"
MATE_NATURE = "usr/share/backgrounds/mate/nature"
GCOMPRIS_BUNDLES = ("lang", "explore_farm_animals", "explore_world_animals", "categorization")
GCOMPRIS_SKIP = ("alphabets", "numbers")  # pictures of text
ZEROAD_PORTRAITS = "art/textures/ui/session/portraits/"
CIVS = frozenset(  # civilisation prefixes of unit names
    {"athen", "brit", "cart", "celt", "gaul", "han", "hele", "iber", "kush", "mace", "maur"}
    | {"pers", "ptol", "rome", "sele", "spart"}
)
BACKGROUND_SIDE = 256

Row = Callable[..., dict]


# --- captions -------------------------------------------------------------------------------------
def words(name: str) -> str:
    """``explore_farm_animals/polar_bear`` -> ``polar bear``; ``leaningTowerOfPisa`` -> ``leaning
    tower of pisa``; trailing digits and variant suffixes go."""
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name.rsplit("/", 1)[-1])
    name = re.sub(r"[_\-]+", " ", name)
    name = re.sub(r"\s*\d+[a-z]?$|\s+\d+\b", "", name).strip().lower()
    return re.sub(r"\s+", " ", name)


DETERMINERS = frozenset(
    {"a", "an", "the", "our", "your", "his", "her", "its", "their", "some", "two", "three", "many"}
)


def article(phrase: str) -> str:
    if not phrase or phrase.split()[0].lower() in DETERMINERS:
        return phrase
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def photo_captions(name: str, kind: str, extra: str = "") -> list[str]:
    """Caption variants for a photo-like image of ``name`` (``kind``: photo, picture, render)."""
    caps = [name, f"{kind} of {article(name)}", f"{article(name)}."]
    if extra and extra != name:
        caps.append(f"{kind} of {article(name)}, {extra}")
    return list(dict.fromkeys(caps))


# --- images -------------------------------------------------------------------------------------
def save_image(img: Image.Image, dst: Path, max_side: int, keep_alpha: bool) -> bool:
    """Crop to the visible part (transparent images), shrink to ``max_side``, save as PNG."""
    img = img.convert("RGBA")
    box = img.getchannel("A").getbbox()
    if box is None:
        return False
    img = img.crop(box)
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if not keep_alpha or img.getchannel("A").getextrema() == (255, 255):
        img = img.convert("RGB")
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst)
    return True


# --- Tux Paint ----------------------------------------------------------------------------------
def tuxpaint_description(txt: Path) -> str:
    """The English description (the first line): ``A sports car.`` -> ``a sports car``."""
    if not txt.exists():
        return ""
    first = txt.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
    text = first[0].strip().rstrip(".!").strip() if first else ""
    return text[0].lower() + text[1:] if text else ""


def tuxpaint_rows(root: Path, images: Path, row: Row, max_side: int) -> list[dict]:
    base = root / TUXPAINT
    rows = []
    for png in sorted(base.rglob("*.png")):
        rel = png.relative_to(base)
        folders = [f for f in rel.parent.parts if f != "cartoon"]
        cartoon = "cartoon" in rel.parent.parts
        desc = tuxpaint_description(png.with_suffix(".txt")) or article(words(png.stem))
        dst = images / "tuxpaint" / rel
        with Image.open(png) as im:
            if not save_image(im, dst, max_side, keep_alpha=True):
                continue
        short = re.sub(r"^(a|an|the|some|our)\s+", "", desc)
        name = short if len(short.split()) <= 5 and not re.search(r"[()“”\"]", short) \
            else words(png.stem)
        if not name:
            continue
        topic = ", ".join(words(f) for f in reversed(folders[-2:]))
        caps = photo_captions(name, "a cartoon" if cartoon else "a picture", topic)
        caps.append(re.sub(r"\s*\(.*?\)", "", desc)[:120])
        for caption in dict.fromkeys(caps):
            rows.append(row(dst, caption, f"tuxpaint/{rel.with_suffix('')}", "tuxpaint"))
    return rows


# --- GCompris (Qt resource bundles) -------------------------------------------------------------
def rcc_files(path: Path) -> Iterator[tuple[str, bytes]]:
    """(path, bytes) of every file in a Qt binary resource bundle (format versions 1-3)."""
    blob = path.read_bytes()
    if blob[:4] != b"qres":
        raise ValueError(f"{path} is not a Qt resource bundle")
    version, tree, data, names = struct.unpack(">IIII", blob[4:20])
    entry = 22 if version >= 2 else 14

    def name_at(offset: int) -> str:
        (n,) = struct.unpack(">H", blob[names + offset : names + offset + 2])
        return blob[names + offset + 6 : names + offset + 6 + 2 * n].decode("utf-16-be")

    stack = [(0, "")]
    while stack:
        index, prefix = stack.pop()
        at = tree + index * entry
        name_off, flags = struct.unpack(">IH", blob[at : at + 6])
        name = name_at(name_off) if index else ""
        if flags & 2:  # a directory: child count, first child index
            count, first = struct.unpack(">II", blob[at + 6 : at + 14])
            stack.extend((i, f"{prefix}{name}/") for i in range(first, first + count))
            continue
        (offset,) = struct.unpack(">I", blob[at + 10 : at + 14])
        (size,) = struct.unpack(">I", blob[data + offset : data + offset + 4])
        payload = blob[data + offset + 4 : data + offset + 4 + size]
        if flags & 1:  # zlib, after a 4-byte uncompressed size
            payload = zlib.decompress(payload[4:])
        elif flags & 4:  # zstd: not used by these bundles' images
            continue
        yield prefix + name, payload


def gcompris_rows(root: Path, images: Path, row: Row, max_side: int) -> list[dict]:
    rows = []
    for bundle in GCOMPRIS_BUNDLES:
        for member, payload in sorted(rcc_files(root / GCOMPRIS_RCC / f"{bundle}.rcc")):
            if not member.endswith(".webp") or any(s in member for s in GCOMPRIS_SKIP):
                continue
            rel = member.split("/resource/", 1)[-1].rsplit(".", 1)[0]
            parts = rel.split("/")
            name = words(parts[-1])
            category = words(parts[-2]) if len(parts) > 1 else ""
            if category in ("fishes",):
                name = "fish"
            dst = images / "gcompris" / bundle / f"{rel}.png"
            with Image.open(io.BytesIO(payload)) as im:
                if not name or not save_image(im, dst, max_side, keep_alpha=True):
                    continue
            extra = "" if category in ("animals", "words sample", "image", "images") else category
            for caption in photo_captions(name, "a photo", extra):
                rows.append(row(dst, caption, f"gcompris/{bundle}/{rel}", "gcompris"))
    return rows


# --- 0 A.D. -------------------------------------------------------------------------------------
def zeroad_name(stem: str) -> str:
    """``fauna_bear_brown`` -> ``brown bear``; ``athen_ship_trireme`` -> ``trireme ship``;
    ``cart_cavalry_spearman`` -> ``cavalry spearman on a horse``."""
    tokens = [t for t in stem.split("_") if t and not t.isdigit()]
    if tokens and tokens[0] in CIVS:
        tokens = tokens[1:]
    kind, rest = (tokens[0], tokens[1:]) if tokens else ("", [])
    if kind in ("fauna", "flora"):
        return " ".join(reversed(rest)) if len(rest) == 2 else " ".join(rest)
    if kind == "ship":
        return f"{' '.join(rest)} ship" if rest else "ship"
    if kind == "cavalry" or "cavalry" in tokens:
        return f"{' '.join(t for t in tokens if t != 'champion')} on a horse"
    return " ".join(tokens)


def zeroad_rows(root: Path, images: Path, row: Row, max_side: int) -> list[dict]:
    rows = []
    with zipfile.ZipFile(root / ZEROAD_ZIP) as z:
        for member in sorted(z.namelist()):
            if not (member.startswith(ZEROAD_PORTRAITS) and member.endswith(".dds")):
                continue
            stem = member.rsplit("/", 1)[-1].split(".", 1)[0]
            tokens = stem.split("_")
            unit = len(tokens) > 2 and tokens[0] in CIVS and tokens[1] in ("ship", "cavalry")
            if not (unit or tokens[0] in ("fauna", "flora")):
                continue  # buildings, technologies, infantry, emblems
            name = words(zeroad_name(stem))
            dst = images / "0ad" / f"{stem}.png"
            with Image.open(io.BytesIO(z.read(member))) as im:
                if not name or not save_image(im, dst, max_side, keep_alpha=False):
                    continue
            for caption in photo_captions(name, "a painting", ""):
                rows.append(row(dst, caption, f"0ad/{stem}", "0ad"))
    return rows


# --- background photos ------------------------------------------------------------------------
def save_background(im: Image.Image, dst: Path) -> None:
    """A background photo as RGB JPEG, shrunk to at most BACKGROUND_SIDE px."""
    im = im.convert("RGB")
    im.thumbnail((BACKGROUND_SIDE, BACKGROUND_SIDE), Image.Resampling.LANCZOS)
    im.save(dst, quality=90)


def write_backgrounds(root: Path, out: Path) -> int:
    """0 A.D. terrain and sky textures and MATE nature photos, at most 256 px, as JPEG."""
    out.mkdir(parents=True, exist_ok=True)
    count = 0

    def put(name: str, im: Image.Image) -> None:
        nonlocal count
        save_background(im, out / f"{name}.jpg")
        count += 1

    with zipfile.ZipFile(root / ZEROAD_ZIP) as z:
        for member in sorted(z.namelist()):
            terrain = member.startswith("art/textures/terrain/types/")
            sky = member.startswith("art/textures/skies/") and "/top." not in member
            if (terrain or sky) and member.endswith(".dds") and "_norm" not in member \
                    and "_spec" not in member:
                stem = member.split("/textures/", 1)[1].split(".", 1)[0].replace("/", "_")
                with Image.open(io.BytesIO(z.read(member))) as im:
                    if sky:  # the side of a sky box: sky above, a dark floor below
                        im = im.crop((0, 0, im.width, im.height // 2))
                    put(f"0ad_{stem}", im)
    for photo in sorted((root / MATE_NATURE).glob("*.jpg")):
        with Image.open(photo) as im:
            im.draft("RGB", (BACKGROUND_SIDE * 2, BACKGROUND_SIDE * 2))
            put(f"mate_{photo.stem}", im)
    return count
