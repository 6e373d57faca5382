"""File names that are not valid UTF-8 round-trip exactly through every output.

The convention (README "File names"): JSON and Parquet carry the name as text in `path`
(escaped when it is not UTF-8) and, only then, the exact bytes in `path_bytes` (base64 in
JSON, binary in Parquet). These tests decode that convention on their own (not through
clipsift.inputs.keys) and reopen every file from what the commands wrote.
"""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipsift.cli.main import main
from clipsift.server import ServerSettings, create_app
from tests.support.serverkit import LOOPBACK

NAMES = [b"caf\xe9.png", b"na\xefve-\xff\xfe.png", b"plain.png", b"\xe9t\xe9/deep-\xe0.png"]
TWINS = [b"twin-\xe9-1.png", b"twin-\xe9-2.png"]  # byte-identical
BROKEN = b"broken-\xe9.jpg"


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> bytes:
    """A folder (as bytes) of images with undecodable names; returns its bytes path."""
    root = os.fsencode(tmp_path_factory.mktemp("names"))
    for i, name in enumerate(NAMES):
        os.makedirs(os.path.dirname(os.path.join(root, name)), exist_ok=True)
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(png(i))
    for name in TWINS:
        with open(os.path.join(root, name), "wb") as fh:
            fh.write(png(99))
    with open(os.path.join(root, BROKEN), "wb") as fh:
        fh.write(b"\xff\xd8\xff not a jpeg")
    return root


def all_files(root: bytes) -> set[bytes]:
    return {os.path.join(root, n) for n in [*NAMES, *TWINS]}


def raw_from_json(record: dict, field: str = "path") -> bytes:
    """The documented rule: base64 `<field>_bytes` when present, else the UTF-8 text."""
    b64 = record.get(field + "_bytes")
    if b64:
        return base64.b64decode(b64)
    assert "\\x" not in record[field], f"escaped name without {field}_bytes: {record}"
    return record[field].encode("utf-8")


def raw_from_parquet(path, field: str = "path") -> list[bytes | None]:
    table = pq.read_table(path)
    texts, raws = table[field].to_pylist(), table[field + "_bytes"].to_pylist()
    return [r if r is not None else (t.encode("utf-8") if t is not None else None)
            for t, r in zip(texts, raws, strict=True)]


def same_file(raw: bytes, root: bytes) -> bytes:
    """Open the file by the recovered bytes; it must be one of ours, with its content."""
    assert os.path.isfile(raw), raw
    assert raw in all_files(root) | {os.path.join(root, BROKEN)}, raw
    return raw


def run_json(capsys, args: list[str]) -> list[dict]:
    capsys.readouterr()
    assert main(args) in (0, 1)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


@pytest.fixture(scope="module")
def index(folder, tmp_path_factory) -> str:
    db = str(tmp_path_factory.mktemp("names-index") / "i.db")
    assert main(["index", os.fsdecode(folder), "--index", db, "--model", "fake",
                 "--workers", "0", "-q"]) == 1  # the broken file is recorded: exit 1, not fatal
    return db


def test_index_search_and_errors_json_reopen_the_files(index, folder, capsys):
    hits = run_json(capsys, ["search", index, "a photo", "-k", "20", "--json"])
    assert {same_file(raw_from_json(h), folder) for h in hits} == all_files(folder)
    by_name = {raw_from_json(h): h for h in hits}
    assert "path_bytes" not in by_name[os.path.join(folder, b"plain.png")]
    assert by_name[os.path.join(folder, b"caf\xe9.png")]["path"].endswith("caf\\xe9.png")
    errors = run_json(capsys, ["errors", index, "--json"])
    assert [raw_from_json(e) for e in errors] == [os.path.join(folder, BROKEN)]


