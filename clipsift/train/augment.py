"""Training and held-out image transforms, and photo backgrounds for transparent images.

Every random choice comes from the `numpy.random.Generator` the caller passes (seeded per
sample by `clipsift.train.data.sample_seed`), so a sample's augmentation does not depend
on worker processes or on resuming.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from clipsift.errors import TrainingError
from clipsift.models.folder import PreprocessConfig

_BICUBIC = Image.Resampling.BICUBIC
BACKGROUND_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


def flatten(im: Image.Image, colour: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """An RGBA image over a solid colour (other modes are returned as they are)."""
    if im.mode != "RGBA":
        return im
    bg = Image.new("RGB", im.size, colour)
    bg.paste(im, mask=im.getchannel("A"))
    return bg


def to_tensor(im: Image.Image, pre: PreprocessConfig) -> torch.Tensor:
    arr = np.asarray(im, dtype=np.float32) / 255.0  # [H, W, 3]
    mean = np.asarray(pre.mean, np.float32)
    std = np.asarray(pre.std, np.float32)
    return torch.from_numpy(((arr - mean) / std).transpose(2, 0, 1).copy())  # [3, H, W]


class Backgrounds:
    """Photos (or textures) put under transparent training images: clip art, emoji, cut-out
    product shots. Each use takes a random crop of a random file.

    Only the paths are held (the object is sent to every data-loading worker); a file that
    cannot be read is skipped for that sample, which then gets a plain background.
    """

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    @classmethod
    def from_folder(cls, folder: str | Path) -> Backgrounds:
        """All images under `folder` (recursively); `TrainingError` if there are none."""
        root = Path(folder)
        if not root.is_dir():
            raise TrainingError(f"backgrounds folder {str(root)!r} does not exist; give a "
                                "folder of photos or textures, or leave the option out")
        paths = sorted(str(p) for p in root.rglob("*")
                       if p.suffix.lower() in BACKGROUND_EXTS and p.is_file())
        if not paths:
            raise TrainingError(f"no images (.jpg, .png, .webp, .bmp) under {str(root)!r}; "
                                "add background photos or leave the option out")
        return cls(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def sample(self, size: tuple[int, int], rng: np.random.Generator) -> Image.Image | None:
        """A random crop of a random background, resized to `size`; None if unreadable."""
        path = self.paths[int(rng.integers(len(self.paths)))]
        try:
            with Image.open(path) as src:
                src.draft("RGB", size)
                im = src.convert("RGB")
        except (OSError, ValueError):
            return None
        w, h = im.size
        side = max(1, round(min(w, h) * rng.uniform(0.3, 1.0)))
        x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
        im = im.resize(size, _BICUBIC, box=(x, y, x + side, y + side), reducing_gap=3.0)
        return ImageOps.mirror(im) if rng.random() < 0.5 else im


class EvalTransform:
    """Held-out preprocessing: white under transparency, then the model's own inference
    transform (`clipsift.models.openclip_backend.make_transform`: resize, crop, normalise)."""

    def __init__(self, pre: PreprocessConfig) -> None:
        from clipsift.models.openclip_backend import make_transform

        self.pre = pre
        self.transform = make_transform(pre)

    def __call__(self, im: Image.Image) -> torch.Tensor:
        return self.transform(flatten(im))


class TrainTransform:
    """Random augmentation scaled by `strength` in [0, 1]; 0 equals `EvalTransform`.

    With `backgrounds`, a transparent image is placed (at 55-100 % of the frame, at a random
    spot) on a random background photo with probability `background_share` x strength, as
    objects appear in photographs; otherwise on white or a plain colour.
    """

    def __init__(self, pre: PreprocessConfig, strength: float,
                 backgrounds: Backgrounds | None = None, background_share: float = 0.5) -> None:
        self.pre = pre
        self.s = strength
        self.eval = EvalTransform(pre)
        self.backgrounds = backgrounds
        self.background_share = background_share

    def _crop_box(self, w: int, h: int, rng: np.random.Generator) -> tuple[int, ...]:
        min_scale = 1.0 - 0.7 * self.s
        for _ in range(10):
            area = w * h * rng.uniform(min_scale, 1.0)
            ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
            cw, ch = round(np.sqrt(area * ratio)), round(np.sqrt(area / ratio))
            if 0 < cw <= w and 0 < ch <= h:
                x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
                return (x, y, x + cw, y + ch)
        side = min(w, h)
        return ((w - side) // 2, (h - side) // 2, (w + side) // 2, (h + side) // 2)

    def _under(self, im: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Put a transparent image on a photo, a solid colour or white."""
        if self.backgrounds and rng.random() < self.background_share * self.s:
            w, h = im.size
            frac = rng.uniform(0.55, 1.0)  # the object's longer side, as a share of the frame
            cw, ch = max(w, round(max(w, h) / frac)), max(h, round(max(w, h) / frac))
            bg = self.backgrounds.sample((cw, ch), rng)
            if bg is not None:
                x, y = int(rng.integers(0, cw - w + 1)), int(rng.integers(0, ch - h + 1))
                bg.paste(im, (x, y), mask=im.getchannel("A"))
                return bg
        white = rng.random() > 0.5 * self.s
        return flatten(im, (255, 255, 255) if white else tuple(rng.integers(0, 256, 3).tolist()))

    def __call__(self, im: Image.Image, rng: np.random.Generator) -> torch.Tensor:
        if self.s <= 0:
            return self.eval(im)
        s, size = self.s, self.pre.image_size
        im = self._under(im, rng) if im.mode == "RGBA" else im
        im = im.resize((size, size), _BICUBIC, box=self._crop_box(*im.size, rng),
                       reducing_gap=3.0)
        if rng.random() < 0.5 * s:
            im = ImageOps.mirror(im)
        if rng.random() < 0.8 * s:
            im = colour_jitter(im, 0.4 * s, rng)
        if rng.random() < 0.2 * s:
            im = ImageOps.grayscale(im).convert("RGB")
        if rng.random() < 0.2 * s:
            im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.1, 1.0 + size / 64)))
        if rng.random() < 0.25 * s:
            low = int(rng.integers(max(8, size // 4), max(9, size * 3 // 4)))
            im = im.resize((low, low), Image.Resampling.BILINEAR).resize((size, size), _BICUBIC)
        return to_tensor(im, self.pre)


def colour_jitter(im: Image.Image, amount: float, rng: np.random.Generator) -> Image.Image:
    """Brightness, contrast and saturation in random order, then a small hue shift."""
    ops = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    for i in rng.permutation(len(ops)):
        im = ops[i](im).enhance(rng.uniform(1 - amount, 1 + amount))
    shift = int(rng.uniform(-amount / 4, amount / 4) * 255)
    if shift:
        h, sat, v = im.convert("HSV").split()
        h = h.point(lambda p: (p + shift) % 256)
        im = Image.merge("HSV", (h, sat, v)).convert("RGB")
    return im


def make_train_transform(pre: PreprocessConfig, strength: float,
                         backgrounds: str | None = None, background_share: float = 0.5
                         ) -> TrainTransform:
    """The training transform, with the background photos of folder `backgrounds`."""
    found = Backgrounds.from_folder(backgrounds) if backgrounds else None
    return TrainTransform(pre, strength, found, background_share)
