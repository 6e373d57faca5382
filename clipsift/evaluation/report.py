"""A self-contained HTML report of an `Evaluation`: one file, images and plots embedded.

Sections: summary cards, the prompt-set comparison (best set highlighted), held-out
comparisons (prompt search winner, few-shot probe), a confusion-matrix heatmap, per-class
precision/recall bars and table, a grid of the most confident mistakes, unreadable images.
Plots are drawn with matplotlib (Agg backend) and embedded as base64 PNG; thumbnails are
base64 JPEG. Every user-provided string (class names, prompts, paths) is HTML-escaped.

    >>> html_text = render_report(ev, ds)
    >>> write_report(ev, ds, "report.html")
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
from html import escape
from pathlib import Path

import numpy as np

from clipsift.errors import UsageError
from clipsift.evaluation.datasets import Dataset
from clipsift.evaluation.evaluate import Evaluation, Metrics
from clipsift.htmlpage import render_page
from clipsift.inputs.keys import printable, split_key

_CSS = """
.bar{position:relative;height:8px;background:#eef2f7;border-radius:4px;min-width:120px}
.bar>span{position:absolute;left:0;top:0;bottom:0;background:var(--accent);border-radius:4px}
tr.best .bar>span{background:var(--good)}
.plots{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:18px;
align-items:start}
figure.narrow img{max-width:640px}
figure.full{overflow:auto;max-height:900px}figure.full img{max-width:none;margin:0}
.mistake{border:1px solid var(--line);border-radius:8px;overflow:hidden;background:#fff}
.mistake img{width:100%;height:130px;object-fit:contain;background:#e2e8f0;display:block}
.mistake .t{padding:6px 8px;font-size:12.5px;line-height:1.35}
.pred{color:var(--bad);font-weight:600}.true{color:var(--good);font-weight:600}
.fname{color:var(--muted);font-size:11.5px;overflow:hidden;text-overflow:ellipsis;
white-space:nowrap}
"""  # the report's own rules; the shared look is clipsift/assets/page.css


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


# ---- plots ----------------------------------------------------------------------------------
#: Resolution of every embedded plot (pixels per inch of figure size).
PLOT_DPI = 110
#: Confusion-matrix cells are drawn at least this many pixels wide, never resampled.
MIN_CELL_PX = 2


def _png(fig) -> str:
    """A matplotlib figure as a data: URI (PNG); closes the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PLOT_DPI, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(metrics: Metrics, classes: list[str]):
    """The row-normalised confusion heatmap as a matplotlib figure (the caller closes it).

    The colour of a cell is the share of the true class's images predicted as the column's
    class, and so is the number printed in it (with the image count below), and so is the
    colour bar's scale: one quantity, one mapping (`vmin=0`, `vmax=1`). Cells are drawn
    with nearest-neighbour sampling at `MIN_CELL_PX` pixels or more at `PLOT_DPI`, so a
    matrix of hundreds of classes is not averaged into paler colours than its values.

    Args:
        metrics: scores with the confusion counts (rows: true class).
        classes: class names, in the order of the matrix.

    Returns:
        A `matplotlib.figure.Figure` (axes 0: the matrix; axes 1: the colour bar).
    """
    plt = _pyplot()
    conf = metrics.confusion.astype(float)
    rows = conf.sum(axis=1, keepdims=True)
    share = np.divide(conf, rows, out=np.zeros_like(conf), where=rows > 0)
    c = len(classes)
    side = max(min(14.0, max(4.8, 0.42 * c + 2.2)), MIN_CELL_PX * c / PLOT_DPI / 0.7 + 2.2)
    fig, ax = plt.subplots(figsize=(side, side * 0.86))
    im = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest",
                   interpolation_stage="rgba")
    if c <= 60:
        ax.set_xticks(range(c), [n[:24] for n in classes], rotation=50, ha="right", fontsize=9)
        ax.set_yticks(range(c), [n[:24] for n in classes], fontsize=9)
    if c <= 20:
        for i in range(c):
            for j in range(c):
                if conf[i, j]:
                    ax.text(j, i, f"{share[i, j]:.0%}\n{int(conf[i, j])}", ha="center",
                            va="center", fontsize=8, linespacing=1.1,
                            color="white" if share[i, j] > 0.55 else "#1f2933")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    bar.ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    return fig


def confusion_plot(metrics: Metrics, classes: list[str]) -> str:
    """`confusion_figure` as a PNG data URI."""
    return _png(confusion_figure(metrics, classes))


def class_bars_plot(metrics: Metrics, limit: int = 40) -> str:
    """Per-class recall and precision, worst recall at the bottom (at most `limit` classes)."""
    plt = _pyplot()
    per = sorted(metrics.per_class, key=lambda m: m.recall, reverse=True)
    if len(per) > limit:
        per = per[-limit:]
    names = [m.name[:28] for m in per][::-1]
    rec = [m.recall for m in per][::-1]
    prec = [m.precision for m in per][::-1]
    y = np.arange(len(per))
    fig, ax = plt.subplots(figsize=(6.4, max(2.6, 0.34 * len(per) + 1.2)))
    ax.barh(y + 0.2, rec, height=0.38, color="#2563eb", label="recall")
    ax.barh(y - 0.2, prec, height=0.38, color="#94a3b8", label="precision")
    ax.set_yticks(y, names, fontsize=9)
    ax.set_xlim(0, 1)
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.grid(axis="x", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(loc="lower right", fontsize=9, frameon=False)
    return _png(fig)


def prompt_plot(ev: Evaluation) -> str:
    """Top-1 accuracy of each prompt set, the best one in green."""
    plt = _pyplot()
    names = [p.name if len(p.name) <= 40 else p.name[:39] + "…" for p in ev.prompt_sets]
    acc = [p.metrics.top1 for p in ev.prompt_sets]
    colors = ["#0f9d58" if i == ev.best_index else "#2563eb" for i in range(len(acc))]
    fig, ax = plt.subplots(figsize=(6.4, max(1.8, 0.45 * len(acc) + 0.9)))
    y = np.arange(len(acc))[::-1]
    ax.barh(y, acc, color=colors, height=0.6)
    for yi, a in zip(y, acc, strict=True):
        ax.text(a + 0.01, yi, f"{a:.1%}", va="center", fontsize=9)
    ax.set_yticks(y, names, fontsize=9)
    ax.set_xlim(0, min(1.0, max(acc) * 1.25 + 0.05))
    ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.set_xlabel("top-1 accuracy")
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


# ---- thumbnails -----------------------------------------------------------------------------
def thumbnail(dataset: Dataset, sample_index: int, size: int = 160) -> str | None:
    """A sample as a base64 JPEG data URI no larger than `size`, or None if unreadable."""
    from clipsift.inputs.thumbnails import thumbnail_data_url

    item = dataset.samples[sample_index].item
    try:
        source = item.path if item.path is not None else item.read_bytes()
    except OSError:
        return None
    return thumbnail_data_url(source, size, name=item.key)


# ---- sections -------------------------------------------------------------------------------
def _cards(ev: Evaluation) -> str:
    best = ev.best
    cards = [("Best prompt set", _pct(best.metrics.top1), f"top-1 with <code>{escape(best.name)}"
              "</code>"),
             ("Mean per-class recall", _pct(best.metrics.mean_recall), "balanced accuracy"),
             ("Images", f"{len(ev.rows):,}", f"{len(ev.classes)} classes"
              + (f", {len(ev.failures)} unreadable" if ev.failures else ""))]
    if best.metrics.top5 is not None:
        cards.insert(1, ("Top-5", _pct(best.metrics.top5), "true class among the 5 best"))
    if ev.heldout is not None:
        for row in ev.heldout.rows:
            if row.method != "zero-shot":
                cards.append((row.method.capitalize(), _pct(row.metrics.top1),
                              f"held-out, {escape(row.name)}"))
    body = "".join(f'<div class="card"><div class="k">{escape(k)}</div><div class="v">{v}</div>'
                   f'<div class="d">{d}</div></div>' for k, v, d in cards)
    return f'<div class="cards">{body}</div>'


def _bar(x: float) -> str:
    return f'<div class="bar"><span style="width:{100 * x:.1f}%"></span></div>'


def _prompt_section(ev: Evaluation) -> str:
    rows = []
    for i, p in enumerate(ev.prompt_sets):
        best = i == ev.best_index
        badge = '<span class="badge">best</span>' if best else ""
        m = p.metrics
        rows.append(f'<tr class="{"best" if best else ""}"><td><code>{escape(p.name)}</code>'
                    f'{badge}</td><td class="num">{p.per_class}</td>'
                    f'<td class="num">{_pct(m.top1)}</td><td>{_bar(m.top1)}</td>'
                    f'<td class="num">{_pct(m.top5)}</td><td class="num">{_pct(m.mean_recall)}'
                    "</td></tr>")
    return ("<section id=\"prompts\"><h2>Prompt sets compared</h2><p class=\"note\">Every set "
            f"scored on the same {len(ev.rows):,} image embeddings (encoded once). Zero-shot "
            "uses no labels, so all images count.</p><table class=\"prompts\"><thead><tr>"
            "<th>Prompt set</th><th class=\"num\">Prompts / class</th><th class=\"num\">Top-1"
            "</th><th></th><th class=\"num\">Top-5</th><th class=\"num\">Mean recall</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>"
            f'<figure class="narrow"><img class="plot" alt="top-1 per prompt set" '
            f'src="{prompt_plot(ev)}"></figure></section>')


def _heldout_section(ev: Evaluation) -> str:
    ho = ev.heldout
    if ho is None:
        return ""
    best_top1 = max(r.metrics.top1 for r in ho.rows)
    rows = "".join(
        f'<tr class="{"best" if r.metrics.top1 == best_top1 else ""}"><td>{escape(r.method)}</td>'
        f"<td><code>{escape(r.name)}</code></td><td class=\"num\">{_pct(r.metrics.top1)}</td>"
        f"<td>{_bar(r.metrics.top1)}</td><td class=\"num\">{_pct(r.metrics.mean_recall)}</td>"
        "</tr>" for r in ho.rows)
    out = ("<section id=\"heldout\"><h2>Held-out comparison</h2><p class=\"note\">Prompt "
           f"search and the few-shot probe only saw the tuning part ({ho.tune_size:,} images); "
           f"every row is scored on the same {ho.size:,} held-out images, so no number flatters "
           "itself.</p><table class=\"heldout\"><thead><tr><th>Method</th><th>Prompts / model"
           "</th><th class=\"num\">Top-1</th><th></th><th class=\"num\">Mean recall</th></tr>"
           f"</thead><tbody>{rows}</tbody></table>")
    if ho.candidates:
        win = '<span class="badge alt">winner</span>'
        cand = "".join(
            f'<tr class="{"best" if c.name == ho.winner else ""}"><td><code>{escape(c.name)}'
            f"</code>{win if c.name == ho.winner else ''}</td>"
            f"<td class=\"num\">{len(c.templates) or '—'}</td>"
            f"<td class=\"num\">{_pct(c.top1)}</td><td class=\"num\">{_pct(c.mean_recall)}</td>"
            "</tr>" for c in ho.candidates)
        out += ("<details><summary>All prompt-search candidates (scored on the tuning part)"
                "</summary><table class=\"candidates\"><thead><tr><th>Candidate</th>"
                "<th class=\"num\">Templates</th><th class=\"num\">Top-1 (tune)</th>"
                f"<th class=\"num\">Mean recall (tune)</th></tr></thead><tbody>{cand}</tbody>"
                "</table></details>")
    return out + "</section>"


def _full_note(classes: int) -> str:
    if classes <= 60:
        return ""
    return (f" (shown at full size, {MIN_CELL_PX}+ pixels per cell: scroll it, or zoom the "
            "page, rather than reading a shrunk copy)")


def _classes_section(ev: Evaluation) -> str:
    m = ev.best.metrics
    conf = m.confusion.copy()
    np.fill_diagonal(conf, 0)
    rows = []
    for i, c in enumerate(m.per_class):
        j = int(conf[i].argmax())
        confused = (f"{escape(ev.classes[j])} ({int(conf[i, j])})" if conf[i, j] else "—")
        rows.append(f"<tr><td>{escape(c.name)}</td><td class=\"num\">{c.support}</td>"
                    f"<td class=\"num\">{_pct(c.precision)}</td><td class=\"num\">"
                    f"{_pct(c.recall)}</td><td>{confused}</td></tr>")
    return ("<section id=\"classes\"><h2>Where it goes wrong</h2><p class=\"note\">With the "
            f"best prompt set, <code>{escape(ev.best.name)}</code>.</p><div class=\"plots\">"
            f'<figure class="{"full" if len(ev.classes) > 60 else ""}"><img class="plot" '
            f'alt="confusion matrix" src="{confusion_plot(m, ev.classes)}"><figcaption>'
            "Confusion matrix: a row per true class; colour (and percentage) is the share "
            "of its images predicted as the column's class, the small number their count"
            f"{_full_note(len(ev.classes))}</figcaption></figure>"
            f'<figure><img class="plot" alt="per-class recall and precision" '
            f'src="{class_bars_plot(m)}"><figcaption>Recall and precision per class'
            "</figcaption></figure></div><details><summary>Per-class table</summary>"
            "<table class=\"per-class\"><thead><tr><th>Class</th><th class=\"num\">Images</th>"
            "<th class=\"num\">Precision</th><th class=\"num\">Recall</th><th>Most often "
            f"mistaken for</th></tr></thead><tbody>{''.join(rows)}</tbody></table></details>"
            "</section>")


def _mistakes_section(ev: Evaluation, dataset: Dataset, limit: int) -> str:
    best = ev.best
    wrong = np.flatnonzero(best.predicted != ev.y_true)
    order = wrong[np.argsort(-best.confidence[wrong], kind="stable")][:limit]
    cards = []
    for pos in order:
        sample = int(ev.rows[pos])
        src = thumbnail(dataset, sample)
        key = dataset.samples[sample].key
        path, member = split_key(key)
        img = (f'<img class="thumb" alt="" src="{src}">' if src else
               '<img class="thumb" alt="unreadable">')
        name = "/".join(printable(member if member is not None else path).replace(
            os.sep, "/").split("/")[-2:])
        cards.append(
            f'<div class="mistake">{img}<div class="t"><div>predicted <span class="pred">'
            f"{escape(ev.classes[best.predicted[pos]])}</span> {_pct(best.confidence[pos])}</div>"
            f'<div>true <span class="true">{escape(ev.classes[ev.y_true[pos]])}</span> '
            f"{_pct(best.true_probability[pos])}</div><div class=\"fname\" title=\""
            f'{escape(printable(key))}">{escape(name)}</div></div></div>')
    if not cards:
        return ('<section id="mistakes"><h2>Most confident mistakes</h2><p class="note">'
                "No mistakes: every image was classified correctly.</p></section>")
    return ('<section id="mistakes"><h2>Most confident mistakes</h2><p class="note">'
            f"The {len(cards)} wrong predictions the model was surest about (of "
            f"{len(wrong):,}), with the probability given to the predicted and the true class."
            f'</p><div class="grid">{"".join(cards)}</div></section>')


def _failures_section(ev: Evaluation) -> str:
    if not ev.failures and not ev.notes:
        return ""
    items = "".join(f"<li>{escape(printable(k))}: {escape(e)}</li>" for k, e in ev.failures[:200])
    more = f"<li>… and {len(ev.failures) - 200} more</li>" if len(ev.failures) > 200 else ""
    notes = "".join(f"<p class=\"note\">{escape(n)}</p>" for n in ev.notes)
    return (f'<section id="failures"><h2>Unreadable images: {len(ev.failures)}</h2>{notes}'
            f'<p class="note">These were left out of every number above.</p>'
            f'<ul class="fail">{items}{more}</ul></section>')


def render_report(ev: Evaluation, dataset: Dataset, *, title: str | None = None,
                  mistakes: int = 24) -> str:
    """The whole report as one HTML string (no external resources)."""
    from clipsift import __version__

    name = title or f"Zero-shot evaluation: {Path(ev.dataset).name or ev.dataset}"
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    sub = (f"model <b>{escape(ev.model)}</b> · {escape(ev.dataset)} ({escape(ev.kind)}) · "
           f"{len(ev.rows):,} images, {len(ev.classes)} classes · {when}")
    parts = [_cards(ev), _prompt_section(ev), _heldout_section(ev), _classes_section(ev),
             _mistakes_section(ev, dataset, mistakes), _failures_section(ev)]
    enc = ev.embedding
    foot = (f"clipsift {escape(__version__)} · images encoded this run: {enc['encoded']:,}, "
            f"from cache: {enc['from_cache']:,}, from index: {enc['from_index']:,}")
    return render_page(name, sub, "".join(parts), foot, _CSS)


def write_report(ev: Evaluation, dataset: Dataset, path: str | os.PathLike, **kwargs) -> Path:
    """Render the report and write it to `path` (UTF-8); returns the path.

    Raises:
        UsageError: the file cannot be written.
    """
    out = Path(path).expanduser()
    text = render_report(ev, dataset, **kwargs)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as ex:
        raise UsageError(f"cannot write report {str(out)!r}: {ex.strerror or ex}") from ex
    return out
