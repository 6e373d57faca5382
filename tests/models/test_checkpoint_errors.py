"""Malformed checkpoints are a CheckpointError with one clear line (CLI exit 2), never an
"internal error" (exit 3); an unknown CLI option is a usage error (exit 2)."""

from __future__ import annotations

import io
import pickle
import zipfile

import pytest

from clipsift.cli.main import main


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _corrupt_middle(raw: bytes) -> bytes:
    """Overwrite bytes inside a stored member: the zip directory stays valid, a CRC fails."""
    out = bytearray(raw)
    mid = len(out) // 2
    out[mid : mid + 64] = bytes(64)
    return bytes(out)


def _short_record(path) -> bytes:
    """A TorchScript archive whose first tensor record holds too few bytes (valid CRCs)."""
    src = zipfile.ZipFile(path)
    entries = {}
    for name in src.namelist():
        data = src.read(name)
        if name.endswith("/data/0"):
            data = data[:4]
        entries[name] = data
    return _zip(entries)


MALFORMED = {
    "truncated": lambda raw, path: raw[: len(raw) // 2],
    "corrupted-member": lambda raw, path: _corrupt_middle(raw),
    "short-tensor-record": lambda raw, path: _short_record(path),
    "zip-not-torchscript": lambda raw, path: _zip({"notes/readme.txt": b"hello"}),
    "zip-with-garbage-pickle": lambda raw, path: _zip({"archive/code/__torch__.py": b"x",
                                                       "archive/data.pkl": b"\x80\x02garbage"}),
    "zip-with-other-pickle": lambda raw, path: _zip(
        {"archive/constants.pkl": b"", "archive/data.pkl": pickle.dumps([1, 2], protocol=2)}),
    "garbage-bytes": lambda raw, path: b"this is not a model file\n" * 200,
    "empty": lambda raw, path: b"",
}


@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_malformed_checkpoint_is_a_clear_checkpoint_error(kind, tiny_vit, tmp_path, capsys):
    src = tiny_vit["torchscript"]
    bad = tmp_path / f"{kind}.pt"
    bad.write_bytes(MALFORMED[kind](src.read_bytes(), src))
    code = main(["embed", "--text", "a dog", "-o", str(tmp_path / "out.parquet"),
                 "--model", f"TinyViT:{bad}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "internal error" not in err and "Traceback" not in err
    assert str(bad) in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out.parquet").exists()


def test_checkpoint_error_from_the_library(tiny_vit, tmp_path):
    from clipsift.errors import CheckpointError
    from clipsift.models.checkpoints import load_state_dict

    bad = tmp_path / "model.pt"
    bad.write_bytes(_corrupt_middle(tiny_vit["torchscript"].read_bytes()))
    with pytest.raises(CheckpointError, match="damaged"):
        load_state_dict(bad)
    bad.write_bytes(b"<html>404 not found</html>" * 10)  # a failed download saved as .pt
    with pytest.raises(CheckpointError, match="not a checkpoint file"):
        load_state_dict(bad)


@pytest.mark.parametrize("argv", [["classify", "--nope"], ["--nope"],
                                  ["index", "x", "--index", "y.db", "--no-such-flag", "1"]])
def test_unknown_option_is_a_usage_error(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "internal error" not in err and "bug" not in err
    option = next(a for a in argv if a.startswith("--no"))
    assert "No such option" in err and option in err
