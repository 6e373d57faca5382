"""A FIFO, socket or device where an image was expected is an error at once, never a hang
(issue 21): decoding, reading bytes (hashing for the index), folders, file lists, tar shards
and thumbnails. Every call runs under a deadline (`tests.support.nohang.within`)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from PIL import Image

from clipsift.engines.local import embed_items
from clipsift.errors import ImageError
from clipsift.inputs import files
from clipsift.inputs.files import NotRegularFileError, open_regular
from clipsift.inputs.images import open_image
from clipsift.inputs.sources import Item, iter_items
from tests.support.fake_model import FakeModel
from tests.support.nohang import within

pytestmark = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")


@pytest.fixture()
def odd(tmp_path: Path):
    """A folder with one real image, a FIFO and a unix socket named like images."""
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (20, 10), (200, 30, 30)).save(folder / "a.jpg")
    os.mkfifo(folder / "b-fifo.jpg")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(folder / "c-socket.png"))
    yield folder
    sock.close()


def _errors(inputs: list[str], fifos: list[Path]) -> dict[str, str | None]:
    def run() -> dict[str, str | None]:
        return {os.path.basename(r.item.key.replace("::", "/")): r.error
                for b in embed_items(FakeModel(), iter_items(inputs), workers=0) for r in b}

    return within(10, run, fifos)


def test_open_image_refuses_fifo_socket_and_device(odd: Path) -> None:
    for name, kind in (("b-fifo.jpg", "named pipe"), ("c-socket.png", "socket")):
        with pytest.raises(ImageError, match=kind):
            within(5, lambda n=name: open_image(odd / n), [odd / name])
    with pytest.raises(ImageError, match="character device"):
        within(5, lambda: open_image("/dev/zero"))


def test_open_does_not_block_when_the_file_became_a_fifo_after_the_check(
        odd: Path, monkeypatch) -> None:
    monkeypatch.setattr(files, "check_regular", lambda path: None)  # the race: check passed
    with pytest.raises(NotRegularFileError, match="named pipe"):
        within(5, lambda: open_regular(odd / "b-fifo.jpg"), [odd / "b-fifo.jpg"])


def test_item_read_bytes_fails_fast(odd: Path) -> None:
    fifo = odd / "b-fifo.jpg"
    with pytest.raises(OSError, match="named pipe"):
        within(5, lambda: Item(str(fifo), str(fifo)).read_bytes(), [fifo])
    shard = Item("x.tar::a.jpg", None, size=10, shard=str(fifo), offset=0)
    with pytest.raises(OSError, match="named pipe"):
        within(5, shard.read_bytes, [fifo])


def test_fifo_and_socket_in_a_folder_are_item_errors(odd: Path) -> None:
    errors = _errors([str(odd)], [odd / "b-fifo.jpg"])
    assert errors["a.jpg"] is None
    assert "named pipe" in errors["b-fifo.jpg"]
    assert "socket" in errors["c-socket.png"]


def test_file_list_naming_fifos_and_an_explicit_fifo_shard(odd: Path, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "shard.tar")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{odd / 'a.jpg'}\n{odd / 'b-fifo.jpg'}\n{tmp_path / 'shard.tar'}\n")
    errors = _errors([str(listing)], [odd / "b-fifo.jpg", tmp_path / "shard.tar"])
    assert errors["a.jpg"] is None
    assert "named pipe" in errors["b-fifo.jpg"] and "named pipe" in errors["shard.tar"]
    direct = _errors([str(tmp_path / "shard.tar")], [tmp_path / "shard.tar"])
    assert "named pipe" in direct["shard.tar"]


def test_index_records_fifos_as_errors(odd: Path, tmp_path: Path) -> None:
    from clipsift.index.index import Index

    listing = tmp_path / "list.txt"
    os.mkfifo(tmp_path / "listed.jpg")
    listing.write_text(f"{tmp_path / 'listed.jpg'}\n")
    fifos = [odd / "b-fifo.jpg", tmp_path / "listed.jpg"]
    with Index(tmp_path / "i.db", FakeModel()) as idx:
        summary = within(30, lambda: idx.add([str(odd), str(listing)], workers=0), fifos)
        reasons = {os.path.basename(r.key): r.error for r in idx.errors()}
    assert (summary.added, summary.errors) == (1, 3)
    assert "named pipe" in reasons["b-fifo.jpg"] and "named pipe" in reasons["listed.jpg"]
    assert "socket" in reasons["c-socket.png"]


def test_thumbnails_of_a_fifo_fail_fast(odd: Path, tmp_path: Path) -> None:
    from clipsift.server.thumbs import Thumbnails

    fifo = odd / "b-fifo.jpg"
    thumbs = Thumbnails(8, 10_000_000)
    with pytest.raises(ImageError, match="named pipe"):
        within(5, lambda: thumbs.get(1, str(fifo), "h", 64), [fifo])
    os.mkfifo(tmp_path / "gone.tar")  # a shard replaced by a FIFO
    with pytest.raises(ImageError, match="named pipe"):
        within(5, lambda: thumbs.get(2, f"{tmp_path / 'gone.tar'}::a.jpg", "h", 64),
               [tmp_path / "gone.tar"])
