"""Training: a tiny CLIP learns generated shapes; resume is exact; WiSE-FT; freezing; data."""

from __future__ import annotations

import csv
import io
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from clipsift.errors import TrainingError
from clipsift.train import TrainConfig, train
from clipsift.train.data import (
    EpochBatchSampler,
    PairDataset,
    TrainTransform,
    collate_pairs,
    load_pairs,
    make_loader,
    split_pairs,
)
from clipsift.train.metrics import retrieval_recall
from clipsift.train.wise import interpolate_weights

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 40, 220),
           "yellow": (235, 215, 20)}
SHAPES = ("circle", "square", "triangle")


def shape_image(colour: str, shape: str, rng: np.random.Generator, alpha: bool = False
                ) -> Image.Image:
    im = Image.new("RGBA" if alpha else "RGB", (40, 40), (0, 0, 0, 0) if alpha else "white")
    draw = ImageDraw.Draw(im)
    x, y, r = (int(v) for v in (rng.integers(12, 28), rng.integers(12, 28), rng.integers(7, 11)))
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
    elif shape == "square":
        draw.rectangle((x - r, y - r, x + r, y + r), fill=fill)
    else:
        draw.polygon([(x, y - r), (x - r, y + r), (x + r, y + r)], fill=fill)
    return im


def shape_pairs(n_per: int = 4, seed: int = 0):
    """Yield (name, image, caption) for every colour x shape, n_per variants each."""
    rng = np.random.default_rng(seed)
    i = 0
    for colour in COLOURS:
        for shape in SHAPES:
            for _ in range(n_per):
                yield f"{i:03d}", shape_image(colour, shape, rng, alpha=i % 5 == 0), \
                    f"a {colour} {shape}"
                i += 1


