"""Rendered animal, ship and vehicle sprites of two games (`prepare_data.py --game-sprites`).

- ``widelands-data`` (Widelands): its wild animals (deer, stag, reindeer, moose, wolf, fox,
  lynx, bear, boar, sheep...), the tribes' beasts of burden (horse, ox, donkey, reindeer,
  tapir) and ships, pre-rendered from 3D models: sprite sheets of walking / sailing
  animations in six directions, 40-300 px per frame. A few frames of each animation, so
  every animal is seen from every side.
- ``freeciv-data`` (Freeciv): the units of the ``amplio2`` tile set, 64x48 renders and
  paintings of aircraft, warships, sailing ships, tanks, a truck and mounted soldiers.

They are the closest thing to photos of animals and vehicles in Debian, and they are small,
like the zero-shot tests' 32 px CIFAR-10 photos. Captions name the thing and, where a
zero-shot class word applies by plain meaning, what kind of thing it is (a stag is a deer,
a duck is a bird, a bomber is an airplane).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

from photo_sources import article, save_image, words
from PIL import Image

WIDELANDS = "usr/share/games/widelands/data"
FREECIV = "usr/share/games/freeciv"
FREECIV_SHEETS = ("amplio2/units.spec", "amplio2/extra_units.spec")
DIRECTIONS = ("e", "ne", "nw", "se", "sw", "w")
ANIMATIONS = ("idle", "walk", "sail")
FRAMES_PER_ANIMATION = 4
MIN_SIDE = 12  # smaller sprites (the duck and bunny frames: 5-10 px) are too small to learn from

# What kind of thing a name is, when that is worth saying (None: the name says it all).
WIDELANDS_KIND = {
    "stag": "deer", "reindeer": "deer", "moose": "deer", "deer": "deer",
    "chamois": "wild goat", "wisent": "bison", "lynx": "wild cat", "wolf": "wild dog",
    "fox": "wild animal", "badger": "wild animal", "marten": "wild animal",
    "wild boar": "wild pig", "brown bear": "bear", "ox": "bull", "tapir": "wild animal",
    "ship": "sailing ship", "horse": "horse", "donkey": "donkey", "sheep": "sheep",
}
FREECIV_UNITS = {  # tag -> (name, kind); units of people on foot are left out
    "armor": ("tank", "armoured vehicle"), "mech_inf": ("armoured personnel carrier", "tank"),
    "howitzer": ("howitzer", "artillery gun"), "artillery": ("artillery gun", "cannon"),
    "cannon": ("cannon", ""), "catapult": ("catapult", ""),
    "freight": ("truck", "lorry"), "engineers": ("bulldozer", "construction vehicle"),
    "settlers": ("covered wagon", "ox cart"), "caravan": ("camel caravan", "camel"),
    "bomber": ("bomber", "airplane"), "fighter": ("fighter plane", "airplane"),
    "stealth_bomber": ("stealth bomber", "airplane"),
    "stealth_fighter": ("stealth fighter jet", "airplane"),
    "awacs": ("awacs radar plane", "airplane"), "helicopter": ("helicopter", "aircraft"),
    "battleship": ("battleship", "ship"), "cruiser": ("cruiser", "ship"),
    "aegis_cruiser": ("aegis cruiser", "ship"), "destroyer": ("destroyer", "ship"),
    "carrier": ("aircraft carrier", "ship"), "submarine": ("submarine", "ship"),
    "transport": ("transport ship", "ship"), "ironclad": ("ironclad steamship", "ship"),
    "frigate": ("frigate", "sailing ship"), "galleon": ("galleon", "sailing ship"),
    "caravel": ("caravel", "sailing ship"), "trireme": ("trireme", "ship"),
    "longboat": ("longboat", "boat"), "rowboat": ("rowboat", "boat"),
    "dredger": ("dredger", "ship"), "balloon": ("hot air balloon", "aircraft"),
    "zeppelin": ("zeppelin", "airship"), "horsemen": ("horseman", "man riding a horse"),
    "knights": ("knight on horseback", "horse"), "cavalry": ("cavalry soldier", "horse"),
    "dragoons": ("dragoon", "soldier riding a horse"), "chariot": ("chariot", "horse-drawn cart"),
    "crusaders": ("crusader on horseback", "horse"), "elephants": ("war elephant", "elephant"),
    "lion": ("lion", "big cat"),
}

Row = Callable[..., dict]


def sprite_captions(name: str, kind: str | None) -> list[str]:
    """``stag`` + ``deer`` -> stag, a picture of a stag, a stag., a picture of a stag, a deer."""
    caps = [name, f"a picture of {article(name)}", f"{article(name)}."]
    if kind and kind != name:
        caps += [f"a picture of {article(name)}, {article(kind)}", f"{article(kind)}."]
    return list(dict.fromkeys(caps))


# --- Widelands ------------------------------------------------------------------------------------
def lua_block(text: str, key: str) -> str:
    """The text inside the braces of ``key = { ... }`` (braces balanced), or ''."""
    match = re.search(rf"\b{re.escape(key)}\s*=\s*\{{", text)
    if not match:
        return ""
    depth, start = 1, match.end()
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return ""


def lua_code(text: str) -> str:
    """Lua source without its ``--`` comments (which document fields with example values)."""
    return re.sub(r"--[^\n]*", "", text)


def descname(text: str) -> str:
    """``descname = pgettext("atlanteans_worker", "Horse")`` -> ``horse``."""
    text = lua_code(text)
    match = re.search(r'\bdescname\s*=\s*(?:_|pgettext)\s*\(\s*(?:"[^"]*"\s*,\s*)?"([^"]+)"', text)
    return match.group(1).lower() if match else ""


def spritesheets(init_lua: str) -> dict[str, dict[str, int | bool]]:
    """Animation name -> frames, rows, columns, directional of an ``init.lua``'s spritesheets."""
    block, sheets = lua_block(lua_code(init_lua), "spritesheets"), {}
    for anim in ANIMATIONS:
        body = lua_block(block, anim)
        numbers = {k: int(v) for k, v in re.findall(r"\b(frames|rows|columns)\s*=\s*(\d+)", body)}
        if {"frames", "rows", "columns"} <= numbers.keys():
            sheets[anim] = {**numbers, "directional": bool(re.search(r"directional\s*=\s*true",
                                                                      body))}
    return sheets


