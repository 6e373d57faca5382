"""clipsift.inputs.sources: folders, globs, tar shards and file lists become a lazy item stream."""

from __future__ import annotations

import io
import os
import tarfile
import time
from pathlib import Path

import pytest

from clipsift.errors import UsageError
from clipsift.inputs.sources import Item, count_items, iter_items, iter_tar


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    touch(root / "b.jpg", b"bbb")
    touch(root / "a.PNG", b"aa")
    touch(root / "notes.txt")
    touch(root / ".hidden.jpg")
    touch(root / ".cache" / "thumb.jpg")
    touch(root / "sub" / "c.jpeg")
    touch(root / "sub" / "deeper" / "d.webp")
    touch(root / "sub" / "readme.md")
    return root


def keys(items) -> list[str]:
    return [it.key for it in items]


def test_folder_walk_sorted_recursive_skips_hidden(tree: Path) -> None:
    found = list(iter_items([str(tree)]))
    rel = [os.path.relpath(k, tree) for k in keys(found)]
    assert rel == ["a.PNG", "b.jpg", "sub/c.jpeg", "sub/deeper/d.webp"]
    first = found[1]
    assert first.path == first.key == str(tree / "b.jpg")
    assert first.size == 3 and first.mtime == pytest.approx((tree / "b.jpg").stat().st_mtime)
    assert first.read_bytes() == b"bbb"
    assert keys(iter_items([str(tree)])) == keys(found)  # deterministic


def test_single_path_is_one_input(tree: Path) -> None:
    assert keys(iter_items(str(tree))) == keys(iter_items([tree]))


def test_folder_not_recursive(tree: Path) -> None:
    rel = [os.path.basename(k) for k in keys(iter_items([str(tree)], recursive=False))]
    assert rel == ["a.PNG", "b.jpg"]


def test_custom_extensions(tree: Path) -> None:
    found = keys(iter_items([str(tree)], extensions={".WEBP"}))
    assert [os.path.basename(k) for k in found] == ["d.webp"]


def test_explicit_file_kept_whatever_its_extension(tree: Path) -> None:
    found = list(iter_items([str(tree / "sub" / "readme.md"), str(tree / "b.jpg")]))
    assert keys(found) == [str(tree / "sub" / "readme.md"), str(tree / "b.jpg")]


def test_relative_inputs_become_absolute_keys(tree: Path, monkeypatch) -> None:
    monkeypatch.chdir(tree)
    assert keys(iter_items(["b.jpg"])) == [str(tree / "b.jpg")]


def test_glob_patterns(tree: Path) -> None:
    found = keys(iter_items([str(tree / "**" / "*.jp*g")]))
    assert [os.path.relpath(k, tree) for k in found] == ["b.jpg", "sub/c.jpeg"]
    with pytest.raises(UsageError, match="no files match"):
        list(iter_items([str(tree / "*.gif")]))


def test_missing_input_names_it(tmp_path: Path) -> None:
    missing = str(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="nowhere"):
        list(iter_items([missing]))


def test_literal_bracket_name_is_not_a_glob(tmp_path: Path) -> None:
    path = touch(tmp_path / "shot [1].jpg")
    assert keys(iter_items([str(path)])) == [str(path)]


