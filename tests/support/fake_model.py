"""A deterministic, weight-free embedder, registered as the model names ``fake`` and
``fake:DIM`` through clipsift's plugin hook.

It lets the CLI -> index -> search path run end to end in tests without any weights:
image vectors are a fixed random projection of a tiny thumbnail (so near-duplicate images
get near-identical vectors), text vectors are a fixed projection of hashed words.

tests/conftest.py imports it and names this file in $CLIPSIFT_PLUGINS, so `--model fake`
works in the test process and in every subprocess it starts (the CLI, `clipsift serve`);
benchmarks do the same for their children.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from clipsift.errors import UsageError
from clipsift.models.base import ClipModel
from clipsift.models.fingerprint import ModelParts, config_digest
from clipsift.models.registry import ModelRef, register

_THUMB = 8
_SEED = 1234


def _fake_preprocess(image: Image.Image) -> torch.Tensor:
    """Resize to an 8x8 RGB thumbnail -> float tensor [3, 8, 8] in [0, 1]."""
    small = image.convert("RGB").resize((_THUMB, _THUMB), Image.Resampling.BILINEAR)
    arr = np.asarray(small, dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class FakeModel(ClipModel):
    """Deterministic stand-in for a CLIP model (dim 64 by default)."""

    backend = "fake"

    def __init__(self, dim: int = 64, context_length: int = 77) -> None:
        self.name = "fake" if dim == 64 else f"fake:{dim}"
        self.dim = dim
        self.image_size = _THUMB
        self.context_length = context_length
        self.logit_scale = 100.0
        self.preprocess = _fake_preprocess
        self.device = torch.device("cpu")
        gen = torch.Generator().manual_seed(_SEED)
        self._proj = torch.randn(3 * _THUMB * _THUMB, dim, generator=gen)

    def _model_parts(self) -> ModelParts:
        """The fake model's weights are its seed and dimension (the name says the dim)."""
        return ModelParts(config_digest({"fake": "projection", "seed": _SEED, "dim": self.dim}),
                          config_digest({"fake": "thumbnail", "size": _THUMB}),
                          config_digest({"fake": "hashed words"}), self.source or self.name)

    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        flat = pixels.reshape(pixels.shape[0], -1) - 0.5  # [N, 192]
        return flat @ self._proj  # [N, D]

    @staticmethod
    def _words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    def _word_vector(self, word: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
        return np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32)

    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            vec = np.zeros(self.dim, np.float32)
            for w in self._words(text):
                vec += self._word_vector(w)
            if not vec.any():
                vec = self._word_vector("<empty>")
            rows.append(vec)
        return torch.from_numpy(np.stack(rows))

    def count_tokens(self, text: str) -> int:
        return len(self._words(text))

    def split_tokens(self, text: str, max_tokens: int) -> list[str]:
        words = self._words(text)
        return [" ".join(words[i : i + max_tokens]) for i in range(0, len(words), max_tokens)]


def load_fake(ref: ModelRef, device: str) -> FakeModel:
    """`fake` (dim 64) or `fake:DIM`."""
    if not ref.ref:
        return FakeModel()
    if not ref.ref.isdigit() or not 1 <= int(ref.ref) <= 65536:
        raise UsageError(f"fake:DIM needs a dimension from 1 to 65536, got {ref.ref!r}")
    return FakeModel(int(ref.ref))


register("fake", load_fake, "fake, fake:DIM: deterministic weight-free test embedder")
