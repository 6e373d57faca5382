"""One look for clipsift's self-contained HTML pages: the evaluation report
(`clipsift.evaluation.report`) and the dedup page (`clipsift.sift.dedup_page`).

The shared stylesheet is `clipsift/assets/page.css`; `render_page` inlines it with the
page's own rules around a header (title, subtitle), the body and a footer. Pages are one
file each: styles inline, images as `data:` URLs, nothing fetched from a network.

    >>> html_text = render_page("Near-duplicates", "12 groups", "<section>...</section>",
    ...                         "clipsift 0.1.0")
"""

from __future__ import annotations

from functools import cache
from html import escape
from importlib import resources


@cache
def stylesheet() -> str:
    """The shared CSS of the pages (read once from the package)."""
    return resources.files("clipsift").joinpath("assets/page.css").read_text(encoding="utf-8")


def render_page(title: str, subtitle_html: str, body_html: str, footer_html: str,
                css: str = "") -> str:
    """A complete HTML document in the shared look.

    Args:
        title: the page title (plain text; escaped here).
        subtitle_html: the line under the title (HTML; the caller escapes user strings).
        body_html: the main content (HTML; sections, cards...).
        footer_html: the footer line (HTML).
        css: the page's own rules, after the shared stylesheet.

    Returns:
        The document as one string.
    """
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\""
            "viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{stylesheet()}{css}</style></head><body>"
            f"<header><div class=\"wrap\"><h1>{escape(title)}</h1><div class=\"sub\">"
            f"{subtitle_html}</div></div></header><main class=\"wrap\">{body_html}</main>"
            f"<footer>{footer_html}</footer></body></html>")