def write_folder(root: Path, n_per: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, im, caption in shape_pairs(n_per):
        im.save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> Path:
    return write_folder(tmp_path_factory.mktemp("shapes") / "pairs")


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("arch") / "tiny.json"
    path.write_text(json.dumps(TINY), encoding="utf-8")
    return path


def config(data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(data=str(data), output=str(out), batch_size=16, epochs=3, lr=2e-3,
                warmup_steps=2, augment=0.3, val_fraction=0.2, workers=0, seed=3,
                threads=1)
    base.update(kw)
    return TrainConfig(**base)


def run(cfg: TrainConfig) -> tuple[list[float], object]:
    losses: list[float] = []

    def on_progress(ev) -> None:
        if ev.kind == "step":
            losses.append(ev.loss)

    return losses, train(cfg, on_progress=on_progress)


@pytest.fixture(scope="module")
def trained(shapes_dir, tiny_json, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    losses, result = run(config(shapes_dir, out, model=str(tiny_json), epochs=8, augment=0.0))
    return out, losses, result


def module_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


# ---- training ---------------------------------------------------------------------------------
def test_tiny_model_loss_falls_and_writes_a_model_folder(trained):
    from clipsift.models.folder import read_folder_config
    from clipsift.train.config import module_from_config

    out, losses, result = trained
    assert len(losses) == result.steps == 8 * 2
    assert np.mean(losses[-4:]) < np.mean(losses[:4]) - 0.3, losses
    cfg = read_folder_config(out)
    assert cfg.context_length == 16 and cfg.preprocess.image_size == 32
    assert cfg.extra["steps"] == result.steps
    module = module_from_config(cfg.model_cfg)
    module.load_state_dict(module_weights(out))  # strict: every key present and fitting
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 9))
    assert {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"} <= set(rows[-1])
    assert rows[-1]["n_images"] == result.n_val > 0
    assert (out / "checkpoints" / "epoch_8.pt").is_file()
    ck = torch.load(out / "checkpoints" / "epoch_8.pt", weights_only=True)  # safe format
    assert ck["state"]["epoch"] == 8
    assert not (out / "checkpoints" / "epoch_1.pt").exists()  # only the newest two kept


class Killed(Exception):
    pass


def kill_at(kind: str, number: int):
    def on_progress(ev) -> None:
        if ev.kind == kind and (ev.epoch if kind == "epoch" else ev.step) == number:
            raise Killed

    return on_progress


def test_resume_continues_exactly(shapes_dir, tiny_json, tmp_path):
    full_losses, _ = run(config(shapes_dir, tmp_path / "full", model=str(tiny_json)))
    assert len(full_losses) == 6  # 3 epochs x 2 steps

    # killed after epoch 1's checkpoint
    cut = config(shapes_dir, tmp_path / "cut", model=str(tiny_json))
    with pytest.raises(Killed):
        train(cut, on_progress=kill_at("epoch", 1))
    resumed_losses, resumed = run(config(shapes_dir, tmp_path / "cut", model=str(tiny_json),
                                         resume=True))
    assert resumed.resumed_from and resumed.resumed_from.endswith("epoch_1.pt")
    assert resumed_losses[0] == pytest.approx(full_losses[2], abs=1e-6)
    assert resumed_losses == pytest.approx(full_losses[2:], abs=1e-5)
    a, b = module_weights(tmp_path / "full"), module_weights(tmp_path / "cut")
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    rows = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2, 3]

    # killed in the middle of epoch 2, just after a step checkpoint
    mid = config(shapes_dir, tmp_path / "mid", model=str(tiny_json), checkpoint_every=1)
    with pytest.raises(Killed):
        train(mid, on_progress=kill_at("step", 3))
    mid_losses, mid_result = run(config(shapes_dir, tmp_path / "mid", model=str(tiny_json),
                                        resume=True))
    assert mid_result.resumed_from.endswith("step_3.pt")
    assert mid_losses == pytest.approx(full_losses[3:], abs=1e-5)
    assert mid_losses[0] == pytest.approx(full_losses[3], abs=1e-6)


def test_grad_accum_and_bf16_autocast(shapes_dir, tiny_json, tmp_path):
    losses, result = run(config(shapes_dir, tmp_path / "acc", model=str(tiny_json), epochs=1,
                                batch_size=8, grad_accum=2, precision="bf16"))
    assert result.steps == math.ceil((result.n_train // 8) / 2) == len(losses)
    assert all(np.isfinite(losses))


def test_refuses_to_overwrite_a_run_without_resume(trained, shapes_dir, tiny_json):
    out, _, _ = trained
    with pytest.raises(TrainingError, match="already holds a training run"):
        train(config(shapes_dir, out, model=str(tiny_json)))


def test_wise_alpha_zero_returns_start_weights(trained, shapes_dir, tmp_path):
    init, _, _ = trained
    _, result = run(config(shapes_dir, tmp_path / "ft", init=str(init), epochs=1,
                           wise_alpha=0.0))
    start, saved = module_weights(init), module_weights(tmp_path / "ft")
    assert set(start) == set(saved)
    assert all(torch.equal(start[k], saved[k]) for k in start)
    assert result.wise_alpha == 0.0


def test_interpolate_weights_endpoints_and_midpoint():
    gen = torch.Generator().manual_seed(0)
    start = {"w": torch.randn(5, 3, generator=gen), "n": torch.tensor([3])}
    tuned = {"w": torch.randn(5, 3, generator=gen), "n": torch.tensor([3])}
    assert torch.equal(interpolate_weights(start, tuned, 0.0)["w"], start["w"])
    assert torch.equal(interpolate_weights(start, tuned, 1.0)["w"], tuned["w"])
    mid = interpolate_weights(start, tuned, 0.5)["w"]
    assert torch.allclose(mid, (start["w"] + tuned["w"]) / 2)
    with pytest.raises(TrainingError):
        interpolate_weights(start, {"w": tuned["w"]}, 0.5)


@pytest.mark.parametrize("frozen", ["image", "text"])
def test_freeze_flags_keep_that_tower_fixed(trained, shapes_dir, tmp_path, frozen):
    init, _, _ = trained
    run(config(shapes_dir, tmp_path / "ft", init=str(init), epochs=1, lr=1e-2,
               freeze_image=frozen == "image", freeze_text=frozen == "text"))
    start, tuned = module_weights(init), module_weights(tmp_path / "ft")
    image_keys = [k for k in start if k.startswith("visual.")]
    text_keys = [k for k in start if not k.startswith(("visual.", "logit_"))]
    frozen_keys, live_keys = (image_keys, text_keys) if frozen == "image" else \
        (text_keys, image_keys)
    assert all(torch.equal(start[k], tuned[k]) for k in frozen_keys)
    assert any(not torch.equal(start[k], tuned[k]) for k in live_keys)


def test_bad_image_is_skipped_and_counted(shapes_dir, tiny_json, tmp_path):
    data = write_folder(tmp_path / "pairs", n_per=2)
    (data / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (data / "zz_broken.txt").write_text("a broken picture\n")
    _, result = run(config(data, tmp_path / "out", model=str(tiny_json), epochs=2,
                           batch_size=8, val_fraction=0.0))
    assert result.bad_images >= 1
    assert any("zz_broken" in e for e in result.bad_examples)


def test_cli_train_command(shapes_dir, tiny_json, tmp_path):
    from clipsift.cli.main import main

    out, backgrounds = tmp_path / "cli", tmp_path / "backgrounds"
    backgrounds.mkdir()
    Image.new("RGB", (64, 48), (20, 200, 40)).save(backgrounds / "grass.jpg")
    code = main(["train", "--data", str(shapes_dir), "--model", str(tiny_json), "--output",
                 str(out), "--epochs", "1", "--batch-size", "16", "--workers", "0",
                 "--threads", "1", "--backgrounds", str(backgrounds)])
    assert code == 0
    assert (out / "clipsift_model.json").is_file()

    assert main(["train", "--data", str(shapes_dir), "--output", str(out)]) == 2


def test_config_errors_name_the_bad_value(tmp_path):
    with pytest.raises(TrainingError, match="exactly one of"):
        TrainConfig(data="x", output="y").validate()
    with pytest.raises(TrainingError, match="precision"):
        TrainConfig(data="x", output="y", model="ViT-B-32", precision="fp8").validate()
    with pytest.raises(TrainingError, match="init"):
        TrainConfig(data="x", output="y", model="ViT-B-32:openai").validate()
    from clipsift.train.config import build_model

    with pytest.raises(TrainingError, match="ViT-B-32"):
        build_model(TrainConfig(data="x", output="y", model="ViT-B-33"))


# ---- data -----------------------------------------------------------------------------------
def test_folder_source_reads_multiple_captions(tmp_path):
    data = write_folder(tmp_path / "d", n_per=1)
    (data / "000.txt").write_text("a red circle\nsomething round and red\n")
    (data / "orphan.png").write_bytes(b"")  # no caption: skipped
    pairs = load_pairs(str(data))
    assert pairs.kind == "folder" and len(pairs.items) == 12 and pairs.skipped == 1
    assert pairs.items[0].captions == ("a red circle", "something round and red")


def test_csv_manifest_with_groups_and_merged_captions(tmp_path):
    data = write_folder(tmp_path / "imgs", n_per=2)
    manifest = tmp_path / "pairs.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "text", "family"])
        for png in sorted(data.glob("*.png")):
            caption = (data / f"{png.stem}.txt").read_text().strip()
            w.writerow([f"imgs/{png.name}", caption, caption.split()[-1]])
        w.writerow(["imgs/000.png", "another caption", "circle"])
    with pytest.raises(TrainingError, match="columns are file, text, family"):
        load_pairs(str(manifest))
    pairs = load_pairs(str(manifest), image_column="file", caption_column="text",
                       group_column="family")
    assert len(pairs.items) == 24
    assert pairs.items[0].captions == ("a red circle", "another caption")
    train_items, val_items = split_pairs(pairs.items, 0.3)
    assert {it.group for it in train_items}.isdisjoint({it.group for it in val_items})
    assert val_items and split_pairs(pairs.items, 0.3)[1] == val_items


def test_parquet_manifest_with_inline_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for _, im, caption in shape_pairs(1):
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        rows.append((buf.getvalue(), caption))
    table = pa.table({"image": [r[0] for r in rows], "caption": [r[1] for r in rows]})
    pq.write_table(table, tmp_path / "pairs.parquet")
    pairs = load_pairs(str(tmp_path / "pairs.parquet"))
    assert len(pairs.items) == 12 and pairs.items[0].data is not None


def test_tar_shards_and_loader_determinism(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    items = list(shape_pairs(2))
    for s in range(2):
        with tarfile.open(shards / f"part-{s:03d}.tar", "w") as tf:
            for name, im, caption in items[s::2]:
                buf = io.BytesIO()
                im.convert("RGB").save(buf, format="JPEG")
                for ext, payload in (("jpg", buf.getvalue()), ("txt", caption.encode())):
                    info = tarfile.TarInfo(f"{name}.{ext}")
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    for spec in (shards, shards / "part-{000..001}.tar", shards / "*.tar"):
        assert len(load_pairs(str(spec)).items) == 24
    pairs = load_pairs(str(shards))
    from clipsift.models.folder import PreprocessConfig
    from clipsift.train.config import tokenizer_for

    tokenizer, _ = tokenizer_for(TINY)
    ds = PairDataset(pairs.items, TrainTransform(PreprocessConfig(image_size=32), 1.0),
                     tokenizer, seed=1)
    first = [collate_pairs([ds[k] for k in keys]) for keys in EpochBatchSampler(24, 8, 1, 0)]
    loaded = list(make_loader(ds, 1, EpochBatchSampler(24, 8, 1, 0)))
    assert len(first) == len(loaded) == 3
    for a, b in zip(first, loaded, strict=True):
        assert a.indices == b.indices and torch.equal(a.images, b.images)
        assert torch.equal(a.tokens, b.tokens)
    later = list(make_loader(ds, 0, EpochBatchSampler(24, 8, 1, 0, start_batch=2)))
    assert torch.equal(later[0].images, first[2].images)


def test_retrieval_recall_counts_ranks():
    img = torch.eye(4)
    txt = torch.eye(4)[[0, 1, 3, 2]]  # texts 2 and 3 swapped
    m = retrieval_recall(img, txt, torch.arange(4), ks=(1, 2))
    assert m.image_to_text == {1: 0.5, 2: 1.0} and m.text_to_image == {1: 0.5, 2: 1.0}
    # image 0 has two captions, one wrong (e1) and one right (e0)
    multi = retrieval_recall(img, torch.eye(4)[[1, 1, 2, 3, 0]],
                             torch.tensor([0, 1, 2, 3, 0]), ks=(1,))
    assert multi.image_to_text[1] == 1.0
    assert multi.text_to_image[1] == pytest.approx(0.8)
