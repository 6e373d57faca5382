#!/usr/bin/env python3
"""Build image-caption pairs for training the bundled ``mini`` CLIP model.

Sources: freely licensed Debian packages (clipsift/assets/mini/PROVENANCE.md), fetched with
``apt-get download`` and unpacked with ``dpkg -x`` into the work folder (nothing is installed):
Open Clip Art Library drawings with their SVG metadata, Noto Color Emoji glyphs and CLDR emoji
annotations, the photo-like sources of photo_sources.py (Tux Paint stamps, GCompris photos,
0 A.D. portraits), those of extra_sources.py (Scratch media, eduActiv8's Art4Apps word
pictures) and, with --game-sprites, game_sprites.py (Widelands animals and ships, Freeciv
units). Writes DIR/images/ (transparency kept, longer side <= 128 px), DIR/pairs.parquet
(image, caption, group, source, lang), DIR/backgrounds/ (background photos for `clipsift
train --backgrounds`) and DIR/sources.json.

    .venv/bin/python scripts/mini/prepare_data.py [--work DIR] [--workers 2] [--game-sprites]
"""

from __future__ import annotations

import argparse
import collections
import functools
import hashlib
import html
import json
import re
import subprocess
import sys
import time
import unicodedata
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Collection
from multiprocessing import Pool
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parent))
import extra_sources
import game_sprites
import photo_sources

PACKAGES = (
    "openclipart-png",
    "openclipart-svg",
    "fonts-noto-color-emoji",
    "unicode-cldr-core",
    "tuxpaint-stamps-default",
    "gcompris-qt-data",
    "0ad-data",
    "mate-backgrounds",
    "scratch",
    "pysiogame",
)
GAME_PACKAGES = ("widelands-data", "freeciv-data")  # --game-sprites only
REPO = Path(__file__).resolve().parents[2]
MAX_SIDE = 128
EMOJI_PX = 109  # the one bitmap strike size of the CBDT font
CLIPART_PNG = "usr/share/openclipart/png"
CLIPART_SVG = "usr/share/openclipart/svg"
EMOJI_FONT = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
CLDR = "usr/share/unicode/cldr/common"

# Generic words and collection labels that say nothing about what is drawn.
_STOP = (
    "hash magick unsorted special icon icons theme action actions application applications "
    "appicon menu mimetypes filesystem filesystems mapsym networksym clipart svg image "
    "picture drawing simple stock misc other untitled unnamed new layer public domain various "
    "cliparts apps mime types gramastar sibmission advertising"
)
STOP_WORDS = frozenset(_STOP.split())
JUNK_PATTERN = re.compile(
    r"collection|theme|clip ?arts? by|part of|https?:|www\.|hash\(|\bsvg\b|\bicon(s| ?sets?)\b|"
    r"converted|inkscape|open clip art|copyright|\blicen[cs]e|\.(png|jpe?g|svg|com|org)\b|@",
    re.IGNORECASE,
)
FREQUENT_TITLE = 20  # a title shared by this many drawings is a collection label


# --- text cleaning --------------------------------------------------------------------------------
def clean_text(text: str) -> str:
    """Lowercased plain words: no markup, underscores, ids or stray punctuation."""
    text = html.unescape(text)
    text = re.sub(r"<[^>]*>", " ", text).replace("_", " ").replace("-", " ")
    text = re.sub(r"(?<=[a-z])(?=[A-Z][a-z])", " ", text)  # camelCase -> camel case
    text = re.sub(r"[^\w\s,.'&]", " ", text)
    words = []
    for word in text.split():
        word = re.sub(r"(?<=[^\W\d])\d+$", "", word.strip(".,'&-"))  # moon01 -> moon
        if word and not any(ch.isdigit() for ch in word):
            words.append(word)
    text = " ".join(words).lower()
    return re.sub(r"\s+([,.])", r"\1", text).strip(" ,.")


def is_junk(text: str) -> bool:
    """True for empty text, collection labels, links and generic words."""
    words = clean_text(text).split()
    if not words or JUNK_PATTERN.search(text):
        return True
    return all(w in STOP_WORDS or len(w) < 2 for w in words)


def title_from_filename(stem: str, creator: str = "") -> str:
    """Title from an openclipart file name such as ``cavallo_architetto_franc_01``.

    The packaged names end with the (truncated) author's name and a number: both go.
    """
    tokens = [t for t in re.split(r"[\W_]+", stem) if t]
    while tokens and re.fullmatch(r"\d+[a-zA-Z]?", tokens[-1]):
        tokens.pop()
    author = clean_text(creator).split()
    while len(tokens) > 1 and any(a.startswith(tokens[-1].lower()) for a in author):
        tokens.pop()
    return clean_text(" ".join(t for t in tokens if len(t) > 1))


