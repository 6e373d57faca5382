"""Training augmentation: photo backgrounds under transparent images, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from clipsift.errors import TrainingError
from clipsift.models.folder import PreprocessConfig
from clipsift.train import TrainConfig
from clipsift.train.augment import Backgrounds, TrainTransform, make_train_transform

GREEN = (20, 200, 40)
RED = (230, 20, 20)


@pytest.fixture()
def greens(tmp_path):
    folder = tmp_path / "backgrounds"
    (folder / "sub").mkdir(parents=True)
    Image.new("RGB", (300, 200), GREEN).save(folder / "field.jpg", quality=95)
    Image.new("RGB", (120, 160), GREEN).save(folder / "sub" / "lawn.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def cutout() -> Image.Image:
    """A red square on a transparent canvas."""
    im = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    im.paste(Image.new("RGBA", (20, 20), (*RED, 255)), (10, 10))
    return im


def test_backgrounds_folder_lists_images_recursively(greens):
    found = Backgrounds.from_folder(greens)
    assert [p.rsplit("/", 1)[-1] for p in found.paths] == ["field.jpg", "lawn.png"]


def test_transparent_image_is_put_on_a_background_photo(greens):
    transform = TrainTransform(PreprocessConfig(image_size=32), 1.0,
                               Backgrounds.from_folder(greens), background_share=0.8)
    placed = 0
    for seed in range(20):
        out = np.asarray(transform._under(cutout(), np.random.default_rng(seed)))
        pixels = out.reshape(-1, 3)
        is_green = (np.abs(pixels.astype(int) - GREEN).max(axis=1) < 12)
        is_red = (np.abs(pixels.astype(int) - RED).max(axis=1) < 12)
        assert is_red.sum() >= 400  # the object is never lost
        placed += bool(is_green.any())
        if is_green.any():  # the object fills 55-100 % of the frame's longer side
            assert out.shape[0] >= 40 and max(out.shape[:2]) <= 40 / 0.55 + 1
    assert 10 <= placed <= 19  # mostly on a photo (80 %), sometimes plain
    never = TrainTransform(PreprocessConfig(image_size=32), 1.0,
                           Backgrounds.from_folder(greens), background_share=0.0)
    assert all(never._under(cutout(), np.random.default_rng(s)).size == (40, 40)
               for s in range(10))


def test_no_backgrounds_keeps_plain_colours(greens):
    transform = TrainTransform(PreprocessConfig(image_size=32), 1.0)
    for seed in range(10):
        out = np.asarray(transform._under(cutout(), np.random.default_rng(seed)))
        corner = out[0, 0]
        assert out.shape[:2] == (40, 40)
        assert (out == corner).all(axis=2)[:10].all()  # one solid colour around the object


def test_augmentation_with_backgrounds_is_deterministic(greens):
    transform = make_train_transform(PreprocessConfig(image_size=32), 1.0, str(greens))
    a = transform(cutout(), np.random.default_rng(7))
    b = transform(cutout(), np.random.default_rng(7))
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    opaque = cutout().convert("RGB")  # opaque images never get a background
    assert transform(opaque, np.random.default_rng(1)).shape == (3, 32, 32)


def test_unreadable_background_falls_back_to_a_plain_colour(tmp_path):
    bad = tmp_path / "bg"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    transform = TrainTransform(PreprocessConfig(image_size=32), 1.0,
                               Backgrounds.from_folder(bad))
    for seed in range(5):
        out = transform._under(cutout(), np.random.default_rng(seed))
        assert out.mode == "RGB" and out.size == (40, 40)


def test_background_errors_name_the_folder(tmp_path):
    with pytest.raises(TrainingError, match="background_share"):
        TrainConfig(data="x", output="y", model="ViT-B-32", background_share=1.5).validate()
    with pytest.raises(TrainingError, match="nowhere"):
        TrainConfig(data="x", output="y", model="ViT-B-32",
                    backgrounds=str(tmp_path / "nowhere")).validate()
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="no images"):
        Backgrounds.from_folder(tmp_path / "empty")
