"""One thumbnail maker (clipsift.inputs.thumbnails) behind the server, the dedup page and
the evaluation report; items read back by key (clipsift.inputs.keys)."""

from __future__ import annotations

import base64
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsift.errors import ImageError
from clipsift.inputs.reader import KeyReader
from clipsift.inputs.thumbnails import make_thumbnail, thumbnail_bytes, thumbnail_data_url
from tests.support.imagekinds import reference_rgb, write_kinds


@pytest.fixture(scope="module")
def kinds(tmp_path_factory) -> dict[str, Path]:
    return write_kinds(tmp_path_factory.mktemp("thumbkinds"))


def _png(size, colour) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, "PNG")
    return out.getvalue()


def test_thumbnail_size_orientation_and_alpha(kinds):
    assert make_thumbnail(kinds["big.jpg"], 128).size == (128, 85)
    assert make_thumbnail(kinds["big-rotated.jpg"], 120).size == (80, 120)  # EXIF applied
    assert make_thumbnail(kinds["rotated.jpg"], 500).size == (100, 160)  # never enlarged
    alpha = make_thumbnail(kinds["alpha.png"], 200)
    assert np.array_equal(np.asarray(alpha), np.asarray(reference_rgb(kinds["alpha.png"])))
    with pytest.raises(ImageError):
        make_thumbnail(b"not an image", 64)


def test_thumbnail_formats_and_data_url(kinds):
    for fmt in ("JPEG", "PNG"):
        data = thumbnail_bytes(kinds["cmyk.jpg"], 50, fmt=fmt)
        with Image.open(io.BytesIO(data)) as im:
            assert (im.format, im.mode, max(im.size)) == (fmt, "RGB", 50)
    url = thumbnail_data_url(kinds["palette.png"], 40, fmt="PNG")
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == thumbnail_bytes(kinds["palette.png"], 40,
                                                                      fmt="PNG")
    assert thumbnail_data_url(b"garbage", 40) is None
    with pytest.raises(ValueError, match="GIF"):
        thumbnail_bytes(kinds["cmyk.jpg"], 50, fmt="GIF")


def test_server_dedup_and_report_use_the_one_maker(kinds, tmp_path):
    from clipsift.engines.local import LocalEngine
    from clipsift.evaluation.datasets import load_dataset
    from clipsift.evaluation.report import thumbnail
    from clipsift.server.thumbs import Thumbnails
    from clipsift.sift.dedup import collection_from_inputs, find_duplicates
    from clipsift.sift.dedup_page import write_groups_html
    from tests.support.fake_model import FakeModel

    photo = kinds["rotated.jpg"]
    assert Thumbnails(4, 10**8).get(1, str(photo), "h", 64) == thumbnail_bytes(photo, 64)

    folder = tmp_path / "cls" / "a"
    folder.mkdir(parents=True)
    for name in ("x.jpg", "y.jpg"):  # a duplicate pair
        (folder / name).write_bytes(photo.read_bytes())
    coll = collection_from_inputs(FakeModel(), [str(folder)], engine=LocalEngine(workers=0))
    page = write_groups_html(find_duplicates(coll, 0.99), coll, tmp_path / "d.html", thumb=90)
    assert thumbnail_data_url(str(folder / "x.jpg"), 90) in page.read_text()

    (tmp_path / "cls" / "b").mkdir()
    (tmp_path / "cls" / "b" / "z.png").write_bytes(kinds["alpha.png"].read_bytes())
    ds = load_dataset(str(tmp_path / "cls"))
    assert thumbnail(ds, 0) == thumbnail_data_url(ds.samples[0].item.path, 160)


def test_key_reader_files_members_and_rewritten_shards(tmp_path):
    from clipsift.server.thumbs import Thumbnails

    red, blue, green = _png((8, 8), (255, 0, 0)), _png((9, 9), (0, 0, 255)), _png((7, 7),
                                                                                  (0, 255, 0))

    def shard(path: Path, members: dict[str, bytes]) -> None:
        with tarfile.open(path, "w:gz" if path.suffix == ".gz" else "w") as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))

    reader = KeyReader()
    tar, gz = tmp_path / "s.tar", tmp_path / "s.tar.gz"
    shard(tar, {"a.png": red, "b.png": blue})
    shard(gz, {"b.png": blue})
    (tmp_path / "f.png").write_bytes(red)
    assert reader.read(str(tmp_path / "f.png")) == red
    assert reader.read(f"{tar}::b.png") == blue
    assert reader.read(f"{gz}::b.png") == blue
    thumbs = Thumbnails(8, 10**8)
    first = thumbs.reader(f"{tar}::b.png")
    shard(tar, {"long-name-first.png": red + red, "b.png": green})  # offsets move
    assert reader.read(f"{tar}::b.png") == green  # a new table, not stale offsets
    assert first == blue and thumbs.reader(f"{tar}::b.png") == green
    with pytest.raises(OSError, match="no longer"):
        reader.read(f"{tar}::a.png")
