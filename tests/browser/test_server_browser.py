"""The search page in a real browser: Selenium drives Debian's headless Chromium against
`clipsift serve` on 127.0.0.1. Type a query -> result images load; upload an image ->
results like it; a bad upload -> a visible error; click a result -> more like it;
classify an image -> probability bars (URLs, keyboard, captions and the API key:
test_search_page.py). Without Chromium: skipped when run with plain pytest, a failure
under scripts/test.sh (see tests/browser/chrome.py). The browser is the module's
(conftest.py); CLIPSIFT_SCREENSHOTS=/some/folder keeps screenshots."""

from __future__ import annotations

import pytest

from tests.browser.pagekit import WAIT, loaded_images, screenshot, status, texts, wait
from tests.browser.pagekit import open_page as open_url
from tests.support.serverkit import LiveServer, build_index

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(photos, tmp_path_factory):
    path = build_index(photos, tmp_path_factory.mktemp("page"), count=20)
    with LiveServer([str(path), "--model", "fake"], env={"CLIPSIFT_API_KEY": ""}) as srv:
        yield srv


def open_page(driver, server) -> None:
    open_url(driver, server.url + "/")


_DISPATCH = """
const [kind, itemId, name, done] = arguments;
fetch(`/v1/thumbnail/${itemId}`).then((r) => r.blob()).then((blob) => {
  const transfer = new DataTransfer();
  transfer.items.add(new File([blob], name, {type: blob.type}));
  if (kind === "drop") {
    window.dispatchEvent(new DragEvent("dragenter", {dataTransfer: transfer, bubbles: true}));
    const shown = !document.getElementById("drop-overlay").hidden;
    window.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true,
                                                cancelable: true}));
    done(shown);
  } else {
    window.dispatchEvent(new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true,
                                                      cancelable: true}));
    done(true);
  }
}).catch((e) => done(String(e)));
"""


@pytest.mark.parametrize("kind", ["drop", "paste"])
def test_drop_or_paste_an_image_searches_by_it(browser, server, kind):
    """Real DragEvent/ClipboardEvent carrying an image File (bytes of an indexed item's
    thumbnail): the page searches by it and shows the results."""
    open_page(browser, server)
    browser.set_script_timeout(WAIT)
    shown = browser.execute_async_script(_DISPATCH, kind, 1, f"by-{kind}.jpg")
    assert shown is True, shown  # the drop overlay appeared on dragenter
    wait(browser, lambda d: f"like by-{kind}.jpg" in status(d) and loaded_images(d),
         f"no results for the image given by {kind}")
    assert browser.find_element("id", "drop-overlay").get_attribute("hidden") is not None
    assert browser.find_element("id", "query-pill").is_displayed()


def test_bad_upload_shows_an_error(browser, server, tmp_path):
    open_page(browser, server)
    bad = tmp_path / "holiday.jpg"
    bad.write_text("this is not a picture")
    browser.find_element("id", "image-input").send_keys(str(bad))
    error = browser.find_element("id", "error")
    wait(browser, lambda d: error.is_displayed(), "no error message for a bad upload")
    assert "could not be used" in error.text and "not an image" in error.text
    screenshot(browser, "bad-upload")


def test_click_result_for_more_like_it_and_classify(browser, server, photos):
    open_page(browser, server)
    browser.find_element("id", "query").send_keys("a bird\n")
    wait(browser, lambda d: loaded_images(d), "no results")
    card = browser.find_elements("css selector", ".result")[2]
    name = card.find_element("css selector", ".name").get_attribute("textContent")
    card.find_element("css selector", ".thumb").click()
    wait(browser, lambda d: f"like {name}" in status(d) and loaded_images(d),
         "more-like-this did not run")
    assert name not in texts(browser, ".result .name")  # the item itself is left out
    browser.find_element("id", "classify-file").send_keys(str(photos[0]))
    labels = browser.find_element("id", "labels")
    labels.clear()
    labels.send_keys("fish, dog, car")
    browser.find_element("id", "classify-button").click()
    wait(browser, lambda d: len(d.find_elements("css selector", "#classify-results li")) == 3,
         "no classification bars")
    screenshot(browser, "classify")
