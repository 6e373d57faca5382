"""The dedup HTML page: styled like the report, explains the keeper, links the full images,
readable paths, group similarities. Groups are built from chosen vectors over real files
(a plain file, a name that is not UTF-8, a tar member) so every number is known."""

from __future__ import annotations

import html
import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsift.htmlpage import stylesheet
from clipsift.sift.dedup import Collection, find_duplicates
from clipsift.sift.dedup_page import PAIRWISE_MAX, group_stats, render_groups_html

THRESHOLD = float(np.cos(np.deg2rad(12)))
LATIN1 = os.fsdecode(b"caf\xe9 #1.jpg")  # a name that is not valid UTF-8


def unit(deg: float, axis: int) -> np.ndarray:
    """A unit vector at `deg` degrees in the plane of dimensions (axis, axis + 1)."""
    v = np.zeros(8, np.float32)
    v[axis], v[axis + 1] = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    return v


def jpeg(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> str:
    Image.new("RGB", size, colour).save(path, "JPEG")
    return str(path)


def build_scene(folder: Path) -> Collection:
    """Images in `folder` and a collection over them with chosen vectors; three groups:

    - chain: a (100x80) at 0°, b (200x160) at 10°, c (300x200) at 20° -> c kept on
      resolution, b is the runner-up, a is below the threshold to c (single linkage);
    - tie: twins x1, x2 of the same size and date -> the path decides;
    - tar: a tar member and a file whose name is not UTF-8, the member older.
    """
    keys = [jpeg(folder / "a.jpg", (100, 80), (200, 30, 30)),
            jpeg(folder / "b.jpg", (200, 160), (200, 40, 30)),
            jpeg(folder / "c.jpg", (300, 200), (190, 30, 40)),
            jpeg(folder / "x1.jpg", (64, 64), (20, 120, 200)),
            jpeg(folder / "x2.jpg", (64, 64), (20, 120, 200))]
    member = folder / "t.jpg"
    jpeg(member, (90, 60), (30, 160, 60))
    with tarfile.open(folder / "shard.tar", "w") as tar:
        tar.add(member, arcname="in/t.jpg")
    member.unlink()
    keys.append(f"{folder / 'shard.tar'}::in/t.jpg")
    keys.append(jpeg(folder / LATIN1, (90, 60), (30, 160, 60)))
    vectors = np.stack([unit(0, 0), unit(10, 0), unit(20, 0), unit(0, 2), unit(0, 2),
                        unit(0, 4), unit(3, 4)])
    n = len(keys)
    sizes = [(100, 80), (200, 160), (300, 200), (64, 64), (64, 64), (90, 60), (90, 60)]
    return Collection(keys, vectors, np.array([w for w, _ in sizes]),
                      np.array([h for _, h in sizes]),
                      np.array([1.7e9] * 5 + [1.5e9, 1.6e9]), np.full(n, 1000, np.int64),
                      model="fake")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[Collection, Path]:
    folder = tmp_path_factory.mktemp("dedup page")  # a space in the folder name, too
    return build_scene(folder), folder


@pytest.fixture(scope="module")
def page(scene) -> str:
    coll, _ = scene
    return render_groups_html(find_duplicates(coll, THRESHOLD), coll)


def groups_of(page: str) -> dict[str, str]:
    """Group section HTML by its first member's file name."""
    sections = re.findall(r'<section class="group".*?</section>', page, re.S)
    return {re.search(r"<b>(.*?)</b>", s).group(1): s for s in sections}


def test_page_is_styled_offline_and_self_contained(page):
    assert stylesheet() in page  # the report's look (clipsift/assets/page.css)
    assert "<script" not in page and "http://" not in page and "https://" not in page
    srcs = re.findall(r'<img[^>]*src="([^"]*)"', page)
    assert len(srcs) == 7 and all(s.startswith("data:image/jpeg;base64,") for s in srcs)


def test_page_explains_how_each_keeper_was_chosen(page):
    assert "How the keeper was chosen" in page
    assert "<code>resolution</code>: the most pixels" in page
    assert "<code>oldest</code>: the oldest file" in page
    groups = groups_of(page)
    assert set(groups) == {"c.jpg", "x1.jpg", "t.jpg"}
    assert ("Decided by <b>resolution</b> — the most pixels (width × height): <b>300×200</b> "
            "against 200×160 for the runner-up <i>b.jpg</i>") in groups["c.jpg"]
    assert "the path decided" in groups["x1.jpg"] and "<i>x2.jpg</i>" in groups["x1.jpg"]
    assert "Decided by <b>oldest</b>" in groups["t.jpg"]
    # each member that was not kept says on what it lost
    assert groups["c.jpg"].count("lost on resolution: ") == 2


def test_page_shows_group_and_member_similarities(scene, page):
    coll, _ = scene
    result = find_duplicates(coll, THRESHOLD)
    groups = groups_of(page)
    for group in result.groups:
        x = coll.vectors[list(group.members)].astype(np.float64)
        sims = x @ x.T
        pairs = sims[np.triu_indices(len(x), 1)]
        text = groups[Path(coll.keys[group.keeper].split("::")[-1]).name]
        assert f'min <span class="sim">{pairs.min():.4f}</span>' in text
        assert f'mean <span class="sim">{pairs.mean():.4f}</span>' in text
        for row, sim in zip(group.members[1:], group.similarity[1:], strict=True):
            assert np.isclose(sim, sims[0, list(group.members).index(row)], atol=1e-6)
            assert f">{sim:.4f}</span> to keeper" in text
    chain = groups["c.jpg"]
    assert chain.count("below threshold</span>") == 1  # a: 20° from c, linked through b
    assert f"{np.cos(np.deg2rad(20)):.4f}" in chain


def test_page_links_full_images_with_readable_paths(scene, page):
    coll, folder = scene
    for key in coll.keys:
        if "::" in key:
            continue
        assert f'href="{html.escape(Path(key).as_uri())}"' in page
    latin1 = Path(folder / LATIN1).as_uri()
    assert "%E9%20%231.jpg" in latin1 and f'href="{latin1}"' in page  # the exact bytes
    assert "caf\\xe9 #1.jpg" in page  # shown escaped, readable
    tar_section = groups_of(page)["t.jpg"]
    assert f'href="{(folder / "shard.tar").as_uri()}"' in tar_section
    assert "in tar file shard.tar" in tar_section


def test_group_stats_mean_is_exact_and_large_groups_skip_the_min():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((50, 16)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    from clipsift.sift.dedup import DupGroup

    group = DupGroup(tuple(range(50)), (1.0,) * 50)
    sims = v.astype(np.float64) @ v.T.astype(np.float64)
    pairs = sims[np.triu_indices(50, 1)]
    stats = group_stats(v, group)
    assert np.isclose(stats.mean, pairs.mean(), atol=1e-9) and stats.min == pytest.approx(
        pairs.min())
    big = np.repeat(v[:1], PAIRWISE_MAX + 1, axis=0)
    assert group_stats(big, DupGroup(tuple(range(len(big))), (1.0,) * len(big))).min is None


def test_no_groups_says_so(scene):
    coll, _ = scene
    three = Collection(coll.keys[:3], coll.vectors[:3], coll.width[:3], coll.height[:3],
                       coll.mtime[:3], coll.size[:3])  # 10° apart, nothing at 0.999
    page = render_groups_html(find_duplicates(three, 0.999), three)
    assert "No near-duplicates" in page and "Near-duplicates: 0 groups" in page


def test_names_are_escaped_once(tmp_path):
    """File, folder and tar names holding HTML are shown as text, escaped exactly once."""
    folder = tmp_path / "<dir>"
    folder.mkdir()
    keys = [jpeg(folder / f"<b>&{i}.jpg", (40, 30), (90, 90, 90)) for i in range(2)]
    member = tmp_path / "m.jpg"
    jpeg(member, (40, 30), (90, 90, 90))
    with tarfile.open(tmp_path / "t&t.tar", "w") as tar:
        tar.add(member, arcname="<m>.jpg")
    keys.append(f"{tmp_path / 't&t.tar'}::<m>.jpg")
    n = len(keys)
    coll = Collection(keys, np.stack([unit(0, 0)] * n), np.full(n, 40), np.full(n, 30),
                      np.array([3.0, 2.0, 1.0]), np.full(n, 10, np.int64))
    page = render_groups_html(find_duplicates(coll, 0.99), coll)
    assert "<b>&0" not in page and "<m>" not in page and "<dir>" not in page
    assert "&lt;b&gt;&amp;0.jpg" in page and "&lt;dir&gt;" in page
    assert "in tar file t&amp;t.tar" in page and "&amp;amp;" not in page
    assert page.count('<img src="data:image/jpeg;base64,') == 3
