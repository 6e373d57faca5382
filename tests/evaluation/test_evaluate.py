"""`clipsift evaluate`: datasets, metrics (checked against scikit-learn), prompt comparison,
prompt search, few-shot probe, embedding cache, CLI. Real CIFAR-10 photos, tiny models."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    precision_recall_fscore_support,
    recall_score,
    top_k_accuracy_score,
)

import clipsift
from clipsift.errors import UsageError
from clipsift.evaluation.datasets import (
    EmbeddingCache,
    class_display_name,
    embed_dataset,
    load_dataset,
)
from clipsift.evaluation.evaluate import (
    EvalOptions,
    compute_metrics,
    evaluate,
    few_shot_probe,
    holdout_split,
    parse_prompts,
)
from clipsift.zeroshot.classes import class_embeddings
from tests.support import tinymodels

CIFAR_TAR = tinymodels.SHARED / "cifar10-test.tar"
PER_CLASS = 20


def extract_cifar(dest: Path, per_class: int = PER_CLASS, classes: int = 10) -> Path:
    """cifar10/test/<class>/NNNN.jpg: the first `per_class` images of the first classes."""
    if not CIFAR_TAR.exists():
        pytest.skip(f"{CIFAR_TAR} not found")
    counts: dict[str, int] = {}
    with tarfile.open(CIFAR_TAR) as tf:
        for member in tf:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 2:
                continue
            cls = parts[-2]
            if cls not in counts and len(counts) == classes:
                continue
            if counts.get(cls, 0) >= per_class:
                continue
            counts[cls] = counts.get(cls, 0) + 1
            out = dest / cls / parts[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            with tf.extractfile(member) as src:
                out.write_bytes(src.read())
    return dest


class CountingModel:
    """Wraps a model and counts the images that go through its image encoder."""

    def __init__(self, model) -> None:
        self._model = model
        self.images = 0

    def __getattr__(self, name):
        return getattr(self._model, name)

    def encode_pixels(self, pixels):
        self.images += len(pixels)
        return self._model.encode_pixels(pixels)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    return extract_cifar(tmp_path_factory.mktemp("cifar") / "cifar10-test")


@pytest.fixture(scope="module")
def tiny_name(arch_configs, tmp_path_factory) -> str:
    """A tiny random-weight ViT saved as safetensors only (cheaper than every format)."""
    from safetensors.torch import save_file

    model = tinymodels.make_openclip({**tinymodels.TINY_VIT, "quick_gelu": True}, seed=1)
    path = tmp_path_factory.mktemp("tiny") / "tinyvit.safetensors"
    save_file({k: v.contiguous().clone() for k, v in model.state_dict().items()}, str(path))
    return f"TinyViT-quickgelu:{path}"


@pytest.fixture(scope="module")
def tiny(tiny_name):
    return clipsift.load(tiny_name)


@pytest.fixture(scope="module")
def embedded(cifar, tiny):
    ds = load_dataset(cifar)
    return ds, embed_dataset(tiny, ds, workers=0)


def _small_copy(src: Path, dest: Path, classes: list[str], n: int) -> Path:
    for c in classes:
        (dest / c).mkdir(parents=True)
        for f in sorted((src / c).iterdir())[:n]:
            shutil.copy(f, dest / c / f.name)
    return dest


# ---- datasets ------------------------------------------------------------------------------
def test_class_folders(embedded, cifar):
    ds, emb = embedded
    assert ds.kind == "folders"
    assert ds.classes == sorted(p.name for p in cifar.iterdir())
    assert ds.counts() == [PER_CLASS] * 10
    assert emb.vectors.shape == (10 * PER_CLASS, 32) and not emb.failures
    assert class_display_name("golden_retriever") == "golden retriever"
    assert class_display_name("sea-lion__pup") == "sea lion pup"


def test_roboflow_export_and_tokenization_order(cifar, tmp_path, tiny):
    root = tmp_path / "flowers.v1-clip"
    test = _small_copy(cifar, root / "test", ["ship", "bird", "cat"], 4)
    _small_copy(cifar, root / "train", ["ship", "bird", "cat"], 2)
    lines = [f"An example picture from the CIFAR dataset depicting a {c}" for c in
             ("bird", "cat", "ship")]  # alphabetical order of the class folders
    (test / "_tokenization.txt").write_text("\n".join(lines) + "\n\n")
    ds = load_dataset(root)
    assert ds.kind == "roboflow" and Path(ds.root) == test
    assert ds.folders == ["bird", "cat", "ship"] and ds.prompts == lines
    assert ds.counts() == [4, 4, 4]
    emb = embed_dataset(tiny, ds, workers=0)
    ev = evaluate(tiny, ds, emb, ["{}"])
    assert [p.name for p in ev.prompt_sets] == ["_tokenization.txt", "{}"]
    # the tokenization set scores exactly like encoding its lines in class order
    scores = emb.vectors @ tiny.encode_texts(lines).T
    assert np.array_equal(ev.prompt_sets[0].predicted, scores.argmax(axis=1))
    assert load_dataset(test).prompts == lines  # the split folder itself works too
    assert load_dataset(root, split="train").counts() == [2, 2, 2]


def test_tokenization_line_count_mismatch_is_clear(cifar, tmp_path):
    test = _small_copy(cifar, tmp_path / "export" / "test", ["bird", "cat", "ship"], 2)
    (test / "_tokenization.txt").write_text("a photo of a bird\na photo of a cat\n")
    with pytest.raises(UsageError, match=r"2 prompt line\(s\).*3 class folder\(s\) "
                       r"\(bird, cat, ship\).*one line per class"):
        load_dataset(tmp_path / "export")


def test_empty_class_and_single_class_errors(cifar, tmp_path):
    root = _small_copy(cifar, tmp_path / "ds", ["bird", "cat"], 2)
    (root / "dog").mkdir()
    with pytest.raises(UsageError, match=r"without images.*dog"):
        load_dataset(root)
    shutil.rmtree(root / "dog")
    shutil.rmtree(root / "cat")
    with pytest.raises(UsageError, match="at least two"):
        load_dataset(root)
    with pytest.raises(UsageError, match="does not exist"):
        load_dataset(tmp_path / "nope")


def test_manifest_csv_and_parquet_with_unreadable_images(cifar, tmp_path, tiny):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [(f"../{cifar.name}/{c}/{i:04d}.jpg", c.upper()) for c in ("cat", "dog")
            for i in range(3)]
    bad = tmp_path / "m" / "broken.jpg"
    bad.parent.mkdir()
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    rows += [("broken.jpg", "CAT"), ("missing.jpg", "DOG")]
    shutil.copytree(cifar, tmp_path / cifar.name)
    csv_path = tmp_path / "m" / "labels.csv"
    csv_path.write_text("path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))
    ds = load_dataset(csv_path)
    assert ds.kind == "manifest" and ds.folders == ["CAT", "DOG"] and ds.counts() == [4, 4]
    emb = embed_dataset(tiny, ds, workers=0)
    assert len(emb.vectors) == 6
    assert sorted(os.path.basename(k) for k, _ in emb.failures) == ["broken.jpg", "missing.jpg"]
    ev = evaluate(tiny, ds, emb, ["{}"])
    assert ev.best.metrics.n == 6 and len(ev.failures) == 2  # counted, listed, not fatal
    pq.write_table(pa.table({"path": [p for p, _ in rows], "label": [lab for _, lab in rows]}),
                   tmp_path / "m" / "labels.parquet")
    assert load_dataset(tmp_path / "m" / "labels.parquet").counts() == [4, 4]
    (tmp_path / "m" / "bad.csv").write_text("file_name,y\na.jpg,cat\n")
    with pytest.raises(UsageError, match=r"no path column.*file_name, y"):
        load_dataset(tmp_path / "m" / "bad.csv")


def test_class_name_mapping_and_cap(cifar, tmp_path):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"automobile": "car", "airplane": "aeroplane"}))
    ds = load_dataset(cifar, class_names=names, max_per_class=3)
    assert ds.classes[:2] == ["aeroplane", "car"] and ds.folders[0] == "airplane"
    assert ds.counts() == [3] * 10
    csv_names = tmp_path / "names.csv"
    csv_names.write_text("truck,lorry\n")
    assert load_dataset(cifar, class_names=csv_names).classes[-1] == "lorry"
    csv_names.write_text("tiger,big cat\n")
    with pytest.raises(UsageError, match=r"unknown class folder.*tiger"):
        load_dataset(cifar, class_names=csv_names)


def test_tar_dataset_directly():
    if not CIFAR_TAR.exists():
        pytest.skip(f"{CIFAR_TAR} not found")
    ds = load_dataset(CIFAR_TAR, max_per_class=2)
    assert ds.kind == "tar" and len(ds.classes) == 10 and ds.counts() == [2] * 10
    assert all("::cifar10/test/" in s.key for s in ds.samples)


# ---- metrics vs scikit-learn ---------------------------------------------------------------
def test_every_metric_matches_sklearn(embedded, tiny):
    ds, emb = embedded
    ev = evaluate(tiny, ds, emb, ["{}", "a photo of a {}."])
    y = ds.labels[emb.rows]
    labels = list(range(10))
    # the pipeline's vectors are the model's own image embeddings
    paths = [ds.samples[i].item.path for i in emb.rows[:16]]
    assert np.allclose(emb.vectors[:16], tiny.encode_images(paths), atol=1e-5)
    for res, template in zip(ev.prompt_sets, ["{}", "a photo of a {}."], strict=True):
        scores = emb.vectors @ class_embeddings(tiny, ds.classes, [template]).T  # [N, C]
        pred = scores.argmax(axis=1)
        m = res.metrics
        assert np.array_equal(res.predicted, pred)
        assert m.top1 == pytest.approx(accuracy_score(y, pred))
        assert m.top5 == pytest.approx(top_k_accuracy_score(y, scores, k=5, labels=labels))
        assert m.mean_recall == pytest.approx(recall_score(y, pred, average="macro"))
        prec, rec, _, sup = precision_recall_fscore_support(y, pred, labels=labels,
                                                            zero_division=0)
        assert [c.precision for c in m.per_class] == pytest.approx(prec)
        assert [c.recall for c in m.per_class] == pytest.approx(rec)
        assert [c.support for c in m.per_class] == sup.tolist()
        assert np.array_equal(m.confusion, confusion_matrix(y, pred, labels=labels))
    assert ev.best_index == int(np.argmax([p.metrics.top1 for p in ev.prompt_sets]))


def test_metrics_edge_cases_match_sklearn():
    rng = np.random.default_rng(3)
    y = np.array([0, 0, 1, 1, 1, 3, 3, 6, 6, 6])  # classes 2, 4, 5 have no images
    scores = rng.normal(size=(10, 7))
    scores[:, 5] = 9.0  # class 5 wins often; some classes are never predicted
    scores[[2, 3], 1] = 10.0
    m = compute_metrics(y, scores, list("abcdefg"))
    pred = scores.argmax(axis=1)
    present = sorted(set(y))
    assert m.top1 == pytest.approx(accuracy_score(y, pred))
    assert m.mean_recall == pytest.approx(recall_score(y, pred, labels=present, average="macro"))
    assert m.top5 == pytest.approx(top_k_accuracy_score(y, scores, k=5, labels=range(7)))
    prec, rec, _, _ = precision_recall_fscore_support(y, pred, labels=range(7), zero_division=0)
    assert [c.precision for c in m.per_class] == pytest.approx(prec)
    assert [c.recall for c in m.per_class] == pytest.approx(rec)
    assert compute_metrics(np.array([0, 1]), np.eye(2), ["a", "b"]).top5 is None  # <= 5 classes


# ---- prompts, search, few-shot -------------------------------------------------------------
def test_prompt_specs(tmp_path):
    classes = ["cat", "dog"]
    assert parse_prompts("a photo of a {}.", classes).prompts == (("a photo of a cat.",),
                                                                  ("a photo of a dog.",))
    assert parse_prompts("imagenet80", classes).per_class == 80
    ens = tmp_path / "ens.txt"
    ens.write_text("a photo of a {}.\n# comment\nart of the {}.\n")
    assert parse_prompts(str(ens), classes).prompts[1] == ("a photo of a dog.", "art of the dog.")
    per = tmp_path / "per.txt"
    per.write_text("a fluffy cat\na loyal dog\n")
    assert parse_prompts(str(per), classes).prompts == (("a fluffy cat",), ("a loyal dog",))
    per.write_text("a fluffy cat\n")
    with pytest.raises(UsageError, match="one prompt per class"):
        parse_prompts(str(per), classes)
    with pytest.raises(UsageError, match="not a template"):
        parse_prompts("a photo", classes)
    with pytest.raises(UsageError, match="exactly one"):
        parse_prompts("{} and {}", classes)


def test_search_and_few_shot_report_on_held_out(embedded, tiny):
    ds, emb = embedded
    ev = evaluate(tiny, ds, emb, ["{}", "a photo of a {}."],
                  EvalOptions(search=True, few_shot=4, holdout=0.5, seed=7))
    ho = ev.heldout
    y = ds.labels[emb.rows]
    tune, held = holdout_split(y, ds.classes, 0.5, 4, 7)
    assert (ho.tune_size, ho.size) == (len(tune), len(held)) == (100, 100)
    assert not set(tune) & set(held) and np.bincount(y[held]).tolist() == [10] * 10
    assert [r.method for r in ho.rows] == ["zero-shot", "zero-shot", "searched prompts",
                                           "few-shot probe"]
    # candidates are scored on the tuning part only; the winner is the best of them
    winner = ho.candidates[0]
    assert ho.winner == winner.name and ho.rows[2].name == winner.name
    assert winner.top1 == max(c.top1 for c in ho.candidates)
    assert any(c.name == "imagenet80" for c in ho.candidates)
    assert any(c.name.startswith("top-") for c in ho.candidates)
    w = class_embeddings(tiny, ds.classes, list(winner.templates))
    t_pred = (emb.vectors[tune] @ w.T).argmax(axis=1)
    assert winner.top1 == pytest.approx(accuracy_score(y[tune], t_pred))
    h_pred = (emb.vectors[held] @ w.T).argmax(axis=1)
    assert ho.rows[2].metrics.top1 == pytest.approx(accuracy_score(y[held], h_pred))
    z = class_embeddings(tiny, ds.classes, ["{}"])
    assert ho.rows[0].metrics.top1 == pytest.approx(
        accuracy_score(y[held], (emb.vectors[held] @ z.T).argmax(axis=1)))
    assert ho.rows[3].metrics.n == 100
    json.dumps(ev.to_dict())  # machine output is plain JSON


def test_few_shot_probe_learns_and_needs_enough_images():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    y = np.repeat(np.arange(3), 30)
    x = centers[y] + 0.3 * rng.normal(size=(90, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    tune, held = holdout_split(y, ["a", "b", "c"], 0.5, 5, 0)
    assert few_shot_probe(x, y, tune, held, 5, ["a", "b", "c"]).top1 > 0.9
    with pytest.raises(UsageError, match=r"'a' has 30 readable image.*at least 31"):
        holdout_split(y, ["a", "b", "c"], 0.5, 30, 0)


# ---- cache and index reuse -----------------------------------------------------------------
def test_cache_second_run_encodes_nothing(cifar, tmp_path, tiny):
    root = _small_copy(cifar, tmp_path / "ds", ["bird", "cat", "dog"], 5)
    ds = load_dataset(root)
    counting = CountingModel(tiny)
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        first = embed_dataset(counting, ds, cache=cache, workers=0)
    assert counting.images == 15 and first.encoded == 15
    counting.images = 0
    with EmbeddingCache(tmp_path / "cache.sqlite") as cache:
        second = embed_dataset(counting, ds, cache=cache, workers=0)
        assert counting.images == 0 and second.from_cache == 15 and second.encoded == 0
        assert np.array_equal(first.vectors, second.vectors)
        ev = evaluate(counting, ds, second, ["{}", "a photo of a {}."])  # only the text side
        assert counting.images == 0 and len(ev.prompt_sets) == 2
        changed = next((root / "cat").iterdir())
        os.utime(changed, (1_000_000, 1_000_000))  # a changed file is re-encoded, alone
        third = embed_dataset(counting, load_dataset(root), cache=cache, workers=0)
    assert counting.images == 1 and third.encoded == 1


def test_vectors_reused_from_a_clipsift_index(cifar, tmp_path, tiny):
    from clipsift.index.index import Index

    root = _small_copy(cifar, tmp_path / "ds", ["bird", "cat"], 4)
    with Index(tmp_path / "photos.db", model=tiny) as idx:
        idx.add([str(root)], workers=0)
    ds = load_dataset(root)
    counting = CountingModel(tiny)
    emb = embed_dataset(counting, ds, index=tmp_path / "photos.db", workers=0)
    assert counting.images == 0 and emb.from_index == 8
    assert np.allclose(emb.vectors, embed_dataset(tiny, ds, workers=0).vectors, atol=2e-3)


# ---- CLI ------------------------------------------------------------------------------------
def test_cli_json_and_report(cifar, tmp_path, tiny_name, capsys):
    from clipsift.cli.main import main

    root = _small_copy(cifar, tmp_path / "ds", ["bird", "cat", "deer", "dog", "frog", "horse"],
                       6)
    (root / "cat" / "zz-broken.jpg").write_bytes(b"garbage")
    report = tmp_path / "r.html"
    code = main(["evaluate", str(root), "--model", tiny_name,
                 "--prompts", "{}", "--prompts", "a photo of a {}.", "--few-shot", "2",
                 "--json", "--report", str(report), "--cache", str(tmp_path / "c.sqlite"),
                 "--workers", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    d = json.loads(out)
    assert [p["name"] for p in d["prompt_sets"]] == ["{}", "a photo of a {}."]
    assert d["scored"] == 36 and d["failures"][0]["path"].endswith("zz-broken.jpg")
    assert d["heldout"]["rows"][-1]["method"] == "few-shot probe"
    assert "1 unreadable image(s)" in err and "report written" in err
    html_text = report.read_text()
    assert html_text.startswith("<!DOCTYPE html>") and "Most confident mistakes" in html_text
    code = main(["evaluate", str(root), "--model", "fake", "--prompts", "photo", "--no-cache"])
    assert code == 2 and "not a template" in capsys.readouterr().err


def test_cli_human_tables(cifar, tmp_path, capsys):
    from clipsift.cli.main import main

    root = _small_copy(cifar, tmp_path / "ds", ["bird", "cat", "ship"], 3)
    code = main(["evaluate", str(root), "--model", "fake", "--prompts", "{}", "--prompts",
                 "a photo of a {}.", "--search-prompts", "--no-cache", "--workers", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Prompt sets" in out and "★" in out and "Held-out comparison" in out
    assert "images encoded: 9" in err
