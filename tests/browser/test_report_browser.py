"""Open the HTML evaluation report in headless Chromium and check that its parts render.

Without Chromium: skipped under plain pytest, a failure under scripts/test.sh (chrome.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

import clipsift
from clipsift.evaluation.datasets import embed_dataset, load_dataset
from clipsift.evaluation.evaluate import EvalOptions, evaluate
from clipsift.evaluation.report import write_report
from clipsift.htmlpage import stylesheet
from tests.browser import chrome
from tests.evaluation.test_evaluate import extract_cifar

pytestmark = pytest.mark.browser


@pytest.fixture()
def report(tmp_path) -> Path:
    """A report with every section: comparison, search, few-shot, mistakes, failures.

    One class folder name holds HTML, to check that user strings are escaped.
    """
    src = extract_cifar(tmp_path / "cifar", per_class=8, classes=4)
    root = tmp_path / "ds"
    shutil.copytree(src, root)
    (root / "cat").rename(root / "cat_<i>&x")
    (root / "bird" / "zz-broken.jpg").write_bytes(b"\xff\xd8 broken")
    ds = load_dataset(root)
    model = clipsift.load("fake")
    emb = embed_dataset(model, ds, workers=0)
    ev = evaluate(model, ds, emb, ["{}", "a photo of a {}."],
                  EvalOptions(search=True, few_shot=2))
    return write_report(ev, ds, tmp_path / "report.html")


def test_report_renders_in_chromium(report, tmp_path):
    text = report.read_text(encoding="utf-8")
    assert "cat &lt;i&gt;&amp;x" in text and "<i>&x" not in text
    assert "http://" not in text and "https://" not in text  # self-contained
    assert stylesheet() in text  # the look shared with the dedup page
    driver = chrome.start(tmp_path / "chrome-profile", 1300, 1000)
    try:
        driver.get(report.as_uri())
        js = driver.execute_script
        assert js("return document.title").startswith("Zero-shot evaluation")
        tables = js("return [...document.querySelectorAll('table')].map(t => "
                    "[t.className, t.tBodies[0].rows.length])")
        sizes = dict(tables)
        assert sizes["prompts"] == 2 and sizes["heldout"] == 4 and sizes["per-class"] == 4
        assert js("return document.querySelectorAll('table.prompts tr.best .badge').length") == 1
        plots = js("return [...document.querySelectorAll('img.plot')].map(i => "
                   "[i.complete, i.naturalWidth, i.getBoundingClientRect().width])")
        assert len(plots) == 3 and all(ok and w > 100 and shown > 100 for ok, w, shown in plots)
        thumbs = js("return [...document.querySelectorAll('img.thumb')].map(i => "
                    "[i.complete, i.naturalWidth])")
        assert thumbs and all(ok and w > 0 for ok, w in thumbs)
        assert js("return document.querySelectorAll('.mistake').length") == len(thumbs)
        failures = js("return document.querySelector('#failures').innerText")
        assert "zz-broken.jpg" in failures and "Unreadable images: 1" in failures
        assert "cat <i>&x" in js("return document.body.innerText")  # shown as text
        height = js("return document.body.scrollHeight")
        driver.set_window_size(1300, min(height + 40, 8000))
        shot = Path(os.environ.get("CLIPSIFT_REPORT_SCREENSHOT", tmp_path / "report.png"))
        assert driver.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
    finally:
        driver.quit()
