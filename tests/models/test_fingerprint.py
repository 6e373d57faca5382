"""`ClipModel.fingerprint` for every backend: transformers folders (wherever they live),
the weights digest cache keyed by checkpoint file, and what is and is not compared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import clipsift
from clipsift.models import fingerprint as fpmod
from clipsift.models.fingerprint import Fingerprint, precision_class
from tests.support.fake_model import FakeModel


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPSIFT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "fingerprints.json"


def test_hf_fingerprint_follows_the_weights_not_the_folder(hf_clip_dir, tmp_path, cache):
    a = clipsift.load(f"hf:{hf_clip_dir}")
    copy = shutil.copytree(hf_clip_dir, tmp_path / "elsewhere" / "clip")
    b = clipsift.load(f"hf:{copy}")
    assert a.fingerprint == b.fingerprint  # same model in another folder
    assert a.fingerprint.source != b.fingerprint.source
    proc = copy / "preprocessor_config.json"
    cfg = json.loads(proc.read_text())
    cfg["image_mean"] = [0.5, 0.5, 0.5]
    proc.write_text(json.dumps(cfg))
    c = clipsift.load(f"hf:{copy}")
    assert c.fingerprint.weights == a.fingerprint.weights
    assert c.fingerprint.preprocess != a.fingerprint.preprocess and c.fingerprint != a.fingerprint


def test_chinese_clip_and_open_clip_tokenizers_differ(hf_cn_clip_dir, hf_clip_dir):
    cn = clipsift.load(f"hf:{hf_cn_clip_dir}").fingerprint
    en = clipsift.load(f"hf:{hf_clip_dir}").fingerprint
    assert len({cn.tokenizer, en.tokenizer}) == 2 and cn != en


def test_weights_digest_is_cached_by_checkpoint_file(tiny_vit, cache, monkeypatch):
    name = f"TinyViT-quickgelu:{tiny_vit['safetensors']}"
    first = clipsift.load(name).fingerprint
    assert cache.is_file() and len(json.loads(cache.read_text())) == 1

    def no_hashing(*args, **kwargs):
        raise AssertionError("the weights were hashed again")

    monkeypatch.setattr(fpmod, "state_dict_digest", no_hashing)  # backends digest through it
    assert clipsift.load(name).fingerprint == first  # from the cache
    tiny_vit["safetensors"].touch()  # another mtime: the file may have changed
    with pytest.raises(AssertionError, match="hashed again"):
        _ = clipsift.load(name).fingerprint


def test_fingerprint_round_trip_and_comparison():
    fp = FakeModel().fingerprint
    again = Fingerprint.from_json(fp.to_json())
    assert again == fp and again.describe() == fp.describe() and len(fp.digest) == 32
    renamed = Fingerprint(**{**json.loads(fp.to_json()), "name": "other", "source": "x"})
    assert renamed == fp  # names and sources are for people, not compared
    other_class = Fingerprint(**{**json.loads(fp.to_json()), "precision": "int8"})
    assert other_class != fp and other_class.same_model(fp)
    assert [precision_class(p) for p in ("fp32", "fp32-onnx", "bf16", "fp16", "int8")] == \
        ["exact", "exact", "bf16", "fp16", "int8"]


def test_commands_that_store_no_vectors_never_hash(tiny_vit, cache, monkeypatch):
    def no_hashing(*args, **kwargs):
        raise AssertionError("hashed")

    monkeypatch.setattr(fpmod, "state_dict_digest", no_hashing)  # backends digest through it
    model = clipsift.load(f"TinyViT:{tiny_vit['state_dict']}")
    examples = Path(__file__).resolve().parents[2] / "examples"
    results = list(clipsift.classify(model, [str(examples)], ["a dog", "a tiger"]))
    assert len(results) >= 2 and not cache.exists()
