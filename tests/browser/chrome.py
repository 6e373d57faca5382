"""One way to start headless Chromium for the browser tests, and one rule for a missing one.

Run directly (`pytest`), a machine without Chromium, chromedriver or Selenium skips the
browser tests with the reason shown (`-ra`). Under the README's test command
(`scripts/test.sh`, hence CI) `CLIPSIFT_REQUIRE_BROWSER=1` is set and the same situation
FAILS the tests: a CI run that silently tested no browser would claim more than it checked.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REQUIRE_ENV = "CLIPSIFT_REQUIRE_BROWSER"
_INSTALL = "apt-get install chromium chromium-driver"


def required() -> bool:
    """True when a missing browser must fail the run (set by scripts/test.sh)."""
    return os.environ.get(REQUIRE_ENV, "").strip() not in ("", "0")


def unavailable(reason: str) -> None:
    """Skip (developer run) or fail (CI run) the calling test because of `reason`."""
    if required():
        pytest.fail(f"{reason}; {REQUIRE_ENV}=1 (scripts/test.sh, CI) requires the browser "
                    f"tests to run: install it ({_INSTALL}) or deselect them with "
                    "-m 'not browser'", pytrace=False)
    pytest.skip(reason)


def binaries() -> tuple[str, str]:
    """(chromium, chromedriver) paths; skips or fails the test when either is missing."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (chromium and driver):
        missing = " and ".join(n for n, p in (("chromium", chromium), ("chromedriver", driver))
                               if not p)
        unavailable(f"headless Chromium is not installed ({missing} not found; {_INSTALL})")
    return str(chromium), str(driver)


def start(profile: Path, width: int, height: int):
    """A headless Chromium driven by Selenium, with a throw-away profile folder.

    Args:
        profile: an empty folder for the browser profile.
        width, height: window size in CSS pixels.

    Returns:
        A `selenium.webdriver.Chrome`; the caller quits it.
    """
    chromium, driver = binaries()
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        unavailable("selenium is not installed (pip install -e '.[test]')")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic",
                 f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)
