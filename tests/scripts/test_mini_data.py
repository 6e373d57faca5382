"""Caption cleaning of scripts/mini/prepare_data.py (pure functions: no apt, no images)."""

from pathlib import Path

import pytest

from tests.support.helpers import load_script

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "mini" / "prepare_data.py"


@pytest.fixture(scope="module")
def prep():
    yield from load_script(SCRIPT, "mini_prepare_data")


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("Chemistry_Flask", "chemistry flask"),
        ("Grampa&#39;n Gramma", "grampa'n gramma"),
        ("frying pan (padella in italian)", "frying pan padella in italian"),
        ("BlueButton_3D", "blue button"),
        ("moon01", "moon"),
        ("star 67pt11step", "star"),
        ("<b>Red</b>   apple!", "red apple"),
        (" ireland", "ireland"),
        ("button-red", "button red"),
        ("", ""),
    ],
)
def test_clean_text(prep, raw, clean):
    assert prep.clean_text(raw) == clean


@pytest.mark.parametrize(
    ("stem", "creator", "title"),
    [
        ("chemistry_flask_matthew__01", "Matthew Wardrop", "chemistry flask"),
        ("cavallo_architetto_franc_01", "Architetto Francesco Rollandin", "cavallo"),
        ("people_juliane_krug_08c", "Juliane Krug", "people"),
        ("video1_sergio_luiz_arauj_01", "Sergio Luiz Araujo", "video"),
        ("gnome-fs-trash-empty", "", "gnome fs trash empty"),
        ("star_67pt11step", "", "star"),
        ("MatieresToxiques", "", "matieres toxiques"),
        ("dog_01", "Dog Lover", "dog"),  # the author rule never eats the whole title
    ],
)
def test_title_from_filename(prep, stem, creator, title):
    assert prep.title_from_filename(stem, creator) == title


@pytest.mark.parametrize(
    "text",
    [
        "",
        "HASH(0x858b108)",
        "Part of the Flat Icon Collection (Wed Aug 25 23:29:46 2004)",
        "Clipart by Nicu Buculei - contour_chipmunk",
        "Lemon SVG theme",
        "Etiquette Icons",
        "EPS converted from  http://aiga.org",
        "jean.victor.balin@gmail.com",
        "unsorted",
        "12345",
    ],
)
def test_is_junk_rejects_labels_and_ids(prep, text):
    assert prep.is_junk(text)


@pytest.mark.parametrize("text", ["Bored dog", "Chemistry Flask", "airplane", "truck"])
def test_is_junk_keeps_real_titles(prep, text):
    assert not prep.is_junk(text)


def test_clean_keywords_dedups_and_drops_junk(prep):
    raw = ["animal", "hash", "Dog", "dog", "mammal, pet", "", "x", "Nicu Buculei", "icons"]
    assert prep.clean_keywords(raw, drop={"nicu buculei"}) == ["animal", "dog", "mammal", "pet"]
    assert prep.clean_keywords(["red fox", "Red_Fox", "cat", "owl"], limit=2) == ["red fox", "cat"]


def test_first_sentence(prep):
    text = "A chemistry flask with the &quot;required&quot; bubbles ;). Second sentence."
    assert prep.first_sentence(text) == "a chemistry flask with the required bubbles"
    assert len(prep.first_sentence("word " * 100, max_chars=30)) <= 30


@pytest.mark.parametrize(
    ("phrase", "expected"),
    [
        ("horse", "a horse"),
        ("apple", "an apple"),
        ("onion rings", "onion rings"),
        ("glass", "a glass"),
        ("the moon", "the moon"),
        ("Ant", "an Ant"),
        ("europe", "a europe"),
    ],
)
def test_with_article(prep, phrase, expected):
    assert prep.with_article(phrase) == expected


def test_clipart_captions(prep):
    caps = prep.clipart_captions("bored dog", ["dog", "animal", "bored dog"], "dogs", "a tired dog")
    assert caps == [
        "bored dog",
        "clip art of a bored dog",
        "a drawing of a bored dog, dog, animal",
        "a dogs picture: bored dog",
        "a tired dog",
    ]
    assert prep.clipart_captions("star", [], "", "") == ["star", "clip art of a star"]


def test_emoji_captions(prep):
    en = prep.emoji_captions("en", "dog face", ["dog", "face", "pet"], "DOG FACE")
    assert en == ["dog face", "a dog face emoji", "emoji of dog face: dog, face, pet"]
    zh = prep.emoji_captions("zh", "狗脸", ["宠物", "狗", "狗脸"])
    assert zh == ["狗脸", "狗脸表情符号", "狗脸：宠物、狗"]
    flag = prep.emoji_captions("fr", "drapeau : France", [])
    assert flag == ["drapeau : France"]
    assert prep.emoji_captions("en", "flag: France", [])[1] == "emoji flag: France"
    assert prep.emoji_captions("zh", "旗: 法国", ["旗"]) == ["旗: 法国", "旗: 法国表情符号"]


def test_pick_per_folder_is_capped_and_sorted(prep):
    files = [Path("a") / f"{i:03d}.png" for i in range(10)] + [Path("b/x.png")]
    picked = prep.pick_per_folder(files, 3)
    assert picked == sorted(picked)
    assert [p for p in picked if p.parent == Path("a")] == [
        Path("a/000.png"),
        Path("a/004.png"),
        Path("a/008.png"),
    ]
    assert Path("b/x.png") in picked


def test_emoji_id(prep):
    assert prep.emoji_id("\U0001f436") == "1f436"
    assert prep.emoji_id("\U0001f44d\U0001f3fb") == "1f44d_1f3fb"


def test_game_sprites_are_opt_in(prep, tmp_path, monkeypatch):
    """The shipped model's data: the game packages are fetched and used only when asked."""
    fetched = []

    def fake_fetch(work, packages):
        fetched.append(packages)
        raise SystemExit(0)  # stop before any real work

    monkeypatch.setattr(prep, "fetch_packages", fake_fetch)
    for argv in ([], ["--game-sprites"]):
        with pytest.raises(SystemExit):
            prep.main(["--work", str(tmp_path), *argv])
    assert fetched[0] == prep.PACKAGES and not set(prep.GAME_PACKAGES) & set(fetched[0])
    assert fetched[1] == prep.PACKAGES + prep.GAME_PACKAGES