def make_shard(path: Path, members: dict[str, bytes], fmt: str = "w") -> Path:
    with tarfile.open(path, fmt) as tf:
        dir_info = tarfile.TarInfo("samples")
        dir_info.type = tarfile.DIRTYPE
        tf.addfile(dir_info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
    return path


SHARD_MEMBERS = {
    "samples/000001.jpg": b"one" * 300,
    "samples/000001.txt": b"a caption",
    "samples/000002.png": b"two" * 700,
    "samples/.DS_Store": b"junk",
    "./samples/000003.webp": b"three",
}


def test_tar_shard_members_read_by_offset(tmp_path: Path) -> None:
    shard = make_shard(tmp_path / "shard-000.tar", SHARD_MEMBERS)
    found = list(iter_items([str(shard)]))
    assert keys(found) == [
        f"{shard}::samples/000001.jpg",
        f"{shard}::samples/000002.png",
        f"{shard}::./samples/000003.webp",
    ]
    for item in found:
        name = item.key.split("::", 1)[1]
        assert item.path is None and item.shard == str(shard)
        assert item.offset is not None and item.data is None  # nothing held in memory
        assert item.size == len(SHARD_MEMBERS[name]) and item.mtime == 1_700_000_000
        assert item.read_bytes() == SHARD_MEMBERS[name]


def test_compressed_shard_and_shard_glob(tmp_path: Path) -> None:
    make_shard(tmp_path / "s-000.tar", {"x/1.jpg": b"1"})
    make_shard(tmp_path / "s-001.tar.gz", {"x/2.jpg": b"22"}, fmt="w:gz")
    found = list(iter_items([str(tmp_path / "s-*")]))
    assert [k.rsplit("/", 1)[1] for k in keys(found)] == ["1.jpg", "2.jpg"]
    assert found[1].read_bytes() == b"22"


def test_corrupt_shard_is_a_usage_error(tmp_path: Path) -> None:
    bad = touch(tmp_path / "bad.tar", b"this is not a tar file at all" * 40)
    with pytest.raises(UsageError, match=r"bad\.tar"):
        list(iter_tar(str(bad)))


def test_big_shard_streams_headers(tmp_path: Path) -> None:
    members = {f"s/{i:06d}.jpg": b"x" for i in range(3000)}
    shard = make_shard(tmp_path / "big.tar", members)
    it = iter_items([str(shard)])
    first = next(it)
    assert first.key.endswith("000000.jpg")
    assert sum(1 for _ in it) == 2999


def test_file_list(tree: Path, tmp_path: Path) -> None:
    lst = tmp_path / "lists" / "todo.txt"
    lst.parent.mkdir()
    rel = os.path.relpath(tree / "b.jpg", lst.parent)
    lst.write_bytes(
        f"# my picks\n{rel}\r\n\n{tree / 'sub' / 'c.jpeg'}\n../photos/gone.jpg\n".encode()
    )
    found = list(iter_items([str(lst)]))
    assert keys(found) == [str(tree / "b.jpg"), str(tree / "sub" / "c.jpeg"),
                           str(tmp_path / "photos" / "gone.jpg")]
    assert found[0].size == 3
    assert found[2].size is None  # missing: recorded as a per-item error downstream


def test_non_utf8_names(tmp_path: Path) -> None:
    folder = os.fsencode(tmp_path / "pics")
    os.mkdir(folder)
    raw = os.path.join(folder, b"caf\xe9.jpg")
    fd = os.open(raw, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"latin-1 name")
    os.close(fd)

    (item,) = iter_items([os.fsdecode(folder)])
    assert os.fsencode(item.key) == raw
    assert item.read_bytes() == b"latin-1 name"

    lst = os.path.join(os.fsencode(tmp_path), b"list.lst")
    with open(lst, "wb") as fh:
        fh.write(b"pics/caf\xe9.jpg\n")
    (listed,) = iter_items([os.fsdecode(lst)])
    assert listed.key == item.key and listed.read_bytes() == b"latin-1 name"

    shard = tmp_path / "names.tar"
    with tarfile.open(shard, "w", format=tarfile.GNU_FORMAT) as tf:
        tf.add(os.fsdecode(raw), arcname=os.fsdecode(b"caf\xe9.jpg"))
    (member,) = iter_items([str(shard)])
    assert member.key.endswith(os.fsdecode(b"::caf\xe9.jpg"))
    assert member.read_bytes() == b"latin-1 name"


def test_symlinks(tmp_path: Path, tree: Path) -> None:
    outside = tmp_path / "outside"
    touch(outside / "e.jpg")
    (tree / "link").symlink_to(outside, target_is_directory=True)
    (tree / "loop").symlink_to(tree, target_is_directory=True)
    (tree / "b-link.jpg").symlink_to(tree / "b.jpg")

    plain = [os.path.relpath(k, tree) for k in keys(iter_items([str(tree)]))]
    assert "link/e.jpg" not in plain and "b-link.jpg" not in plain

    start = time.perf_counter()
    followed = [os.path.relpath(k, tree) for k in keys(iter_items([str(tree)],
                                                                  follow_symlinks=True))]
    assert time.perf_counter() - start < 5
    assert "link/e.jpg" in followed and "b-link.jpg" in followed
    assert not any(k.startswith("loop/") for k in followed)  # the loop is not entered twice


def test_count_items_and_item_is_hashable(tree: Path) -> None:
    assert count_items([str(tree)]) == 4
    item = Item(key="/a.jpg", path="/a.jpg", size=1, mtime=2.0)
    assert {item: 1}[Item(key="/a.jpg", path="/a.jpg", size=1, mtime=2.0)] == 1


def test_iterates_lazily(tree: Path) -> None:
    gen = iter_items([str(tree), str(tree / "nonexistent")])
    assert next(gen).key.endswith("a.PNG")  # the missing input is reported when reached
    with pytest.raises(UsageError):
        list(gen)


def test_unreadable_folder_is_reported_not_skipped(tree: Path, monkeypatch) -> None:
    import errno

    from clipsift.inputs.sources import Walk, WalkError

    sub = next(p for p in sorted(tree.iterdir()) if p.is_dir() and not p.name.startswith("."))
    real = os.scandir

    def scandir(p=".", *args):
        if os.path.abspath(os.fspath(p)) == str(sub):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(sub))
        return real(p, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    seen: list[WalkError] = []
    keys = [it.key for it in iter_items([tree], on_error=seen.append)]
    assert seen == [WalkError(str(sub), os.strerror(errno.EIO), errno.EIO)]
    assert keys and not any(k.startswith(str(sub) + os.sep) for k in keys)
    walk = Walk([tree])
    assert [it.key for it in walk] == keys and walk.errors == seen
    assert [it.key for it in walk] == keys and len(walk.errors) == 1  # a second pass
    assert [it.key for it in iter_items([tree])] == keys  # no callback: as before
