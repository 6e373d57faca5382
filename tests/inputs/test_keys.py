"""The one rule for keys (clipsift.inputs.keys): shard::member parsing, text/JSON/Parquet/
SQLite forms of names that are not valid UTF-8, and their way back."""

from __future__ import annotations

import json
import os
import sqlite3
import tarfile

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from clipsift.index.index import Index
from clipsift.inputs.keys import (
    is_text,
    join_key,
    json_fields,
    json_list_fields,
    key_from_json,
    key_from_sql,
    key_name,
    keys_from_columns,
    parquet_columns,
    printable,
    split_key,
    sql_value,
)
from clipsift.inputs.sources import iter_items
from clipsift.server.service import item_name
from clipsift.sift.placement import relative_name
from tests.support.fake_model import FakeModel

CAFE = os.fsdecode(b"/p/caf\xe9.png")  # "/p/caf\udce9.png"


@pytest.mark.parametrize(("key", "want"), [
    ("/d/a.jpg", ("/d/a.jpg", None)),
    ("/d/a::b.jpg", ("/d/a::b.jpg", None)),  # "::" in a plain file name
    ("/d/s.tar::x/1.jpg", ("/d/s.tar", "x/1.jpg")),
    ("/d/s.TAR.GZ::1.jpg", ("/d/s.TAR.GZ", "1.jpg")),
    ("/d/s.tgz::a::b.jpg", ("/d/s.tgz", "a::b.jpg")),  # "::" in a member name
    ("/d/x::y.tar::m.png", ("/d/x::y.tar", "m.png")),  # "::" in the shard's folder
])
def test_split_key(key, want):
    assert split_key(key) == want


_part = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1).filter(
    lambda s: "\x00" not in s)


@given(folder=_part, member=_part, suffix=st.sampled_from([".tar", ".tar.gz", ".tgz"]))
def test_join_then_split_is_the_identity(folder, member, suffix):
    shard = f"/{folder}/shard{suffix}"
    assert split_key(join_key(shard, member)) == (shard, member)


def test_every_parser_agrees_on_a_member_with_colons(tmp_path):
    shard = tmp_path / "s.tar"
    img = tmp_path / "a.png"
    img.write_bytes(b"\x89PNG not really")
    with tarfile.open(shard, "w") as tf:
        tf.add(img, arcname="sub/x::y.png")
    (item,) = iter_items([shard])
    assert split_key(item.key) == (str(shard), "sub/x::y.png")
    assert key_name(item.key) == item_name(item.key) == "x::y.png"
    assert relative_name(item.key, []) == "sub/x::y.png"


def test_a_plain_file_with_colons_is_not_taken_for_a_gone_tar_member(tmp_path):
    """`index` removes an entry when its file is gone: the file, not "the part before ::"."""
    (tmp_path / "a").mkdir()
    odd = tmp_path / "a" / "x::y.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(odd)
    other = tmp_path / "b"
    other.mkdir()
    Image.new("RGB", (32, 32), (30, 30, 200)).save(other / "z.png")
    with Index(tmp_path / "i.db", FakeModel()) as idx:
        idx.add([odd], workers=0)
        idx.add([other], workers=0)  # a run over another folder keeps what still exists
        assert {r.key for r in idx.store.iter_rows()} == {str(odd), str(other / "z.png")}


def test_text_forms_of_a_name_that_is_not_utf8():
    assert not is_text(CAFE) and is_text("/p/café.png")
    assert printable(CAFE) == "/p/caf\\xe9.png" and printable("/p/café.png") == "/p/café.png"
    assert printable("a\ud800b") == "a\\ud800b"  # never raises, even on a lone surrogate
    rec = json.loads(json.dumps(json_fields("path", CAFE)))
    assert rec == {"path": "/p/caf\\xe9.png", "path_bytes": "L3AvY2Fm6S5wbmc="}
    assert key_from_json(rec) == CAFE
    assert json_fields("path", "/p/café.png") == {"path": "/p/café.png"}
    both = json_list_fields("m", ["/ok.png", CAFE])
    assert both["m_bytes"][0] is None and key_from_json({"p": both["m"][1], "p_bytes":
                                                         both["m_bytes"][1]}, "p") == CAFE
    assert "m_bytes" not in json_list_fields("m", ["/ok.png"])


def test_parquet_and_sqlite_forms_round_trip():
    keys = ["/ok.png", CAFE, None]
    table = pa.table(parquet_columns("path", keys))
    assert table["path_bytes"].to_pylist() == [None, b"/p/caf\xe9.png", None]
    assert keys_from_columns(table["path"].to_pylist(), table["path_bytes"].to_pylist()) == keys
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (key TEXT PRIMARY KEY)")
    db.executemany("INSERT INTO t VALUES (?)", [(sql_value(k),) for k in keys[:2]])
    got = [key_from_sql(r[0]) for r in db.execute("SELECT key FROM t WHERE key IN (?, ?)",
                                                  [sql_value(k) for k in keys[:2]])]
    assert sorted(got) == sorted(keys[:2])
