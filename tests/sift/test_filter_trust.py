"""`clipsift filter` never resumes a work folder with other vectors (same model name, other
weights), and never skips an unreadable folder silently."""

from __future__ import annotations

import errno
import os
import shutil
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import clipsift
from clipsift.cli.main import main
from clipsift.engines.local import LocalEngine
from clipsift.errors import UsageError
from clipsift.sift.filter import run_filter
from clipsift.sift.rules import Prompt, Rule
from tests.sift.test_filter import extract_cifar
from tests.support.fake_model import FakeModel
from tests.support.tinymodels import save_named_folder

LOCAL = LocalEngine(workers=0)
RULE = Rule(keep=(Prompt("a photo of a cat"),), threshold=0.0)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """2 CIFAR classes x 6 images."""
    return extract_cifar(tmp_path_factory.mktemp("small") / "data", ("cat", "ship"), 6)


def test_work_folder_is_not_resumed_with_other_weights(small, tmp_path):
    a = clipsift.load(str(save_named_folder(tmp_path / "a" / "mymodel", 1)))
    b = clipsift.load(str(save_named_folder(tmp_path / "b" / "mymodel", 2)))
    assert a.name == b.name
    out = tmp_path / "out"
    stop = threading.Event()
    first = run_filter(a, RULE, out, inputs=[small], engine=LOCAL, batch_size=4, stop=stop,
                       progress=lambda p: stop.set())
    assert first.interrupted and first.scored_now == 4
    with pytest.raises(UsageError, match=r"fingerprint .*--fresh"):
        run_filter(b, RULE, out, inputs=[small], engine=LOCAL, batch_size=4)
    redo = run_filter(b, RULE, out, inputs=[small], engine=LOCAL, fresh=True)
    assert (redo.scored_before, redo.scored_now) == (0, 12)
    meta = pq.read_schema(out / "manifest.parquet").metadata
    assert meta[b"clipsift.fingerprint"].decode() == b.fingerprint.digest
    assert (meta[b"clipsift.model"], meta[b"clipsift.dim"]) == (b"mymodel", b"32")


def test_unreadable_folder_is_reported_in_summary_and_manifest(small, tmp_path, monkeypatch,
                                                                capsys):
    data = tmp_path / "data"
    shutil.copytree(small, data)
    locked = data / "ship"
    real = os.scandir

    def scandir(p=".", *args):
        if os.path.abspath(os.fspath(p)) == str(locked):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(locked))
        return real(p, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    s = run_filter(FakeModel(), RULE, tmp_path / "m.parquet", inputs=[data], engine=LOCAL)
    table = pq.read_table(tmp_path / "m.parquet").to_pandas()
    row = table[table["path"] == str(locked)]
    assert len(row) == 1 and row["decision"].item() == "error"
    assert os.strerror(errno.EIO) in row["error"].item()
    assert s.unreadable == {str(locked): f"cannot list folder: {os.strerror(errno.EIO)}"}
    assert (s.items, s.errors) == (7, 1)
    code = main(["filter", str(data), "--model", "fake", "--keep", "a cat", "--threshold", "0",
                 "-o", str(tmp_path / "cli.parquet"), "-q"])
    assert code == 1 and str(locked) in capsys.readouterr().err
    monkeypatch.undo()  # readable again: the next run adds its images
    again = run_filter(FakeModel(), RULE, tmp_path / "m.parquet", inputs=[data], engine=LOCAL)
    assert (again.items, again.errors, again.unreadable) == (12, 0, {})
