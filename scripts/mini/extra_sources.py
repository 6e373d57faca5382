"""More captioned pictures for ``mini`` from two educational programs (used by prepare_data.py).

- ``scratch`` (Scratch 1.4): its media library's sprite costumes (animals, people, vehicles,
  things; cartoons and a few cut-out photos), named by file, and its stage backgrounds,
  mostly photographs of places (a beach, a canyon, a kitchen, train tracks). The
  photographs also join the background photos put under transparent training images.
- ``pysiogame`` (eduActiv8): the Art4Apps word pictures (animals, food, jobs, transport,
  actions...), with the program's word lists in several languages for captions.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

from photo_sources import photo_captions, save_background, save_image, words
from PIL import Image

SCRATCH = "usr/share/scratch/Media"
SCRATCH_SKIP = ("Letters",)  # pictures of text
PYSIOGAME = "usr/share/games/pysiogame"
A4A_IMAGES = f"{PYSIOGAME}/res/images/art4apps"
A4A_WORDS = f"{PYSIOGAME}/i18n/custom/a4a_words.py"
A4A_LANGS = f"{PYSIOGAME}/i18n/custom/a4a_py"
IMAGE_EXTS = frozenset({".png", ".gif", ".jpg", ".jpeg"})

Row = Callable[..., dict]


def scratch_name(stem: str) -> str:
    """``dog2-c`` -> ``dog``; ``city-with-water2`` -> ``city with water``."""
    return words(re.sub(r"\d*(-[a-z])?$", "", stem))


def _scratch_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS
                  and p.is_file() and not p.is_symlink())


def scratch_rows(root: Path, images: Path, row: Row, max_side: int) -> list[dict]:
    """Costumes (a cartoon / a picture of NAME, with their folder) and stage backgrounds (a
    photo of NAME for JPEGs, which are photographs; GIFs are drawings)."""
    rows = []
    for kind in ("Costumes", "Backgrounds"):
        base = root / SCRATCH / kind
        for path in _scratch_files(base):
            rel = path.relative_to(base)
            if any(s in rel.parts for s in SCRATCH_SKIP) or not (name := scratch_name(path.stem)):
                continue
            dst = images / "scratch" / kind.lower() / rel.with_suffix(".png")
            with Image.open(path) as im:
                if not save_image(im, dst, max_side, keep_alpha=kind == "Costumes"):
                    continue
            photo = kind == "Backgrounds" and path.suffix.lower() == ".jpg"
            topic = words(rel.parts[0]) if len(rel.parts) > 1 else ""
            label = "a photo" if photo else "a picture"
            for caption in photo_captions(name, label, topic):
                rows.append(row(dst, caption, f"scratch/{kind.lower()}/{rel.with_suffix('')}",
                                "scratch"))
    return rows


def scratch_backgrounds(root: Path, out: Path) -> int:
    """Scratch's photographed stage backgrounds, at most 256 px, into the backgrounds folder."""
    count = 0
    for path in _scratch_files(root / SCRATCH / "Backgrounds"):
        if path.suffix.lower() != ".jpg":
            continue
        with Image.open(path) as im:
            save_background(im, out / f"scratch_{path.stem}.jpg")
        count += 1
    return count


def word_lists(path: Path) -> dict[str, list[str]]:
    """The ``d["key"] = [words]`` assignments of an eduActiv8 word-list module, read as data
    (the module is parsed, never run)."""
    found: dict[str, list[str]] = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if not (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)):
            continue
        key = node.targets[0].slice
        if isinstance(key, ast.Constant) and isinstance(node.value, ast.List):
            values = ast.literal_eval(node.value)
            found[str(key.value)] = [v if isinstance(v, str) else "" for v in values]
    return found


def art4apps_rows(root: Path, images: Path, row: Row, max_side: int,
                  langs: list[str]) -> list[dict]:
    """Art4Apps pictures named by eduActiv8's word lists: English from the file names' list,
    other languages (those of `langs` that eduActiv8 has) from the translated lists."""
    names = word_lists(root / A4A_WORDS)
    translated = {lang: word_lists(p) for lang in langs if lang != "en"
                  for p in [root / A4A_LANGS / f"{lang}.py"] if p.exists()}
    rows = []
    for key, stems in sorted(names.items()):
        folder = root / A4A_IMAGES / key.removeprefix("a4a_")
        for i, stem in enumerate(stems):
            src = folder / f"{stem.replace(' ', '_')}.jpg"
            if not src.exists():
                continue
            dst = images / "art4apps" / key / f"{src.stem}.png"
            with Image.open(src) as im:
                if not save_image(im, dst, max_side, keep_alpha=False):
                    continue
            group = f"art4apps/{key}/{src.stem}"
            topic = words(key.removeprefix("a4a_").replace("_n_", " and "))
            for caption in photo_captions(words(stem), "a drawing", topic):
                rows.append(row(dst, caption, group, "art4apps"))
            for lang, lists in translated.items():
                word = lists.get(key, [])[i] if i < len(lists.get(key, [])) else ""
                if word.strip():
                    rows.append(row(dst, word.strip(), group, "art4apps", lang))
    return rows

