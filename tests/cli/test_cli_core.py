"""End-to-end CLI tests, in-process, on real photos: classify, embed, similarity, errors."""

from __future__ import annotations

import json
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

import clipsift
from clipsift.cli.main import main


@pytest.fixture(scope="module")
def model_name(tiny_vit) -> str:
    return f"TinyViT-quickgelu:{tiny_vit['safetensors']}"


@pytest.fixture()
def photo_dir(photos, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for p in photos[:6]:
        (folder / p.name).write_bytes(p.read_bytes())
    return folder


def test_classify_json_matches_library(photo_dir, model_name, capsys):
    code = main(["classify", str(photo_dir), "--labels", "a dog,a cat,a car", "--template",
                 "a photo of {}.", "--template", "a picture of {}.", "--json", "-m", model_name,
                 "--workers", "0"])
    assert code == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(lines) == 6
    m = clipsift.load(model_name)
    lib = clipsift.classify(m, [lines[0]["path"]], ["a dog", "a cat", "a car"],
                            templates=["a photo of {}.", "a picture of {}."])
    got = lines[0]["labels"]
    assert [g["label"] for g in got] == [s.label for s in lib[0].labels]
    assert got[0]["probability"] == pytest.approx(lib[0].labels[0].probability, abs=1e-6)
    assert sum(g["probability"] for g in got) == pytest.approx(1.0, abs=1e-5)
    assert got == sorted(got, key=lambda g: -g["probability"])


def test_classify_probabilities_are_softmax_of_scaled_cosine(photos, model_name):
    m = clipsift.load(model_name)
    labels = ["dog", "cat", "tree"]
    res = clipsift.classify(m, [str(photos[0])], labels)[0]
    img = m.encode_images([str(photos[0])])[0]
    txt = m.encode_texts(labels)
    logits = m.logit_scale * (txt @ img)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    for s in res.labels:
        assert s.probability == pytest.approx(p[labels.index(s.label)], abs=1e-5)
        assert s.score == pytest.approx(float(txt[labels.index(s.label)] @ img), abs=1e-5)


def test_classify_bad_files_listed_exit_1(photo_dir, model_name, capsys):
    (photo_dir / "empty.jpg").write_bytes(b"")
    (photo_dir / "notes.jpg").write_text("not an image")
    code = main(["classify", str(photo_dir), "--labels", "dog,cat", "--json", "-m", model_name,
                 "--top", "1"])
    out, err = capsys.readouterr()
    assert code == 1
    rows = [json.loads(x) for x in out.splitlines()]
    errors = {r["path"].rsplit("/", 1)[-1]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {"empty.jpg", "notes.jpg"}
    assert sum(1 for r in rows if "labels" in r and len(r["labels"]) == 1) == 6
    assert "2 of 8 input(s) failed" in err and "Traceback" not in err


def test_labels_file_utf8_chinese_and_templates_set(tmp_path, photos, capsys):
    labels = tmp_path / "labels.txt"
    labels.write_text("猫\n狗\n# comment\n\nairplane\n", encoding="utf-8")
    code = main(["classify", str(photos[0]), "--labels-file", str(labels), "--templates",
                 "imagenet80", "--json", "-m", "fake"])
    assert code == 0
    row = json.loads(capsys.readouterr().out)
    assert {x["label"] for x in row["labels"]} == {"猫", "狗", "airplane"}


def test_usage_errors_exit_2_without_traceback(photos, capsys):
    assert main(["classify", str(photos[0]), "-m", "fake"]) == 2
    assert "no labels given" in capsys.readouterr().err
    assert main(["classify", str(photos[0]), "--labels", "a", "--template", "no slot",
                 "-m", "fake"]) == 2
    assert main(["classify", "/nonexistent/dir", "--labels", "a", "-m", "fake"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "/nonexistent/dir" in err


def test_missing_model_exits_2_fast(photos, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("CLIPSIFT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    start = time.monotonic()
    code = main(["classify", str(photos[0]), "--labels", "a,b", "-m",
                 "ViT-B-16:laion2b_s34b_b88k"])
    assert code == 2 and time.monotonic() - start < 15
    err = capsys.readouterr().err
    assert "ViT-B-16:laion2b_s34b_b88k" in err and "--model mini" in err
    assert "Traceback" not in err


def test_embed_parquet(photo_dir, model_name, tmp_path):
    out = tmp_path / "emb.parquet"
    code = main(["embed", str(photo_dir), "--text", "a dog", "--text", "a cat", "-o", str(out),
                 "-m", model_name])
    assert code == 0
    table = pq.read_table(out)
    meta = table.schema.metadata
    assert meta[b"clipsift.model"].decode() == clipsift.load(model_name).name
    assert meta[b"clipsift.dim"] == b"32"
    df = table.to_pandas()
    assert list(df.kind).count("image") == 6 and list(df.kind).count("text") == 2
    vec = np.asarray(df.embedding.iloc[0], dtype=np.float32)
    assert vec.shape == (32,) and abs(np.linalg.norm(vec) - 1) < 1e-5
    assert str(table.schema.field("embedding").type) == "list<element: float>"


def test_similarity_matrix(photos, model_name, capsys):
    code = main(["similarity", "--images", str(photos[0]), "--images", str(photos[1]),
                 "--texts", "a dog", "--texts", "a cat", "--json", "-m", model_name])
    assert code == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and set(rows[0]["cosine"]) == {"a dog", "a cat"}
    m = clipsift.load(model_name)
    want = float(m.encode_images([str(photos[0])])[0] @ m.encode_texts(["a dog"])[0])
    assert rows[0]["cosine"]["a dog"] == pytest.approx(want, abs=1e-5)


def test_help_is_fast():
    import subprocess
    import sys

    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "clipsift", "--help"], check=True,
                   capture_output=True)
    assert time.monotonic() - start < 3  # generous on a loaded CI box; ~0.3 s normally
