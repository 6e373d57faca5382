"""One headless Chromium per browser test module (tests/browser/chrome.py)."""

from __future__ import annotations

import pytest

from tests.browser import chrome
from tests.browser.pagekit import WAIT


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    driver = chrome.start(tmp_path_factory.mktemp("chrome-profile"), 1280, 900)
    driver.set_page_load_timeout(WAIT)
    driver.set_script_timeout(WAIT)
    yield driver
    driver.quit()
