"""The search page's first hour, in headless Chromium against a real `clipsift serve`:
`/?q=` runs the search and the URL follows the query (back/forward too); "more like this"
puts id:N in the box and the URL; captions show whole, readable file names; the keyboard
reaches everything; with an API key the page asks for it, says why on 401, and keeps it
for the tab. Without Chromium: skipped under plain pytest, a failure under scripts/test.sh."""

from __future__ import annotations

import shutil
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.browser.pagekit import loaded_images, open_page, screenshot, status, texts, wait
from tests.support.serverkit import LiveServer, build_index

pytestmark = pytest.mark.browser
LONG = ("a_remarkably_long_file_name_for_a_photo_of_a_goldfish_swimming_in_a_glass_bowl_"
        "on_the_kitchen_table_in_the_morning.jpg")


@pytest.fixture(scope="module")
def server(photos, tmp_path_factory):
    """19 ImageNet photos (names like n01484850_great_white_shark.JPEG) and one copy with a
    very long name."""
    folder = tmp_path_factory.mktemp("search page")
    long_copy = folder / LONG
    shutil.copy(photos[19], long_copy)
    path = build_index([*photos[:19], long_copy], folder / "index", count=20)
    with LiveServer([str(path), "--model", "fake"], env={"CLIPSIFT_API_KEY": ""}) as srv:
        yield srv


def query_of(driver) -> str | None:
    """The q parameter of the page's URL."""
    values = parse_qs(urlsplit(driver.current_url).query).get("q")
    return values[0] if values else None


def results_for(driver, words: str) -> None:
    wait(driver, lambda d: f"results for “{words}”" in status(d) and loaded_images(d),
         f"no results for {words!r}")


