"""`clipsift filter` on real CIFAR-10 images with a tiny random-weight model: the manifest
lists every item, decisions follow the rule exactly (recomputed here from the manifest's
own scores), copy/symlink/move never overwrite, a SIGKILLed run resumes to the same
manifest, an index is filtered from its stored vectors, and calibration picks a sensible
threshold."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import clipsift
from clipsift.cli.main import main
from clipsift.engines.local import LocalEngine
from clipsift.errors import ModelMismatch, UsageError
from clipsift.sift.filter import run_filter
from clipsift.sift.placement import Placer, open_journal
from clipsift.sift.rules import (
    Prompt,
    Rule,
    calibrate,
    parse_preset,
    parse_prompt,
)
from tests.support.fake_model import FakeModel
from tests.support.tinymodels import SHARED

CLASSES = ("airplane", "cat", "dog")
PER_CLASS = 30
CHILD = "import sys; from clipsift.cli.main import main; sys.exit(main(sys.argv[1:]))"
LOCAL = LocalEngine(workers=0)


def extract_cifar(dest: Path, classes=CLASSES, per_class=PER_CLASS, start=0) -> Path:
    """`per_class` images of each class from the shared CIFAR-10 tar, as dest/<class>/N.jpg."""
    tar_path = SHARED / "cifar10-test.tar"
    if not tar_path.exists():
        pytest.skip(f"{tar_path} not found")
    with tarfile.open(tar_path) as tf:
        for member in tf:
            parts = member.name.split("/")  # cifar10/test/<class>/NNNN.jpg
            if (member.isfile() and len(parts) == 4 and parts[2] in classes
                    and start <= int(parts[3][:4]) < start + per_class):
                (dest / parts[2]).mkdir(parents=True, exist_ok=True)
                with tf.extractfile(member) as src:
                    (dest / parts[2] / parts[3]).write_bytes(src.read())
    return dest


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> Path:
    """90 CIFAR-10 test images (3 classes x 30) plus one broken file."""
    folder = extract_cifar(tmp_path_factory.mktemp("cifar") / "data")
    (folder / "cat" / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    return folder


@pytest.fixture(scope="module")
def tiny(tiny_vit) -> str:
    return f"TinyViT-quickgelu:{tiny_vit['safetensors']}"


@pytest.fixture(scope="module")
def model(tiny):
    return clipsift.load(tiny)


def all_files(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*") if p.is_file()}


def read(manifest: Path):
    return pq.read_table(manifest).to_pandas()


def col(df, name) -> np.ndarray:
    return df[name].to_numpy(dtype=np.float64)


PROMPTS = dict(keep=(Prompt("a photo of a dog"), Prompt("a photo of a cat")),
               drop=(Prompt("a cartoon drawing"),))


def test_manifest_complete_and_decisions_follow_the_rule(cifar, model, tmp_path):
    out = tmp_path / "scores.parquet"
    first = run_filter(model, Rule(**PROMPTS), out, inputs=[cifar], engine=LOCAL,
                       batch_size=16)
    assert (first.items, first.errors, first.scored_now) == (91, 1, 91)
    df = read(out)
    assert set(df["path"]) == all_files(cifar)
    assert list(df["path"]) == sorted(df["path"])  # input order: sorted folder walk
    broken = df[df["path"].str.endswith("broken.jpg")].iloc[0]
    assert broken["decision"] == "error" and broken["error"] and math.isnan(broken["margin"])
    ok = (df["decision"] != "error").to_numpy()
    dog, cat = col(df, "keep:a photo of a dog"), col(df, "keep:a photo of a cat")
    cartoon = col(df, "drop:a cartoon drawing")
    best = np.maximum(dog, cat)
    assert np.allclose(col(df, "keep_score")[ok], best[ok])
    # default rule with drop prompts: the best keep prompt beats every drop prompt
    assert ((df["decision"] == "keep").to_numpy() == (ok & (best - cartoon >= 0))).all()

    t_dog, t_all, t_drop, m = (float(np.median(x[ok])) for x in (dog, best, cartoon,
                                                                   best - cartoon))
    rules = {
        "threshold": (Rule(keep=(Prompt("a photo of a dog", t_dog), PROMPTS["keep"][1]),
                           drop=(Prompt("a cartoon drawing", t_drop),)),
                      ok & (dog >= t_dog) & (cartoon < t_drop)),
        "default threshold": (Rule(**PROMPTS, threshold=t_all), ok & (best >= t_all)),
        "margin": (Rule(**PROMPTS, margin=m), ok & (best - cartoon >= m)),
    }
    for name, (rule, expected) in rules.items():
        s = run_filter(model, rule, out, inputs=[cifar], engine=LOCAL)
        assert s.scored_now == 0 and s.scored_before == 91, name  # re-decided from scores
        got = (read(out)["decision"] == "keep").to_numpy()
        assert (got == expected).all(), name
        assert 0 < got.sum() < ok.sum(), name

    s = run_filter(model, Rule(**PROMPTS, top_n=7), out, inputs=[cifar], engine=LOCAL)
    margin = np.where(ok, best - cartoon, -np.inf)
    top = np.lexsort((np.arange(len(df)), -margin))[:7]
    assert set(np.flatnonzero(read(out)["decision"] == "keep")) == set(top) and s.kept == 7

    s = run_filter(model, Rule(**PROMPTS, top_fraction=0.25, invert=True), out,
                   inputs=[cifar], engine=LOCAL)
    n_top = math.floor(0.25 * ok.sum())
    top = set(np.lexsort((np.arange(len(df)), -margin))[:n_top])
    kept = set(np.flatnonzero(read(out)["decision"] == "keep"))
    assert kept == set(np.flatnonzero(ok)) - top and s.kept == ok.sum() - n_top


def test_preset_decisions(cifar, model, tmp_path):
    use = parse_preset("violence@0.01")
    rule = Rule(presets=(use,))
    run_filter(model, rule, tmp_path / "m.parquet", inputs=[cifar], engine=LOCAL)
    df = read(tmp_path / "m.parquet")
    ok = (df["decision"] != "error").to_numpy()
    flag = np.max([col(df, f"violence:{t}") for t in use.preset.flag], axis=0)
    contrast = np.max([col(df, f"violence:{t}") for t in use.preset.contrast], axis=0)
    assert np.allclose(col(df, "violence_score")[ok], (flag - contrast)[ok], atol=1e-6)
    expected = ok & (flag - contrast < 0.01)
    assert ((df["decision"] == "keep").to_numpy() == expected).all()
    meta = pq.read_schema(tmp_path / "m.parquet").metadata
    assert json.loads(meta[b"clipsift.rule"])["presets"] == [{"name": "violence",
                                                              "threshold": 0.01}]


@pytest.mark.parametrize("bad", [
    dict(keep=(Prompt("a dog"),)),  # keep prompts and no rule
    dict(keep=(Prompt("a dog"),), margin=0.1),  # margin without drop prompts
    dict(drop=(Prompt("a dog"),)),  # drop prompts alone need a threshold
    dict(keep=(Prompt("a"), Prompt("a")), threshold=0.2),
    dict(keep=(Prompt("a"),), top_n=3, top_fraction=0.5),
    dict(keep=(Prompt("a"),), top_fraction=1.5),
    dict(),
])
def test_rule_errors_are_actionable(bad):
    with pytest.raises(UsageError):
        Rule(**bad).resolved()


def test_prompt_and_preset_parsing():
    assert parse_prompt("a photo of a dog@0.27") == Prompt("a photo of a dog", 0.27)
    assert parse_prompt("email me @ home") == Prompt("email me @ home")
    assert parse_preset("nsfw").threshold == 0.0
    with pytest.raises(UsageError, match="nsfw"):
        parse_preset("nsfww")
    with pytest.raises(UsageError):
        parse_prompt("x@3")


def test_copy_symlink_move_never_overwrite(cifar, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(cifar, data)
    before = {p: Path(p).read_bytes() for p in all_files(data)}
    common = ["filter", str(data), "--keep", "a photo of a dog@-1", "--model", "fake",
              "--workers", "0", "-q"]
    assert main([*common, "--drop", "a photo of a cat@1", "-o", str(tmp_path / "p.parquet")]) == 0
    probe = read(tmp_path / "p.parquet")
    ok = (probe["decision"] != "error").to_numpy()
    cut = float(f"{np.median(col(probe, 'drop:a photo of a cat')[ok]):.6f}")
    will_keep = probe[ok & (col(probe, "drop:a photo of a cat") < cut)]["path"].iloc[0]
    args = [*common, "--drop", f"a photo of a cat@{cut:.6f}", "--output"]
    out = tmp_path / "out"
    taken = out / Path(will_keep).relative_to(data)
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"precious")  # a kept file's name, already taken
    assert main([*args, str(out), "--copy"]) == 0
    df = read(out / "manifest.parquet")
    kept = df[df["decision"] == "keep"]
    assert len(kept) == (ok & (col(probe, "drop:a photo of a cat") < cut)).sum()
    assert 0 < len(kept) < 90 and will_keep in set(kept["path"])
    assert taken.read_bytes() == b"precious"
    suffixed = taken.with_name(taken.stem + "-1" + taken.suffix)
    assert suffixed.read_bytes() == before[will_keep]
    for src, dst in zip(kept["path"], kept["output_path"], strict=True):
        assert Path(dst).read_bytes() == before[src] and not Path(dst).is_symlink()
    assert {p: Path(p).read_bytes() for p in all_files(data)} == before  # sources untouched
    assert main([*args, str(out), "--copy"]) == 0  # again: nothing placed twice
    assert len(list(out.rglob("*.jpg"))) == len(kept) + 1

    links = tmp_path / "links"
    assert main([*args, str(links), "--symlink"]) == 0
    df = read(links / "manifest.parquet")
    for src, dst in df[df["decision"] == "keep"][["path", "output_path"]].itertuples(False):
        assert Path(dst).is_symlink() and os.readlink(dst) == src

    moved = tmp_path / "moved"
    assert main([*args, str(moved), "--move"]) == 0
    df = read(moved / "manifest.parquet")
    for path, decision, dst in df[["path", "decision", "output_path"]].itertuples(False):
        if decision == "keep":
            assert not os.path.exists(path) and Path(dst).read_bytes() == before[path]
        else:
            assert Path(path).read_bytes() == before[path] and not isinstance(dst, str)
    assert main([*args, str(moved), "--move"]) == 0  # rerun after a move: nothing to redo
    assert len(list(moved.rglob("*.jpg"))) == (df["decision"] == "keep").sum()


def test_placement_finishes_after_a_crash(tmp_path):
    """Files placed (or linked for a move) just before a crash are not placed twice."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        (src / name).write_bytes(name.encode() * 100)
    out = tmp_path / "out"
    db = open_journal(tmp_path / "j.sqlite")
    placer = Placer(db, out, "move")
    placer.plan((str(src / n), n) for n in ("a.jpg", "b.jpg", "c.jpg"))
    out.mkdir()
    os.link(src / "a.jpg", out / "a.jpg")  # crashed between link and unlink
    os.rename(src / "b.jpg", out / "b.jpg")  # crashed after the move, before the journal
    summary = Placer(db, out, "move").run()
    assert summary.placed == 3 and not summary.errors
    assert sorted(p.name for p in out.iterdir()) == ["a.jpg", "b.jpg", "c.jpg"]
    assert not list(src.iterdir())


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)


