"""scripts/mini/game_sprites.py: Widelands sprite sheets and Freeciv unit tiles."""


import pytest
from PIL import Image

from tests.support.helpers import load_mini_source
from tests.support.helpers import pair_row as _row

STAG_LUA = """
-- descname = _("Not this one")
wl.Descriptions():new_critter_type{
   name = "stag",
   descname = _("Stag"),
   spritesheets = {
      idle = {
         sound_effect = { path = dirname .. "stag", priority = "1%" },
         fps = 20, frames = 4, rows = 2, columns = 2, hotspot = { 1, 10 }
      },
      eating = { basename = "idle", frames = 4, rows = 2, columns = 2 },
      walk = {
         fps = 20,
         frames = 3,  -- the last cell of the sheet is empty
         rows = 2,
         columns = 2,
         directional = true,
         hotspot = { 10, 19 }
      },
   },
}
"""


@pytest.fixture(scope="module")
def gs():
    yield from load_mini_source("game_sprites.py")


def test_lua_parsing(gs):
    assert gs.descname(STAG_LUA.split("\n", 2)[2]) == "stag"
    assert gs.descname('descname = pgettext ("atlanteans_worker", "Horse"),') == "horse"
    sheets = gs.spritesheets(STAG_LUA)
    assert sheets == {
        "idle": {"frames": 4, "rows": 2, "columns": 2, "directional": False},
        "walk": {"frames": 3, "rows": 2, "columns": 2, "directional": True},
    }
    assert gs.spritesheets("name = 'x'") == {}


def _sheet(cell: int, colours: list[tuple], size: int) -> Image.Image:
    """A 2x2 sheet of `cell` px cells; cell i holds a `size` px square of colours[i]."""
    sheet = Image.new("RGBA", (2 * cell, 2 * cell), (0, 0, 0, 0))
    for i, colour in enumerate(colours):
        row, col = divmod(i, 2)
        sheet.paste((*colour, 255), (col * cell, row * cell, col * cell + size, row * cell + size))
    return sheet


def test_widelands_rows(gs, tmp_path):
    base = tmp_path / "root" / gs.WIDELANDS
    stag = base / "world" / "critters" / "stag"
    stag.mkdir(parents=True)
    (stag / "init.lua").write_text(STAG_LUA)
    _sheet(40, [(200, 0, 0), (0, 200, 0), (0, 0, 200), (9, 9, 9)], 30).save(stag / "idle.png")
    for direction in gs.DIRECTIONS:
        _sheet(40, [(120, 80, 40)] * 3, 25).save(stag / f"walk_{direction}_1.png")
    (stag / "walk_e_1_pc.png").write_bytes(b"player colour mask: never read")
    duck = base / "world" / "critters" / "duck"
    duck.mkdir()
    (duck / "init.lua").write_text(STAG_LUA.replace("Stag", "Duck"))
    _sheet(10, [(9, 9, 200)] * 4, 6).save(duck / "idle.png")  # too small: skipped
    people = base / "tribes" / "workers" / "empire" / "carrier"
    people.mkdir(parents=True)
    (people / "init.lua").write_text('new_carrier_type { descname = _("Carrier"), }')

    rows = gs.widelands_rows(tmp_path / "root", tmp_path / "images", _row, 64)
    images = sorted({r["image"] for r in rows})
    # idle: 4 frames of 4; walk: 6 directions x 3 frames (frames // 4 == 0 -> every frame)
    assert len(images) == 4 + 6 * 3
    assert {r["group"] for r in rows} == {"widelands/critters/stag"}
    assert {r["caption"] for r in rows} >= {"stag", "a picture of a stag", "a deer.",
                                            "a picture of a stag, a deer"}
    with Image.open(next(p for p in images if p.endswith("idle_x_02.png"))) as im:
        assert im.size == (30, 30) and im.convert("RGB").getpixel((5, 5)) == (0, 0, 200)


def test_freeciv_rows(gs, tmp_path):
    folder = tmp_path / "root" / gs.FREECIV / "amplio2"
    folder.mkdir(parents=True)
    spec = """[spec]\n[file]\ngfx = "amplio2/units"\n\n[grid_main]\n
x_top_left = 1\ny_top_left = 1\ndx = 64\ndy = 48\npixel_border = 1\n
tiles = { "row", "column", "tag"\n  0,  0, "u.armor"\t\t; [Nemo]\n  0,  1, "u.warriors"
  1,  0, "u.bomber"\n;  1,  1, "u.train"\n}\n"""
    (folder / "units.spec").write_text(spec)
    (folder / "extra_units.spec").write_text(spec.replace('"u.armor"', '"u.lion"'))
    sheet = Image.new("RGBA", (1 + 2 * 65, 1 + 2 * 49), (0, 255, 0, 255))  # green grid lines
    for left, top in ((1, 1), (66, 1), (1, 50)):
        sheet.paste((0, 0, 0, 0), (left, top, left + 64, top + 48))
        sheet.paste((90, 90, 90, 255), (left + 10, top + 10, left + 50, top + 30))
    sheet.save(folder / "units.png")
    sheet.save(folder / "extra_units.png")

    geometry, tiles = gs.freeciv_grid(spec)
    assert geometry == {"x_top_left": 1, "y_top_left": 1, "dx": 64, "dy": 48, "pixel_border": 1}
    assert tiles == [(0, 0, "u.armor"), (0, 1, "u.warriors"), (1, 0, "u.bomber")]
    rows = gs.freeciv_rows(tmp_path / "root", tmp_path / "images", _row, 64)
    assert {r["group"] for r in rows} == {"freeciv/armor", "freeciv/bomber", "freeciv/lion"}
    assert "a picture of a bomber, an airplane" in {r["caption"] for r in rows}
    with Image.open(tmp_path / "images" / "freeciv" / "armor.png") as im:
        assert im.size == (40, 20)  # the tile's visible part, no grid line