def press(driver, *keys: str) -> None:
    """Type keys into whatever has the focus (as a user does)."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(*keys).perform()


def active(driver) -> dict:
    """What has the focus: its id, and the index of its result card (or None)."""
    return driver.execute_script(
        "const a = document.activeElement, card = a.closest('.result');"
        "return {id: a.id, card: card ? Number(card.dataset.index) : null};")


def test_query_in_the_url_runs_and_follows_the_search(browser, server):
    open_page(browser, server.url + "/?q=a+fish")
    results_for(browser, "a fish")
    assert browser.find_element("id", "query").get_attribute("value") == "a fish"
    box = browser.find_element("id", "query")
    box.clear()
    box.send_keys("a bird on a branch\n")
    results_for(browser, "a bird on a branch")
    assert query_of(browser) == "a bird on a branch"  # the URL follows the query
    browser.back()
    results_for(browser, "a fish")
    assert query_of(browser) == "a fish"
    assert browser.find_element("id", "query").get_attribute("value") == "a fish"
    browser.forward()
    results_for(browser, "a bird on a branch")
    open_page(browser, server.url + "/#q=a%20red%20car")  # the older form still works
    results_for(browser, "a red car")
    assert query_of(browser) == "a red car" and not urlsplit(browser.current_url).fragment


def test_more_like_this_updates_the_box_and_the_url(browser, server):
    open_page(browser, server.url + "/?q=a+dog")
    results_for(browser, "a dog")
    first = texts(browser, ".result .name")
    card = browser.find_elements("css selector", ".result")[1]
    name = card.find_element("css selector", ".name").get_attribute("textContent")
    card.find_element("css selector", ".thumb").click()
    wait(browser, lambda d: f"like {name}" in status(d) and loaded_images(d),
         "more like this did not run")
    query = browser.find_element("id", "query").get_attribute("value")
    assert query.startswith("id:") and query_of(browser) == query
    assert name not in texts(browser, ".result .name")  # the item itself is left out
    assert f"More like {name}" in browser.find_element("id", "query-pill").text
    similar = texts(browser, ".result .name")
    browser.refresh()  # the URL alone gives the same page
    wait(browser, lambda d: f"like {name}" in status(d) and loaded_images(d),
         "the more-like-this URL did not run again")
    assert texts(browser, ".result .name") == similar
    assert f"More like {name}" in browser.find_element("id", "query-pill").text
    browser.back()
    results_for(browser, "a dog")
    assert texts(browser, ".result .name") == first


_CAPTIONS = """
return [...document.querySelectorAll('#results .name')].map(n => {
  const words = [...n.childNodes].filter(c => c.nodeType === Node.TEXT_NODE);
  const cutWord = words.some(t => {
    const r = document.createRange();
    r.selectNodeContents(t);
    const tops = [...r.getClientRects()].filter(x => x.width > 0).map(x => Math.round(x.top));
    return new Set(tops).size > 1;
  });
  return {text: n.textContent, title: n.title, cutWord,
          hidden: n.scrollWidth > n.clientWidth + 1 || n.scrollHeight > n.clientHeight + 1,
          lines: Math.round(n.getBoundingClientRect().height /
                            parseFloat(getComputedStyle(n).lineHeight))};
});
"""


def test_captions_show_whole_readable_file_names(browser, server):
    open_page(browser, server.url + "/?q=an+animal&k=24")
    results_for(browser, "an animal")
    captions = browser.execute_script(_CAPTIONS)
    assert len(captions) == 20
    for cap in captions:
        assert cap["title"].split("\n")[0] == cap["text"]  # the full name in the tooltip
        assert not cap["cutWord"], f"{cap['text']} is broken inside a word"
        if cap["text"] == LONG:
            assert cap["hidden"] and cap["lines"] == 2  # ellipsised after two lines
            assert cap["title"].endswith("/" + LONG)  # ... and the path in the tooltip
        else:
            assert not cap["hidden"], f"{cap['text']} is not shown whole"
            assert cap["text"].startswith("n0") and cap["text"].endswith(".JPEG")
    screenshot(browser, "captions")


def test_keyboard_navigation_and_preview(browser, server):
    from selenium.webdriver.common.keys import Keys

    open_page(browser, server.url + "/?q=a+fish")
    results_for(browser, "a fish")
    browser.execute_script("document.activeElement.blur()")
    assert active(browser)["id"] != "query"
    press(browser, "/")
    assert active(browser)["id"] == "query"  # "/" focuses the box
    press(browser, Keys.ARROW_DOWN)
    assert active(browser)["card"] == 0
    press(browser, Keys.ARROW_RIGHT)
    assert active(browser)["card"] == 1
    press(browser, Keys.TAB)  # Tab goes from result to result
    assert active(browser)["card"] == 2
    columns = browser.execute_script(
        "const c = [...document.querySelectorAll('.result')];"
        "return c.filter(x => x.offsetTop === c[0].offsetTop).length;")
    press(browser, Keys.ARROW_DOWN)
    assert active(browser)["card"] == 2 + columns
    names = texts(browser, ".result .name")
    press(browser, Keys.ARROW_LEFT, Keys.ENTER)  # Enter opens the preview
    preview = browser.find_element("id", "preview")
    wait(browser, lambda d: preview.get_attribute("open") is not None, "no preview")
    assert browser.find_element("id", "preview-name").text == names[1 + columns]
    wait(browser, lambda d: d.execute_script(
        "const i = document.getElementById('preview-img');"
        "return i.complete && i.naturalWidth > 0"), "the preview image did not load")
    press(browser, Keys.ARROW_RIGHT)
    assert browser.find_element("id", "preview-name").text == names[2 + columns]
    screenshot(browser, "preview")
    press(browser, Keys.ESCAPE)  # Escape closes it, the focus goes back to the results
    wait(browser, lambda d: preview.get_attribute("open") is None, "Escape did not close it")
    assert active(browser)["card"] == 1 + columns
    assert "for “a fish”" in status(browser)  # nothing else ran on the way
    press(browser, "m")  # more like the focused result
    wait(browser, lambda d: f"like {names[1 + columns]}" in status(d) and loaded_images(d),
         "m did not search for more like the focused result")
    assert query_of(browser) == browser.find_element("id", "query").get_attribute("value")
    assert active(browser)["card"] == 0  # the keyboard stays in the results


def test_page_with_an_api_key_says_why_and_keeps_it_for_the_tab(browser, photos, tmp_path):
    path = build_index(photos, tmp_path, count=6)
    key = "browser-test-key-123"
    with LiveServer([str(path), "--model", "fake"], env={"CLIPSIFT_API_KEY": key}) as srv:
        browser.get(srv.url + "/?q=fish")
        auth = browser.find_element("id", "auth")
        wait(browser, lambda d: auth.is_displayed(), "the page did not ask for the API key")
        assert "401" in auth.text and "missing API key" in auth.text
        field = browser.find_element("id", "api-key")
        assert field.get_attribute("type") == "password"
        field.send_keys("not-the-key-000\n")
        message = browser.find_element("id", "auth-message")
        wait(browser, lambda d: "Wrong API key" in message.text, "no message for a wrong key")
        assert browser.execute_script("return sessionStorage.getItem('clipsift-key')") is None
        field.send_keys(key + "\n")
        results_for(browser, "fish")  # the query in the URL runs once the key is in
        assert not auth.is_displayed()
        srcs = [e.get_attribute("src") for e in browser.find_elements("css selector",
                                                                       "#results img")]
        assert len(srcs) == 6 and all(s.startswith("blob:") for s in srcs)  # sent the key
        assert browser.execute_script("return sessionStorage.getItem('clipsift-key')") == key
        browser.refresh()  # kept for the tab: no question the second time
        results_for(browser, "fish")
        assert not browser.find_element("id", "auth").is_displayed()
        browser.execute_script("sessionStorage.clear()")
