"""Every Parquet file clipsift writes names the model that made its vectors the same way:
`clipsift.model`, `clipsift.dim`, `clipsift.fingerprint`."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq

from clipsift.cli.main import main
from tests.support.fake_model import FakeModel


def test_every_parquet_file_carries_the_model_keys(photos, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in photos[:6]:
        shutil.copy(p, folder / p.name)
    shutil.copy(photos[0], folder / "copy.jpg")  # a duplicate for dedup
    db, out = str(tmp_path / "i.db"), tmp_path / "out"
    out.mkdir()
    commands = {
        "embed": ["embed", str(folder), "-o", str(out / "embed.parquet"), "-m", "fake"],
        "export": ["export", db, str(out / "export.parquet")],
        "filter": ["filter", "--index", db, "--keep", "a fish", "--threshold", "0", "-q",
                   "-o", str(out / "filter.parquet")],
        "dedup": ["dedup", "--index", db, "--threshold", "0.99", "-o",
                  str(out / "dedup.parquet")],
        "unique": ["unique", "--index", db, "-o", str(out / "unique.parquet")],
    }
    assert main(["index", str(folder), "--index", db, "-m", "fake", "-q", "--workers", "0"]) == 0
    for name, args in commands.items():
        assert main(args) == 0, (name, capsys.readouterr().err)
    metas = {name: pq.read_schema(out / f"{name}.parquet").metadata for name in commands}
    for name, meta in metas.items():
        assert meta.get(b"clipsift.model") == b"fake", name
        assert meta.get(b"clipsift.dim") == b"64", name
        assert b"clipsift.fingerprint" in meta, name
    digest = FakeModel().fingerprint.digest.encode()
    assert {name: meta[b"clipsift.fingerprint"] for name, meta in metas.items()} == \
        dict.fromkeys(commands, digest)