def test_export_embed_and_classify_reopen_the_files(index, folder, tmp_path, capsys):
    out = tmp_path / "export.parquet"
    assert main(["export", index, str(out)]) == 0
    assert {same_file(r, folder) for r in raw_from_parquet(out)} == all_files(folder)
    emb = tmp_path / "emb.parquet"
    main(["embed", os.fsdecode(folder), "--text", "a dog", "-o", str(emb), "--model", "fake",
          "--workers", "0"])
    rows = raw_from_parquet(emb, "source")
    assert rows[0] == b"a dog"
    assert {same_file(r, folder) for r in rows[1:]} == all_files(folder)
    lines = run_json(capsys, ["classify", os.fsdecode(folder), "--labels", "dog,cat",
                              "--model", "fake", "--workers", "0", "--json"])
    assert {same_file(raw_from_json(d), folder) for d in lines} == all_files(folder) | {
        os.path.join(folder, BROKEN)}


def test_dedup_and_unique_outputs_reopen_the_files(index, folder, tmp_path, capsys):
    out = tmp_path / "dups.parquet"
    groups = run_json(capsys, ["dedup", index, "--threshold", "1.0", "-o", str(out),
                               "--html", str(tmp_path / "d.html"), "--json"])
    twins = {os.path.join(folder, n) for n in TWINS}
    assert len(groups) == 1
    members = [base64.b64decode(b) for b in groups[0]["members_bytes"]]
    assert set(members) == twins and raw_from_json(groups[0], "keeper") in twins
    assert set(raw_from_parquet(out)) == twins
    assert "twin-\\xe9-1.png" in (tmp_path / "d.html").read_text(encoding="utf-8")
    uniq = tmp_path / "u.parquet"
    lines = run_json(capsys, ["unique", "--index", index, "-o", str(uniq), "--json"])
    assert {same_file(raw_from_json(d), folder) for d in lines} == all_files(folder)
    assert {raw_from_json(d, "nearest") for d in lines} <= all_files(folder)
    assert {same_file(r, folder) for r in raw_from_parquet(uniq, "nearest_path")} <= all_files(
        folder)


def test_filter_manifest_and_placed_copies_reopen_the_files(folder, tmp_path, capsys):
    out = tmp_path / "kept"
    code = main(["filter", os.fsdecode(folder), "--model", "fake", "--workers", "0",
                 "--keep", "a photo", "--top", "3", "--copy", "-o", str(out), "-q"])
    assert code in (0, 1)  # the broken file is reported
    manifest = out / "manifest.parquet"
    paths = raw_from_parquet(manifest)
    assert {same_file(r, folder) for r in paths} == all_files(folder) | {
        os.path.join(folder, BROKEN)}
    table = pq.read_table(manifest).to_pylist()
    placed = [r for r, row in zip(raw_from_parquet(manifest, "output_path"), table, strict=True)
              if row["decision"] == "keep"]
    kept = [r for r, row in zip(paths, table, strict=True) if row["decision"] == "keep"]
    assert len(placed) == 3
    for target, source in zip(placed, kept, strict=True):
        with open(target, "rb") as a, open(source, "rb") as b:
            assert a.read() == b.read()  # the copy sits under the exact (non-UTF-8) name
        assert os.path.basename(target) == os.path.basename(source)


def test_server_search_and_item_responses_reopen_the_files(index, folder):
    app = create_app(index, "fake", ServerSettings())
    with TestClient(app, base_url=LOOPBACK) as client:
        resp = client.post("/v1/search/text", json={"query": "a photo", "k": 20})
        assert resp.status_code == 200, resp.text
        hits = resp.json()["hits"]
        assert {same_file(raw_from_json(h), folder) for h in hits} == all_files(folder)
        cafe = next(h for h in hits if raw_from_json(h).endswith(b"caf\xe9.png"))
        assert cafe["name"] == "caf\\xe9.png"
        item = client.get(f"/v1/items/{cafe['id']}").json()
        assert raw_from_json(item) == os.path.join(folder, b"caf\xe9.png")
        thumb = client.get(cafe["thumbnail"])
        assert thumb.status_code == 200 and thumb.content[:3] == b"\xff\xd8\xff"


def test_human_output_shows_escaped_names(index, capsys):
    capsys.readouterr()
    assert main(["search", index, "a photo", "-k", "20"]) == 0
    out = capsys.readouterr().out
    assert "caf\\xe9.png" in out and "na\\xefve-\\xff\\xfe.png" in out
    assert Path(index).exists()