def clean_keywords(raw: list[str], drop: Collection[str] = (), limit: int = 8) -> list[str]:
    """Cleaned, de-duplicated keywords in their first order, without junk and ``drop``."""
    out: list[str] = []
    for item in raw:
        for part in re.split(r"[,;/|]", item):
            word = clean_text(part)
            if 2 <= len(word) <= 30 and word not in out and word not in drop and not is_junk(word):
                out.append(word)
    return out[:limit]


def first_sentence(text: str, max_chars: int = 120) -> str:
    """The first sentence of a description, cleaned and cut at a word boundary."""
    text = clean_text(re.split(r"(?<=[.!?])\s", html.unescape(text).strip(), maxsplit=1)[0])
    if len(text) > max_chars:
        text = text[:max_chars].rsplit(" ", 1)[0]
    return text


def with_article(phrase: str, plural_ok: bool = True) -> str:
    """``a horse``, ``an apple``; plurals and phrases that start with an article are kept."""
    first, last = phrase.split()[0], phrase.split()[-1]
    plural = plural_ok and last.endswith("s") and not last.endswith("ss")
    if first in ("a", "an", "the") or plural:
        return phrase
    vowel = phrase[0].lower() in "aeiou" and not phrase.lower().startswith(("eu", "uni", "one"))
    return ("an " if vowel else "a ") + phrase


def unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(i for i in items if i))


def clipart_captions(title: str, keywords: list[str], category: str, description: str) -> list[str]:
    """Caption variants for one drawing."""
    caps = [title, f"clip art of {with_article(title)}"]
    extra = [k for k in keywords if k != title][:5]
    if extra:
        caps.append(f"a drawing of {with_article(title)}, {', '.join(extra)}")
    if category and category != title:
        caps.append(f"{with_article(category, plural_ok=False)} picture: {title}")
    if description and description != title and not is_junk(description):
        caps.append(description)
    return unique(caps)


def emoji_captions(lang: str, tts: str, keywords: list[str], name: str = "") -> list[str]:
    """Caption variants of one emoji in one language (``name``: the Unicode name, English)."""
    kws = [k for k in keywords if k.lower() != tts.lower()][:6]
    if all(k.lower() in tts.lower() for k in kws):
        kws = []  # nothing the name does not already say
    if lang == "en":
        emoji = f"emoji {tts}" if ":" in tts else f"{with_article(tts)} emoji"
        caps = [tts, emoji, name.lower()]
        caps.append(f"emoji of {tts}: {', '.join(kws)}" if kws else "")
    elif lang in ("zh", "ja"):
        caps = [tts, f"{tts}表情符号" if lang == "zh" else f"{tts}の絵文字"]
        caps.append(f"{tts}：{'、'.join(kws)}" if kws else "")
    else:
        caps = [tts, f"{tts}: {', '.join(kws)}" if kws else ""]
    return unique(caps)


# --- packages -------------------------------------------------------------------------------------
def deb_info(deb: Path) -> dict[str, str]:
    field = ["dpkg-deb", "-f", str(deb), "Version"]
    version = subprocess.run(field, capture_output=True, text=True, check=True).stdout.strip()
    return {
        "version": version,
        "file": deb.name,
        "sha256": hashlib.sha256(deb.read_bytes()).hexdigest(),
    }


def fetch_packages(work: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, dict[str, str]]:
    """Download and unpack the .deb files unless done before; name -> version, file, sha256."""
    debs, root = work / "debs", work / "root"
    marker = root / ".sources.json"  # updated after each unpacked package
    sources = json.loads(marker.read_text()) if marker.exists() else {}
    if todo := [p for p in packages if p not in sources]:
        debs.mkdir(parents=True, exist_ok=True)
        if missing := [p for p in todo if not list(debs.glob(f"{p}_*.deb"))]:
            subprocess.run(["apt-get", "download", *missing], cwd=debs, check=True)
    for name in todo:
        deb = sorted(debs.glob(f"{name}_*.deb"))[-1]
        subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True)
        sources[name] = deb_info(deb)
        marker.write_text(json.dumps(sources, indent=2) + "\n")
    return {name: sources[name] for name in packages}


