"""A missing browser skips the browser tests under plain pytest and fails them under the
README's test command (scripts/test.sh sets CLIPSIFT_REQUIRE_BROWSER=1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.browser import chrome

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def no_browser(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # neither chromium nor chromedriver on it


def test_missing_browser_skips_with_the_reason(no_browser, monkeypatch):
    monkeypatch.delenv(chrome.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium and chromedriver not found"):
        chrome.binaries()


def test_missing_browser_fails_when_required(no_browser, monkeypatch):
    monkeypatch.setenv(chrome.REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match=r"Chromium is not installed.*requires"):
        chrome.binaries()


def test_the_readme_test_command_requires_the_browser_and_runs_slow_tests():
    script = (ROOT / "scripts" / "test.sh").read_text()
    assert f"export {chrome.REQUIRE_ENV}=1" in script
    assert "-m 'slow or not slow'" in script
    assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