def sheet_frames(sheet: Image.Image, spec: dict, count: int) -> Iterator[tuple[int, Image.Image]]:
    """``count`` evenly spaced frames (index, image) of a row-major sprite sheet."""
    width, height = sheet.width // spec["columns"], sheet.height // spec["rows"]
    step = max(1, spec["frames"] // count)
    for index in range(0, spec["frames"], step)[:count]:
        row, col = divmod(index, spec["columns"])
        yield index, sheet.crop((col * width, row * height, (col + 1) * width, (row + 1) * height))


def sheet_files(folder: Path, anim: str, directional: bool) -> Iterator[tuple[str, Path]]:
    """(direction or '', file) of an animation at scale 1 (``walk_e_1.png`` or ``idle.png``)."""
    for direction in DIRECTIONS if directional else ("",):
        stem = f"{anim}_{direction}" if direction else anim
        for name in (f"{stem}_1.png", f"{stem}.png"):
            if (folder / name).is_file():
                yield direction, folder / name
                break


def widelands_folders(root: Path) -> Iterator[tuple[str, Path]]:
    base = root / WIDELANDS
    for folder in sorted((base / "world" / "critters").glob("*/")):
        yield "critters", folder
    for folder in sorted((base / "tribes" / "ships").glob("*/")):
        yield "ships", folder
    for init in sorted((base / "tribes" / "workers").glob("*/*/init.lua")):
        text = init.read_text(encoding="utf-8")
        if "new_carrier_type" in text and descname(text) not in ("carrier", ""):
            yield "animals", init.parent  # beasts of burden (the human carriers are left out)


def widelands_rows(root: Path, images: Path, row: Row, max_side: int) -> list[dict]:
    rows = []
    for kind, folder in widelands_folders(root):
        text = (folder / "init.lua").read_text(encoding="utf-8")
        name = words(descname(text))
        group = f"widelands/{kind}/{folder.name}"
        for anim, spec in spritesheets(text).items():
            for direction, path in sheet_files(folder, anim, bool(spec["directional"])):
                with Image.open(path) as im:
                    sheet = im.convert("RGBA")
                for index, frame in sheet_frames(sheet, spec, FRAMES_PER_ANIMATION):
                    box = frame.getchannel("A").getbbox()
                    if box is None or min(box[2] - box[0], box[3] - box[1]) < MIN_SIDE:
                        continue
                    dst = images / group / f"{anim}_{direction or 'x'}_{index:02d}.png"
                    if not save_image(frame, dst, max_side, keep_alpha=True):
                        continue
                    for caption in sprite_captions(name, WIDELANDS_KIND.get(name)):
                        rows.append(row(dst, caption, group, "widelands"))
    return rows


# --- Freeciv --------------------------------------------------------------------------------------
def freeciv_grid(spec_text: str) -> tuple[dict[str, int], list[tuple[int, int, str]]]:
    """The ``[grid_main]`` geometry and its (row, column, tag) tiles of a tile-set spec file."""
    text = re.sub(r";[^\n]*", "", spec_text)  # comments
    section = text.split("[grid_main]", 1)[-1].split("\n[", 1)[0]
    geometry = {k: int(v) for k, v in re.findall(
        r"\b(x_top_left|y_top_left|dx|dy|pixel_border)\s*=\s*(\d+)", section)}
    tiles = [(int(r), int(c), tag) for r, c, tag in re.findall(
        r'^\s*(\d+)\s*,\s*(\d+)\s*,\s*"([^"]+)"', section, re.MULTILINE)]
    return geometry, tiles


def freeciv_rows(root: Path, images: Path, row: Row, max_side: int) -> list[dict]:
    rows = []
    for spec_name in FREECIV_SHEETS:
        text = (root / FREECIV / spec_name).read_text(encoding="utf-8")
        geometry, tiles = freeciv_grid(text)
        gfx = re.search(r'gfx\s*=\s*"([^"]+)"', text)
        if gfx is None:
            raise ValueError(f"{spec_name}: no gfx = \"...\" line naming its image")
        with Image.open(root / FREECIV / f"{gfx.group(1)}.png") as im:
            sheet = im.convert("RGBA")
        x0, y0 = geometry.get("x_top_left", 0), geometry.get("y_top_left", 0)
        dx, dy, border = geometry["dx"], geometry["dy"], geometry.get("pixel_border", 0)
        for r, c, tag in tiles:
            unit = tag.removeprefix("u.")
            if unit not in FREECIV_UNITS:
                continue
            left, top = x0 + c * (dx + border), y0 + r * (dy + border)
            dst = images / "freeciv" / f"{unit}.png"
            if not save_image(sheet.crop((left, top, left + dx, top + dy)), dst, max_side, True):
                continue
            name, kind = FREECIV_UNITS[unit]
            for caption in sprite_captions(name, kind or None):
                rows.append(row(dst, caption, f"freeciv/{unit}", "freeciv"))
    return rows