def test_kill_and_resume_gives_the_same_manifest(cifar, tiny, tmp_path, capsys):
    common = ["filter", str(cifar), "--keep", "a photo of a dog", "--drop", "a photo of a cat",
              "--model", tiny, "--workers", "0", "-q", "--json", "--batch-size"]
    ref = tmp_path / "ref"
    assert main([*common, "16", "--output", str(ref)]) == 0
    out = tmp_path / "killed"
    parts = out / ".clipsift-filter" / "parts"
    for _ in range(3):  # kill it mid-run (retry if the run was too fast to catch)
        proc = _start([*common, "4", "--output", str(out), "--fresh"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if parts.is_dir() and len(list(parts.glob("part-*.parquet"))) >= 2:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.005)
        proc.wait(30)
        if not (out / "manifest.parquet").exists():
            break
    assert not (out / "manifest.parquet").exists(), "the run finished before it was killed"
    done = len(list(parts.glob("part-*.parquet")))
    capsys.readouterr()
    assert main([*common, "16", "--output", str(out)]) == 0  # resume, in-process this time
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["scored_before"] >= 4 * done - 3 and summary["scored_now"] > 0
    assert summary["scored_before"] + summary["scored_now"] == 91
    a, b = read(ref / "manifest.parquet"), read(out / "manifest.parquet")
    assert list(a["path"]) == list(b["path"]) and list(a["decision"]) == list(b["decision"])
    assert list(a["error"].isna()) == list(b["error"].isna())
    for name in ("keep:a photo of a dog", "drop:a photo of a cat", "margin"):
        assert np.allclose(col(a, name), col(b, name), atol=1e-5, equal_nan=True)


class CountingModel(FakeModel):
    """FakeModel that counts the images it encodes."""

    def __init__(self) -> None:
        super().__init__()
        self.encoded = 0

    def encode_pixels(self, pixels):
        self.encoded += len(pixels)
        return super().encode_pixels(pixels)


def test_filter_from_an_index_uses_stored_vectors(cifar, tmp_path):
    from clipsift.index.index import Index

    counting = CountingModel()
    with Index(tmp_path / "i.db", counting) as idx:
        idx.add([cifar], workers=0)
    assert counting.encoded == 90
    rule = Rule(keep=(Prompt("a photo of a dog"),), threshold=0.0)
    s = run_filter(counting, rule, tmp_path / "from-index", index=tmp_path / "i.db")
    assert counting.encoded == 90  # nothing re-encoded
    assert (s.items, s.errors) == (91, 1)
    direct = run_filter(FakeModel(), rule, tmp_path / "direct", inputs=[cifar], engine=LOCAL)
    a = read(tmp_path / "from-index" / "manifest.parquet").sort_values("path")
    b = read(tmp_path / "direct" / "manifest.parquet").sort_values("path")
    assert list(a["path"]) == list(b["path"])
    # float16 storage: scores agree to ~1e-3
    assert np.allclose(col(a, "keep_score"), col(b, "keep_score"), atol=3e-3, equal_nan=True)
    assert direct.items == 91
    with pytest.raises(ModelMismatch):
        run_filter(FakeModel(32), rule, tmp_path / "x", index=tmp_path / "i.db")


class PrototypeModel(FakeModel):
    """FakeModel whose text vector for a prompt is the mean image vector of reference
    images: a stand-in for a model that has learned the prompt's class."""

    def __init__(self, prototypes: dict[str, np.ndarray]) -> None:
        super().__init__()
        self.prototypes = prototypes

    def encode_texts(self, texts, batch_size=256):
        return np.stack([self.prototypes[t] for t in texts]).astype(np.float32)


def test_calibrate_picks_a_sensible_threshold(cifar, tmp_path, capsys):
    fake = FakeModel()
    ref = fake.encode_images([str(p) for p in sorted((cifar / "airplane").glob("0*.jpg"))])
    proto = ref.mean(0) / np.linalg.norm(ref.mean(0))
    model = PrototypeModel({"an airplane": proto})
    examples = extract_cifar(tmp_path / "ex", ("airplane", "dog"), 20, start=100)
    (examples / "airplane").rename(examples / "positive")
    (examples / "dog").rename(examples / "negative")
    from clipsift.sift.filter import calibrate_rule

    rule = Rule(keep=(Prompt("an airplane"),))
    cal = calibrate_rule(model, rule, examples, engine=LOCAL)
    pos = model.encode_images([str(p) for p in (examples / "positive").iterdir()]) @ proto
    neg = model.encode_images([str(p) for p in (examples / "negative").iterdir()]) @ proto
    assert cal.target == "threshold" and (cal.positives, cal.negatives) == (20, 20)
    assert np.median(neg) < cal.value < np.median(pos)
    assert cal.precision == pytest.approx(((pos >= cal.value).sum()) / (
        (pos >= cal.value).sum() + (neg >= cal.value).sum()))
    assert cal.recall == pytest.approx((pos >= cal.value).mean())
    assert cal.f1 > 0.7 and 0.0 <= cal.cv_precision <= 1.0 and 0.0 <= cal.cv_recall <= 1.0
    capsys.readouterr()
    code = main(["filter", str(cifar), "--keep", "an airplane", "--calibrate", str(examples),
                 "-o", str(tmp_path / "out.parquet"), "--model", "fake", "-q", "--json"])
    assert code == 0
    lines = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    assert lines[0]["calibration"]["target"] == "threshold"
    assert lines[1]["rule"]["threshold"] == pytest.approx(lines[0]["calibration"]["value"])


def test_calibrate_on_separable_scores():
    rule = Rule(keep=(Prompt("x"),))
    pos, neg = np.array([[0.30], [0.32], [0.35]]), np.array([[0.10], [0.12], [0.20]])
    cal = calibrate(rule, pos, neg)
    assert 0.20 < cal.value < 0.30 and (cal.precision, cal.recall) == (1.0, 1.0)
    assert cal.value == pytest.approx(0.25)  # the middle of the widest gap
    with pytest.raises(UsageError):
        calibrate(rule, pos, neg[:0])
