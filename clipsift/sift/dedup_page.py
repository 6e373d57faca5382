"""The dedup HTML page: near-duplicate groups for people to review, in the report's look.

One self-contained file (`clipsift.htmlpage`: shared stylesheet inline, thumbnails as
base64 JPEG, no network assets). It says how the keeper was chosen (the keep policy, and
per group the criterion that decided against the runner-up), links every image to its
full file (`file://`; a tar member links to its shard and says so), shows readable paths
(`clipsift.inputs.keys.printable`) and the similarities: per group the minimum and mean
over all pairs of members, per member its cosine to the keeper (single linkage can put a
member below the threshold; such members are marked).

    >>> write_groups_html(find_duplicates(coll, 0.95), coll, "dups.html")
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np

from clipsift.htmlpage import render_page
from clipsift.inputs.keys import key_name, printable, split_key
from clipsift.sift.dedup import SIM_TOLERANCE, Collection, DedupResult, DupGroup, rank_key

#: What each keeper criterion prefers, in the page's words.
KEEP_WORDS = {"resolution": "the most pixels (width × height)",
              "oldest": "the oldest file (earliest modification time)",
              "newest": "the newest file (latest modification time)",
              "largest-file": "the largest file (bytes)",
              "smallest-file": "the smallest file (bytes)",
              "path": "the first path in alphabetical order"}
#: Groups up to this size get the exact minimum over all pairs (the mean is always exact).
PAIRWISE_MAX = 4000

_CSS = """
.policy ol{margin:6px 0 10px;padding-left:22px}.policy li{margin:2px 0}
.group h2 .n{color:var(--muted);font-weight:400;font-size:15px}
.why{margin:0 0 12px;font-size:14px}.why b{font-weight:650}
.stats{color:var(--muted);font-size:13px;margin:-6px 0 12px}
.members{display:grid;grid-template-columns:repeat(auto-fill,minmax(180px,1fr));gap:12px}
.member{border:1px solid var(--line);border-radius:8px;overflow:hidden;background:#fff}
.member.keeper{border:2px solid var(--good);box-shadow:0 0 0 3px var(--best)}
.member a.img{display:block;background:#e2e8f0}
.member img{width:100%;height:150px;object-fit:contain;display:block}
.member .t{padding:6px 8px;font-size:12.5px;line-height:1.4}
.member .name,.member .dir{overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.member .name{font-weight:600}.member .dir,.member .facts{color:var(--muted);font-size:11.5px}
.member .badge{margin-left:0}.sim{font-variant-numeric:tabular-nums;font-weight:650}
.sim.low{color:var(--warn)}.lost{color:var(--muted);font-size:11.5px}
.facts span{white-space:nowrap}
"""


@dataclass(frozen=True)
class GroupStats:
    """Cosine similarities within one group.

    Attributes:
        min: the least similar pair of members (None when the group is over PAIRWISE_MAX).
        mean: the mean over all pairs of members.
    """

    min: float | None
    mean: float


def group_stats(vectors: np.ndarray, group: DupGroup) -> GroupStats:
    """Minimum and mean cosine similarity over all pairs of the group's members.

    Args:
        vectors: float32 [N, D] unit rows of the collection.
        group: a group of 2+ members.

    Returns:
        `GroupStats`; the mean is exact for any size (from the sum of the vectors), the
        minimum is computed for groups of up to PAIRWISE_MAX members.
    """
    x = vectors[list(group.members)].astype(np.float64)  # [m, D]
    m = len(x)
    total = x.sum(axis=0)
    mean = (float(total @ total) - float((x * x).sum())) / (m * (m - 1))
    if m > PAIRWISE_MAX:
        return GroupStats(None, mean)
    sims = x @ x.T  # [m, m]
    np.fill_diagonal(sims, np.inf)
    return GroupStats(float(sims.min()), mean)


def deciding_criterion(coll: Collection, keep: tuple[str, ...], keeper: int, other: int
                       ) -> str:
    """The first criterion of the policy on which `keeper` ranks ahead of `other`;
    "path" when every criterion ties (the path breaks ties)."""
    ours, theirs = rank_key(coll, keep, keeper), rank_key(coll, keep, other)
    for name, a, b in zip(keep, ours, theirs, strict=False):
        if a != b:
            return name
    return "path"


def _fact(coll: Collection, criterion: str, row: int) -> str:
    """A row's value for a criterion, as text."""
    if criterion == "resolution":
        return (f"{coll.width[row]}×{coll.height[row]}" if coll.width[row] >= 0
                else "unknown size")
    if criterion in ("oldest", "newest"):
        t = float(coll.mtime[row])
        return ("unknown date" if np.isnan(t)
                else dt.datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S"))
    if criterion in ("largest-file", "smallest-file"):
        return _bytes(int(coll.size[row]))
    return printable(coll.keys[row])


def _bytes(n: int) -> str:
    if n < 0:
        return "unknown size"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def _why(coll: Collection, keep: tuple[str, ...], group: DupGroup) -> str:
    """One sentence: which criterion chose the keeper over the runner-up, with values."""
    ranked = sorted(group.members, key=lambda r: rank_key(coll, keep, r))
    keeper, runner = ranked[0], ranked[1]
    crit = deciding_criterion(coll, keep, keeper, runner)
    name = escape(printable(key_name(coll.keys[runner])))
    if crit == "path" and "path" not in keep:
        return (f"Every criterion ({escape(', '.join(keep))}) ties with the runner-up "
                f"<i>{name}</i>: the path decided (first in alphabetical order).")
    return (f"Decided by <b>{escape(crit)}</b> — {escape(KEEP_WORDS[crit])}: "
            f"<b>{escape(_fact(coll, crit, keeper))}</b> against "
            f"{escape(_fact(coll, crit, runner))} for the runner-up <i>{name}</i>.")


def _folder(text: str, limit: int = 48) -> str:
    """A folder for a card: the whole path when short, else "…/" and its last parts."""
    if len(text) <= limit:
        return text
    parts = text.split("/")
    tail = parts[-1]
    for part in reversed(parts[1:-1]):
        if len(part) + len(tail) + 3 > limit:
            break
        tail = f"{part}/{tail}"
    return "…/" + tail


def _link(key: str) -> tuple[str, str]:
    """(href, note) for an image: its file:// URL and "", or for a tar member its shard's
    URL and a note saying so (plain text)."""
    path, member = split_key(key)
    href = Path(path).absolute().as_uri()
    if member is None:
        return href, ""
    return href, f"in tar file {printable(os.path.basename(path))}"


def _member(coll: Collection, result: DedupResult, group: DupGroup, k: int,
            thumbnail: Callable[[str], str]) -> str:
    row, sim = group.members[k], group.similarity[k]
    key = coll.keys[row]
    path, member = split_key(key)
    url, note = _link(key)
    href = escape(url)
    src = thumbnail(key)
    img = f'<img src="{src}" alt="">' if src else '<img alt="unreadable">'
    shown = printable(member if member is not None else path)
    folder = _folder(os.path.dirname(printable(path))) if member is None else note
    low = sim < result.threshold - SIM_TOLERANCE
    if k == 0:
        badge = '<span class="badge">keep</span>'
        lost = ""
    else:
        warn = ('<span class="badge warn" title="linked through other members (single '
                'linkage)">below threshold</span>') if low else ""
        badge = (f'<span class="sim{" low" if low else ""}" title="cosine similarity to the '
                 f'keeper">{sim:.4f}</span> to keeper {warn}')
        crit = deciding_criterion(coll, result.keep, group.keeper, row)
        value = "alphabetical order" if crit == "path" else _fact(coll, crit, row)
        lost = f'<div class="lost">lost on {escape(crit)}: {escape(value)}</div>'
    facts = " · ".join(f"<span>{escape(_fact(coll, c, row))}</span>"
                       for c in ("resolution", "largest-file", "oldest"))
    title = escape(printable(key))
    opens = escape(f"open the {note}" if note else f"open {printable(key)}")
    return (f'<figure class="member{" keeper" if k == 0 else ""}"><a class="img" '
            f'href="{href}" title="{opens}">{img}</a><div class="t"><div>{badge}</div>'
            f'<div class="name" title="{title}"><a href="{href}">{escape(os.path.basename(shown))}'
            f'</a></div><div class="dir" title="{title}">{escape(folder)}</div>'
            f'<div class="facts">{facts}</div>{lost}</div></figure>')


def _group(coll: Collection, result: DedupResult, g_id: int, group: DupGroup,
           max_members: int, thumbnail: Callable[[str], str]) -> str:
    stats = group_stats(coll.vectors, group)
    low = "—" if stats.min is None else f"{stats.min:.4f}"
    shown = group.members[:max_members]
    more = len(group.members) - len(shown)
    cards = "".join(_member(coll, result, group, k, thumbnail) for k in range(len(shown)))
    tail = f'<p class="note">… and {more} more members in the Parquet file.</p>' if more else ""
    return (f'<section class="group" id="group-{g_id}"><h2>Group {g_id} '
            f'<span class="n">· {len(group.members)} images</span></h2>'
            f'<p class="why">Kept <b>{escape(printable(key_name(coll.keys[group.keeper])))}'
            f"</b>. {_why(coll, result.keep, group)}</p>"
            f'<p class="stats">Similarity within the group: min <span class="sim">{low}</span>'
            f', mean <span class="sim">{stats.mean:.4f}</span> (cosine, {_pairs(group)})</p>'
            f'<div class="members">{cards}</div>{tail}</section>')


def _pairs(group: DupGroup) -> str:
    m = len(group.members)
    if m == 2:
        return "one pair"
    return f"all {m * (m - 1) // 2:,} pairs" + (
        "; min over that many pairs not computed" if m > PAIRWISE_MAX else "")


def _threshold(result: DedupResult) -> str:
    return f"{result.threshold:.6g}"


def _policy(result: DedupResult) -> str:
    steps = "".join(f"<li><code>{escape(c)}</code>: {escape(KEEP_WORDS[c])}</li>"
                    for c in result.keep)
    return ('<section class="policy" id="policy"><h2>How the keeper was chosen</h2>'
            '<p class="note">In each group one image is kept (outlined in green). The keep '
            "policy compares members criterion by criterion, in this order; the first one "
            f"that differs decides:</p><ol>{steps}</ol><p class=\"note\">If all of them tie, "
            "the path decides (alphabetical). Images join a group when their cosine "
            f"similarity is at least {_threshold(result)} or through a chain of such pairs "
            "(single linkage), so a member can be less similar to the keeper than the "
            "threshold: it is marked. Click an image to open the full file (an image "
            "inside a tar file links to the tar file).</p></section>")


def _cards(result: DedupResult) -> str:
    cards = [("Groups", f"{len(result.groups):,}", "of 2 or more images"),
             ("Duplicates", f"{result.duplicates:,}", "images that are not keepers"),
             ("Images compared", f"{result.items:,}", f"{result.pairs:,} similar pairs"),
             ("Threshold", _threshold(result), f"cosine, {escape(result.method)} search")]
    body = "".join(f'<div class="card"><div class="k">{k}</div><div class="v">{v}</div>'
                   f'<div class="d">{d}</div></div>' for k, v, d in cards)
    return f'<div class="cards">{body}</div>'


def _thumbnails(size: int) -> Callable[[str], str]:
    """key -> a base64 JPEG data URL of the image at `key` (file or tar member), '' when it
    cannot be read (a blank on the page, never fatal)."""
    from clipsift.inputs.reader import KeyReader
    from clipsift.inputs.thumbnails import thumbnail_data_url

    reader = KeyReader()

    def make(key: str) -> str:
        try:
            item = reader.item(key)
            source = item.path if item.path is not None else item.read_bytes()
        except OSError:
            return ""
        return thumbnail_data_url(source, size, name=key) or ""

    return make


def render_groups_html(result: DedupResult, coll: Collection, *, max_groups: int = 200,
                       max_members: int = 60, thumb: int = 160) -> str:
    """The dedup page as one HTML string (see the module docstring).

    Args:
        result: groups from `find_duplicates` over `coll`.
        coll: the collection the groups index into.
        max_groups: groups shown (the largest first); the rest are counted.
        max_members: members shown per group.
        thumb: thumbnail size in pixels (longest side).

    Returns:
        A complete, self-contained HTML document.
    """
    from clipsift import __version__

    thumbnail = _thumbnails(thumb)
    groups = "".join(_group(coll, result, g_id, g, max_members, thumbnail)
                     for g_id, g in enumerate(result.groups[:max_groups]))
    if len(result.groups) > max_groups:
        groups += (f'<section><p class="note">{len(result.groups) - max_groups:,} more groups '
                   "are in the Parquet file.</p></section>")
    if not result.groups:
        groups = ('<section><h2>No near-duplicates</h2><p class="note">No two images reach '
                  f"a cosine similarity of {_threshold(result)}.</p></section>")
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    sub = (f"model <b>{escape(coll.model or 'unknown')}</b> · {result.items:,} images · "
           f"threshold {_threshold(result)} · keep {escape(','.join(result.keep))} · {when}")
    foot = f"clipsift {escape(__version__)} · search {result.seconds:.1f} s"
    title = f"Near-duplicates: {len(result.groups):,} groups"
    body = _cards(result) + _policy(result) + groups
    return render_page(title, sub, body, foot, _CSS)


def write_groups_html(result: DedupResult, coll: Collection, path: str | os.PathLike, *,
                      max_groups: int = 200, max_members: int = 60, thumb: int = 160) -> Path:
    """Write `render_groups_html` to `path` (UTF-8; folders created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_groups_html(result, coll, max_groups=max_groups,
                                      max_members=max_members, thumb=thumb), encoding="utf-8")
    return out
