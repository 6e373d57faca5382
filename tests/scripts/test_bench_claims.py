"""Claims match measurements: every section of the benchmark pages that states figures
cites a results file committed under bench/results/, and every results file cited in the
README or the docs exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RESULTS = re.compile(r"bench/results/[\w.\-]+\.(?:json|md)")
# a measured quantity: a number with a unit of time, rate, size or ratio
MEASURE = re.compile(
    r"\d[\d,.]*\s*(?:ms|s\b|×|x\b|%|images/s|img/s|req/s|strings/s|items/s|GFLOP/s|"
    r"[KMGT]B\b|B/vector|bytes)")
PAGES = [*sorted((ROOT / "docs").glob("benchmarks*.md")), ROOT / "docs" / "scaling.md"]


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, body) for each part of a Markdown page (text before a heading included)."""
    parts, title, body = [], "(top)", []
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if line.startswith("#") and not in_code:
            parts.append((title, "\n".join(body)))
            title, body = line.lstrip("# ").strip(), []
        else:
            body.append(line)
    parts.append((title, "\n".join(body)))
    return parts


NO_FIGURES = "<!-- no measured figures:"  # a section's numbers are settings, said why


def has_figures(body: str) -> bool:
    """A table row holding a number, or a measured quantity in the prose (code excluded)."""
    if NO_FIGURES in body:
        return False
    prose = re.sub(r"```.*?```", "", body, flags=re.S)
    rows = [ln for ln in prose.splitlines() if ln.startswith("|") and not set(ln) <= set("|-: ")]
    return any(re.search(r"\d", r) for r in rows[1:]) or bool(MEASURE.search(prose))


def test_the_benchmark_pages_exist():
    assert [p.name for p in PAGES] == ["benchmarks-search.md", "benchmarks-server.md",
                                       "benchmarks.md", "scaling.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_section_with_figures_cites_an_existing_results_file(page):
    missing = []
    for title, body in sections(page.read_text(encoding="utf-8")):
        cited = RESULTS.findall(body)
        if has_figures(body) and not any((ROOT / c).is_file() for c in cited):
            missing.append(title)
    assert not missing, f"{page.name}: sections with figures but no results file: {missing}"


def test_every_cited_results_file_exists():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    cited = {(p.name, c) for p in pages for c in RESULTS.findall(p.read_text(encoding="utf-8"))}
    assert cited, "no results file is cited at all"
    gone = sorted((name, c) for name, c in cited if not (ROOT / c).is_file())
    assert not gone, f"cited but not committed: {gone}"


def test_the_readme_speed_claims_cite_results_files():
    speed = dict(sections((ROOT / "README.md").read_text(encoding="utf-8")))["Speed"]
    cited = RESULTS.findall(speed)
    assert has_figures(speed) and cited and all((ROOT / c).is_file() for c in cited)


def test_test_files_named_in_the_docs_exist():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    named = {m for p in pages for m in re.findall(r"tests/[\w/]+\.py", p.read_text("utf-8"))}
    assert named and not sorted(n for n in named if not (ROOT / n).is_file())


def test_no_figures_come_from_temporary_files():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text(encoding="utf-8")
        assert not re.search(r"--(?:json-out|json|out)\s+/tmp/\S+\.json", text), page.name


def test_the_checker_sees_an_uncited_figure():
    page = "# Speed\n\nIt ran at 12.5 images/s.\n\n## Other\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    flagged = [t for t, b in sections(page) if has_figures(b) and not RESULTS.findall(b)]
    assert flagged == ["Speed", "Other"]
