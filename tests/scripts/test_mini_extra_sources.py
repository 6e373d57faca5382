"""scripts/mini/extra_sources.py: Scratch media and eduActiv8's Art4Apps word pictures."""


import pytest
from PIL import Image

from tests.support.helpers import load_mini_source
from tests.support.helpers import pair_row as _row


@pytest.fixture(scope="module")
def es():
    yield from load_mini_source("extra_sources.py")


@pytest.mark.parametrize(("stem", "name"), [
    ("dog2-c", "dog"), ("cat1-a", "cat"), ("city-with-water2", "city with water"),
    ("beach-malibu", "beach malibu"), ("bedroom1", "bedroom")])
def test_scratch_name(es, stem, name):
    assert es.scratch_name(stem) == name


def test_scratch_rows_and_backgrounds(es, tmp_path):
    media = tmp_path / "root" / es.SCRATCH
    (media / "Costumes" / "Animals").mkdir(parents=True)
    (media / "Costumes" / "Letters").mkdir(parents=True)
    (media / "Backgrounds" / "Nature").mkdir(parents=True)
    cat = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    cat.paste((200, 120, 0, 255), (5, 5, 30, 25))
    cat.save(media / "Costumes" / "Animals" / "cat1-a.png")
    cat.save(media / "Costumes" / "Letters" / "a.png")  # text: skipped
    Image.new("RGB", (480, 360), (90, 140, 200)).save(media / "Backgrounds" / "Nature" / "lake.jpg")
    Image.new("RGB", (480, 360), (9, 9, 9)).save(media / "Backgrounds" / "Nature" / "stars.gif")
    rows = es.scratch_rows(tmp_path / "root", tmp_path / "images", _row, 64)
    captions = {r["caption"] for r in rows}
    assert "a picture of a cat, animals" in captions and "a photo of a lake, nature" in captions
    assert "a picture of a stars, nature" in captions  # GIF backgrounds are drawings
    assert not any("letters" in r["group"].lower() for r in rows)
    with Image.open(next(r["image"] for r in rows if "cat" in r["caption"])) as im:
        assert im.size == (25, 20)  # cropped to the visible part
    out = tmp_path / "bg"
    out.mkdir()
    assert es.scratch_backgrounds(tmp_path / "root", out) == 1  # photographs only
    assert (out / "scratch_lake.jpg").is_file()


def test_art4apps_rows_multilingual(es, tmp_path):
    root = tmp_path / "root"
    lists = root / es.A4A_LANGS
    lists.mkdir(parents=True)
    (root / es.A4A_WORDS).write_text('d = dict()\nd["a4a_animals"] = ["guinea pig", "cow"]\n'
                                     'd["a4a_transport"] = ["truck"]\nimport os\n')
    (lists / "de.py").write_text('d = dict()\nd["a4a_animals"] = ["Meerschweinchen", ""]\n')
    for folder, stem in (("animals", "guinea_pig"), ("animals", "cow"), ("transport", "truck")):
        (root / es.A4A_IMAGES / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (300, 200), "white").save(root / es.A4A_IMAGES / folder / f"{stem}.jpg")
    rows = es.art4apps_rows(root, tmp_path / "images", _row, 64, ["en", "de", "zh"])
    by_lang = {(r["lang"], r["caption"]) for r in rows}
    assert ("en", "a drawing of a guinea pig, animals") in by_lang
    assert ("en", "a drawing of a truck, transport") in by_lang
    assert ("de", "Meerschweinchen") in by_lang
    assert not any(r["lang"] == "de" and "cow" in r["group"] and not r["caption"] for r in rows)
    assert {r["lang"] for r in rows} == {"en", "de"}  # no zh list in eduActiv8


def test_word_lists_reads_data_without_running_it(es, tmp_path):
    path = tmp_path / "w.py"
    path.write_text('import sys\nsys.exit(3)\nd = dict()\nd["k"] = ["a", 1, "b"]\n')
    assert es.word_lists(path) == {"k": ["a", "", "b"]}
