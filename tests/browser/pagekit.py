"""Helpers for the search-page browser tests: waits, what the page shows, screenshots.

Set CLIPSIFT_SCREENSHOTS=/some/folder to keep screenshots of the page."""

from __future__ import annotations

import os
from pathlib import Path

WAIT = 20


def wait(driver, condition, message: str):
    """Poll `condition(driver)` every 0.1 s until it is truthy (its value) or WAIT passes."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition, message)


def loaded_images(driver) -> int:
    """How many result thumbnails finished loading with real pixels (naturalWidth > 0)."""
    return driver.execute_script(
        "const imgs = [...document.querySelectorAll('#results img')];"
        "return imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0)"
        " ? imgs.length : 0;")


def texts(driver, selector: str) -> list[str]:
    """textContent of matching elements (cards fade in, so .text may still be empty)."""
    return [e.get_attribute("textContent") for e in driver.find_elements("css selector",
                                                                         selector)]


def status(driver) -> str:
    return driver.find_element("id", "status").text


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("CLIPSIFT_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def open_page(driver, url: str) -> None:
    """Load the page at `url` and wait until it shows the server's model and index size."""
    driver.get(url)
    wait(driver, lambda d: "images" in d.find_element("id", "server-info").text,
         "the page did not show the server's model and index size")
