"""Open the dedup HTML page in headless Chromium: thumbnails load, the keeper is outlined,
nothing overflows (desktop and phone widths), and an image link opens the full file.

Without Chromium: skipped under plain pytest, a failure under scripts/test.sh (chrome.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from clipsift.sift.dedup import find_duplicates
from clipsift.sift.dedup_page import write_groups_html
from tests.browser import chrome
from tests.sift.test_dedup_page import THRESHOLD, build_scene

pytestmark = pytest.mark.browser

_LAYOUT = """
const cards = [...document.querySelectorAll('.member')];
const overflow = cards.filter(c => [...c.querySelectorAll('.name, .dir, .facts')]
  .some(e => e.getBoundingClientRect().right > c.getBoundingClientRect().right + 1));
return {cards: cards.length, overflow: overflow.length,
        wide: document.documentElement.scrollWidth > window.innerWidth};
"""


def test_dedup_page_renders_and_links_open_the_full_images(tmp_path):
    folder = tmp_path / "photos with spaces"
    folder.mkdir()
    coll = build_scene(folder)
    page = write_groups_html(find_duplicates(coll, THRESHOLD), coll, tmp_path / "dups.html")
    driver = chrome.start(tmp_path / "chrome-profile", 1100, 900)
    try:
        driver.get(page.as_uri())
        js = driver.execute_script
        assert js("return document.title") == "Near-duplicates: 3 groups"
        thumbs = js("return [...document.querySelectorAll('.member img')].map(i => "
                    "[i.complete, i.naturalWidth])")
        assert len(thumbs) == 7 and all(ok and w > 0 for ok, w in thumbs)
        keepers = js("return [...document.querySelectorAll('.member.keeper')].map(f => "
                     "getComputedStyle(f).borderTopColor)")
        assert keepers == ["rgb(15, 157, 88)"] * 3  # --good, as in the report
        for width in (1100, 420):  # desktop, phone
            driver.set_window_size(width, 900)
            layout = js(_LAYOUT)
            assert layout == {"cards": 7, "overflow": 0, "wide": False}, (width, layout)
        driver.set_window_size(1100, 900)
        height = js("return document.body.scrollHeight")
        driver.set_window_size(1100, min(height + 40, 6000))
        shot = Path(os.environ.get("CLIPSIFT_SCREENSHOTS", tmp_path)) / "dedup-page.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        target = js("const a = document.querySelector('.member:not(.keeper) a.img');"
                    "a.removeAttribute('target'); a.click(); return a.href")
        assert target == Path(coll.keys[1]).as_uri()  # b.jpg, the runner-up of group 0
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(driver, 20, poll_frequency=0.1).until(
            lambda d: d.current_url == target and d.execute_script(
                "return document.images.length && document.images[0].complete"),
            "the link did not open the image file")
        assert js("return document.images[0].naturalWidth") == 200  # the full image, 200x160
    finally:
        driver.quit()