# --- rendering ------------------------------------------------------------------------------------
def save_transparent(img: Image.Image, dst: Path) -> None:
    """Shrink to MAX_SIDE (Pillow resizes RGBA with premultiplied alpha) and save as PNG with
    its transparency, so that training can put photo backgrounds under it."""
    img = img.convert("RGBA")
    img.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    dst.parent.mkdir(parents=True, exist_ok=True)
    img.save(dst)


def render_clipart(task: tuple[str, str]) -> bool:
    """Crop the drawing to its visible part (plus a margin) and save it."""
    src, dst = task
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # packaged, trusted
        try:
            with Image.open(src) as im:
                img = im.convert("RGBA")
            box = img.getchannel("A").getbbox()
            if box is None:
                return False
            left, top, right, bottom = box
            pad = max(2, max(right - left, bottom - top) // 25)
            w, h = img.size
            img = img.crop(
                (max(left - pad, 0), max(top - pad, 0), min(right + pad, w), min(bottom + pad, h))
            )
            save_transparent(img, Path(dst))
            return True
        except (OSError, ValueError, Image.DecompressionBombError):
            return False  # unreadable, or too large to decode safely


@functools.cache
def emoji_font(path: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, EMOJI_PX)


def render_emoji(task: tuple[str, str, str]) -> bool:
    """Draw one emoji (a sequence must shape to one glyph) and save it."""
    seq, font_path, dst = task
    font = emoji_font(font_path)
    _, top, right, bottom = font.getbbox(seq)
    single = font.getlength("\U0001f600")
    if bottom - top <= 0 or font.getlength(seq) > 1.2 * single:
        return False  # .notdef, or a sequence the font (or the layout engine) cannot join
    canvas = Image.new("RGBA", (right, bottom), (0, 0, 0, 0))
    ImageDraw.Draw(canvas).text((0, 0), seq, font=font, embedded_color=True)
    if canvas.getchannel("A").getbbox() is None:
        return False
    save_transparent(canvas, Path(dst))
    return True


def run_renders(func, tasks: list[tuple], workers: int, force: bool) -> list[bool]:
    """Render the tasks whose output is missing (all with ``force``); True where it exists."""
    done = [not force and Path(task[-1]).exists() for task in tasks]
    todo = [i for i, ok in enumerate(done) if not ok]
    if todo:
        with Pool(workers) as pool:
            results = pool.imap(func, [tasks[i] for i in todo], chunksize=4)
            for i, ok in zip(todo, results, strict=True):
                done[i] = ok
    if skipped := done.count(False):
        print(f"{func.__name__}: skipped {skipped} of {len(tasks)} (unreadable, huge or no glyph)")
    return done


# --- openclipart ----------------------------------------------------------------------------------
def svg_metadata(path: Path) -> dict[str, object]:
    """Title, description, subjects and creator from an SVG's RDF metadata block."""
    text = path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""
    block = m.group(0) if (m := re.search(r"<metadata.*?</metadata>", text, re.S)) else ""

    def tag(pattern: str) -> str:
        found = re.search(pattern, block, re.S)
        return html.unescape(found.group(1)).strip() if found else ""

    subject = tag(r"<dc:subject>(.*?)</dc:subject>")
    return {
        "title": tag(r"<dc:title>(.*?)</dc:title>"),
        "description": tag(r"<dc:description>(.*?)</dc:description>"),
        "subjects": [html.unescape(s) for s in re.findall(r"<rdf:li[^>]*>(.*?)</rdf:li>", subject)],
        "creator": tag(r"<dc:creator>.*?<dc:title>(.*?)</dc:title>"),
    }


def pick_per_folder(files: list[Path], cap: int) -> list[Path]:
    """At most ``cap`` files per folder, evenly spread over the sorted names."""
    by_dir: dict[Path, list[Path]] = collections.defaultdict(list)
    for f in files:
        by_dir[f.parent].append(f)
    picked = []
    for folder in sorted(by_dir):
        group = by_dir[folder]
        step = max(1, -(-len(group) // cap))
        picked.extend(group[::step][:cap])
    return sorted(picked)


def svg_title_of(meta: dict) -> str:
    """The cleaned SVG title without its author's name."""
    title, creator = clean_text(meta["title"]), clean_text(meta["creator"])
    return (title.replace(creator, "").strip() if creator else title) or title


def drawing_title(stem: str, meta: dict, useful: list[str], frequent: set[str]) -> str:
    """The SVG title, or the file name's when the SVG one is junk or a collection label."""
    svg_title = svg_title_of(meta)
    if not (is_junk(meta["title"]) or svg_title in frequent):
        title = svg_title
    else:
        title = title_from_filename(stem, meta["creator"])
        if " " not in svg_title and not is_junk(svg_title) and svg_title not in title:
            title = f"{title} {svg_title}".strip()  # "bordered" + the label "card"
    if len(max(title.split() or [""], key=len)) < 3:  # nothing left but scraps
        title = svg_title if not is_junk(meta["title"]) else (useful or ["clip art"])[-1]
    return " ".join(title.split()[:8])


def drawing_text(rel: Path, meta: dict, frequent: set[str], links: list[Path]) -> tuple:
    """Title, keywords, category and description of one drawing (``links``: its folders)."""
    folders = [clean_text(p) for p in rel.parent.parts]
    useful = [f for f in folders if f and not is_junk(f)]
    linked = [clean_text(p) for folder in links for p in reversed(folder.parts)]
    title = drawing_title(rel.stem, meta, useful, frequent)
    if "flags" in folders + linked and "flag" not in title:
        title = f"flag of {title}"
    svg_title = svg_title_of(meta)
    raw = [*meta["subjects"], *reversed(useful), *linked]
    if svg_title in frequent and not is_junk(meta["title"]):
        raw.insert(0, svg_title)
    keywords = clean_keywords(raw, drop={clean_text(meta["creator"]), title})
    category = useful[-1] if useful else ""
    description = "" if is_junk(meta["description"]) else first_sentence(meta["description"])
    return title, keywords, category, description


def drawings(png_root: Path) -> dict[Path, list[Path]]:
    """Each PNG file (path under png_root) -> the folders naming it (symlinks file one drawing
    under several categories: it is rendered and grouped once)."""
    real_root, found = png_root.resolve(), collections.defaultdict(list)
    for path in sorted(png_root.rglob("*.png")):
        real = path.resolve()
        if real.is_file() and real.is_relative_to(real_root):
            found[real.relative_to(real_root)].append(path.relative_to(png_root).parent)
    return found


def clipart_rows(root: Path, images: Path, workers: int, cap: int, force: bool) -> list[dict]:
    png_root, svg_root = root / CLIPART_PNG, root / CLIPART_SVG
    links = drawings(png_root)
    rels = pick_per_folder(sorted(links), cap)
    metas = [svg_metadata((svg_root / r).with_suffix(".svg")) for r in rels]
    counts = collections.Counter(svg_title_of(m) for m in metas)
    frequent = {t for t, n in counts.items() if n >= FREQUENT_TITLE}
    dsts = [images / "openclipart" / r for r in rels]
    tasks = [(str(png_root / r), str(d)) for r, d in zip(rels, dsts, strict=True)]
    ok = run_renders(render_clipart, tasks, workers, force)
    rows = []
    for rel, meta, dst, good in zip(rels, metas, dsts, ok, strict=True):
        if good:
            text = drawing_text(rel, meta, frequent, links[rel])
            for caption in clipart_captions(*text):
                rows.append(row(dst, caption, f"openclipart/{rel.with_suffix('')}", "openclipart"))
    return rows


# --- emoji ----------------------------------------------------------------------------------------
def cldr_annotations(cldr: Path, lang: str) -> dict[str, tuple[str, list[str]]]:
    """Emoji sequence -> (tts name, keywords) from CLDR annotations and derived annotations."""
    out: dict[str, tuple[str, list[str]]] = {}
    for sub in ("annotations", "annotationsDerived"):
        path = cldr / sub / f"{lang}.xml"
        if not path.exists():
            continue
        for node in ET.parse(path).getroot().iter("annotation"):
            cp, text = node.get("cp"), (node.text or "").strip()
            if not cp or not text or text == "↑↑↑":
                continue
            tts, kws = out.get(cp, ("", []))
            if node.get("type") == "tts":
                tts = text
            else:
                kws = [k.strip() for k in text.split("|") if k.strip()]
            out[cp] = (tts, kws)
    return out


def emoji_id(seq: str) -> str:
    return "_".join(f"{ord(ch):04x}" for ch in seq)


def emoji_rows(
    root: Path, images: Path, langs: list[str], workers: int, force: bool, skin_tones: bool
) -> list[dict]:
    cldr = root / CLDR
    notes = {lang: cldr_annotations(cldr, lang) for lang in langs}
    english = notes.get("en") or cldr_annotations(cldr, "en")
    seqs = sorted(s for s in english if not (len(s) == 1 and s.isascii()))
    if not skin_tones:  # variants of one picture in five skin colours: keep the base only
        seqs = [s for s in seqs if not any(0x1F3FB <= ord(ch) <= 0x1F3FF for ch in s)]
    font = str(root / EMOJI_FONT)
    dsts = [images / "emoji" / f"emoji_u{emoji_id(s)}.png" for s in seqs]
    ok = run_renders(
        render_emoji, [(s, font, str(d)) for s, d in zip(seqs, dsts, strict=True)], workers, force
    )
    rows = []
    for seq, dst, good in zip(seqs, dsts, ok, strict=True):
        if not good:
            continue
        name = unicodedata.name(seq, "") if len(seq) == 1 else ""
        for lang in langs:
            tts, kws = notes[lang].get(seq, ("", []))
            if tts:
                for caption in emoji_captions(lang, tts, kws, name if lang == "en" else ""):
                    rows.append(row(dst, caption, f"emoji/{emoji_id(seq)}", "emoji", lang))
    return rows


# --- output ---------------------------------------------------------------------------------------
def row(image: Path, caption: str, group: str, source: str, lang: str = "en") -> dict:
    return {"image": str(image), "caption": caption, "group": group, "source": source, "lang": lang}


def write_pairs(rows: list[dict], work: Path) -> Path:
    columns = ["image", "caption", "group", "source", "lang"]
    path = work / "pairs.parquet"
    pq.write_table(pa.table({c: [r[c] for r in rows] for c in columns}), path)
    return path


def summary(rows: list[dict], path: Path, seconds: float) -> str:
    def count(sub: list[dict]) -> str:
        return f"{len({r['image'] for r in sub})} images, {len(sub)} pairs"

    lines = [f"wrote {path}: {count(rows)} in {seconds:.0f} s"]
    for source in sorted({r["source"] for r in rows}):
        lines.append(f"  {source}: {count([r for r in rows if r['source'] == source])}")
    langs = sorted(collections.Counter(r["lang"] for r in rows).items())
    return "\n".join([*lines, "  languages: " + ", ".join(f"{k} {v}" for k, v in langs)])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_work = REPO / "work-data" / "mini"
    parser.add_argument("--work", type=Path, default=default_work, help="work folder")
    parser.add_argument("--workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--langs", default="en,zh,ja,de,fr,es", help="CLDR languages for emoji")
    parser.add_argument("--max-per-folder", type=int, default=300, help="clip-art cap per folder")
    parser.add_argument("--force", action="store_true", help="re-render existing images")
    parser.add_argument(
        "--skin-tones",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="include the skin-tone variants of emoji (1,780 near-copies of base emoji)",
    )
    parser.add_argument("--game-sprites", action="store_true", help="add the Widelands and "
                        "Freeciv sprites (game_sprites.py; not in the shipped model)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    work = args.work.resolve()
    sources = fetch_packages(work, PACKAGES + (GAME_PACKAGES if args.game_sprites else ()))
    (work / "sources.json").write_text(json.dumps(sources, indent=2) + "\n")
    root, images = work / "root", work / "images"
    langs = [lang.strip() for lang in args.langs.split(",") if lang.strip()]
    rows = clipart_rows(root, images, args.workers, args.max_per_folder, args.force)
    rows += emoji_rows(root, images, langs, args.workers, args.force, args.skin_tones)
    rows += photo_sources.tuxpaint_rows(root, images, row, MAX_SIDE)
    rows += photo_sources.gcompris_rows(root, images, row, MAX_SIDE)
    rows += photo_sources.zeroad_rows(root, images, row, MAX_SIDE)
    rows += extra_sources.scratch_rows(root, images, row, MAX_SIDE)
    rows += extra_sources.art4apps_rows(root, images, row, MAX_SIDE, langs)
    if args.game_sprites:
        rows += game_sprites.widelands_rows(root, images, row, MAX_SIDE)
        rows += game_sprites.freeciv_rows(root, images, row, MAX_SIDE)
    count = photo_sources.write_backgrounds(root, work / "backgrounds")
    count += extra_sources.scratch_backgrounds(root, work / "backgrounds")
    print(f"wrote {count} background photos to {work / 'backgrounds'}")
    path = write_pairs(rows, work)
    print(summary(rows, path, time.monotonic() - start))
    return 0


if __name__ == "__main__":
    sys.exit(main())
