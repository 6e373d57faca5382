"""The model protocol every backend implements, and the shared encoding logic.

A `ClipModel` bundles weights, image preprocessing and tokenizer, so one name gives all
three. Embeddings are float32 numpy arrays, L2-normalised, shape [N, dim].
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from clipsift.models.fingerprint import Fingerprint, ModelParts, config_digest, precision_class
from clipsift.models.precision import autocast_context

Preprocess = Callable[[Image.Image], torch.Tensor]


@dataclass(frozen=True)
class ModelInfo:
    """Static facts about a loaded model, stored with indexes and printed by `clipsift models`."""

    name: str
    backend: str
    dim: int
    image_size: int
    context_length: int
    logit_scale: float
    precision: str = "fp32"


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation of a float array; zero rows stay zero."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


class ClipModel(ABC):
    """A CLIP-family model: image tower, text tower, preprocessing and tokenizer.

    Example:
        >>> m = clipsift.load("mini")
        >>> m.encode_texts(["a photo of a dog"]).shape
        (1, m.dim)
    """

    name: str
    backend: str
    dim: int
    image_size: int
    context_length: int
    logit_scale: float
    preprocess: Preprocess
    device: torch.device
    notice: str | None = None  # set by load() when it fell back to another model
    precision: str = "fp32"  # set by clipsift.models.apply_precision
    #: replaces `image_features` when set (the fp32-onnx / int8 ONNX Runtime tower)
    image_runner: Callable[[torch.Tensor], torch.Tensor] | None = None
    #: the torch module holding the weights of both towers, None for backends without one
    #: (what an ONNX export of the image tower takes its parameters from)
    module: torch.nn.Module | None = None
    #: where the model came from: what `clipsift.load` was given, paths made absolute
    source: str = ""
    #: checkpoint files the weights were read from (keys the fingerprint cache)
    weight_files: tuple[str, ...] = ()
    _parts: ModelParts | None = None

    # ---- backend hooks -------------------------------------------------------------------
    @abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features for a preprocessed batch [N, 3, H, W] -> [N, D]."""

    @abstractmethod
    def _text_features(self, texts: Sequence[str]) -> torch.Tensor:
        """Unnormalised text features for texts that fit the context -> [N, D]."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Number of content tokens (without start/end tokens) of `text`."""

    @abstractmethod
    def split_tokens(self, text: str, max_tokens: int) -> list[str]:
        """Split `text` into pieces of at most `max_tokens` content tokens each."""

    def image_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Unnormalised fp32 image features of a preprocessed batch [N, 3, H, W] -> [N, D]
        (the function an ONNX export of the image tower traces)."""
        return self._image_features(pixels)

    def _model_parts(self) -> ModelParts:
        """Digests of weights, preprocessing and tokenizer (backends refine this default,
        which hashes the module's tensors and knows preprocessing only by its type)."""
        from clipsift.models.fingerprint import state_dict_digest

        if self.module is None:
            raise NotImplementedError(f"{type(self).__name__} has no fingerprint")
        cls = f"{type(self).__module__}.{type(self).__qualname__}"
        return ModelParts(
            weights=state_dict_digest(self.module, {"class": cls}),
            preprocess=config_digest({"class": type(self.preprocess).__qualname__,
                                      "image_size": self.image_size}),
            tokenizer=config_digest({"class": cls, "context_length": self.context_length}),
            source=self.source or self.name)  # a name `clipsift.load` can load again

    # ---- public API ----------------------------------------------------------------------
    @property
    def fingerprint(self) -> Fingerprint:
        """What the vectors of this model are made of: weights + preprocessing + tokenizer
        + precision class (`clipsift.models.fingerprint`). Computed on first use (hashing
        the weights; cached on disk by checkpoint file), then kept."""
        if self._parts is None:
            self._parts = self._model_parts()
        p = self._parts
        return Fingerprint(self.name, int(self.dim), p.weights, p.preprocess, p.tokenizer,
                           precision_class(self.precision), p.source)

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(
            self.name, self.backend, self.dim, self.image_size, self.context_length,
            float(self.logit_scale), self.precision,
        )

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed an already-preprocessed batch [N, 3, H, W]; returns float32 [N, D], unit rows.

        Runs at the model's precision (`load(..., precision=)`); the result is float32 always.
        """
        if pixels.ndim != 4:
            raise ValueError(f"expected a batch [N, 3, H, W], got shape {tuple(pixels.shape)}")
        if self.image_runner is not None:
            feats = self.image_runner(pixels)
        else:
            pixels = pixels.to(self.device, non_blocking=pixels.is_pinned())
            with autocast_context(self.precision, self.device):
                feats = self._image_features(pixels)  # [N, D]
        return l2_normalize(feats.float().cpu().numpy())

    def encode_images(self, images: Sequence[Image.Image | str], batch_size: int = 64
                      ) -> np.ndarray:
        """Embed PIL images or image paths; returns float32 [N, D] with unit rows.

        Paths (and encoded bytes) are opened with `clipsift.inputs.images.open_image`, whole
        and exactly (EXIF orientation, alpha on white, bomb caps), so a path gives the same
        vector as the PIL image it holds; a bad path raises `ImageError`. Use
        `clipsift.embed` for bulk work that must not stop.
        """
        from clipsift.inputs.images import open_image

        out: list[np.ndarray] = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            pil = [im if isinstance(im, Image.Image) else open_image(im) for im in chunk]
            pixels = torch.stack([self.preprocess(im) for im in pil])
            out.append(self.encode_pixels(pixels))
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Embed texts; returns float32 [N, D] with unit rows.

        A text longer than the context length is split into chunks that fit; the chunk
        embeddings are averaged and renormalised, so nothing is silently cut off. Texts are
        batched by length, so backends that trim padding do little wasted work.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        max_tokens = self.context_length - 2
        pieces: list[str] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            parts = [text]
            if self.count_tokens(text) > max_tokens:
                parts = self.split_tokens(text, max_tokens) or [text]
            pieces.extend(parts)
            owner.extend([i] * len(parts))
        order = sorted(range(len(pieces)), key=lambda k: len(pieces[k]))
        piece_emb = np.zeros((len(pieces), self.dim), np.float32)  # [P, D]
        for start in range(0, len(pieces), batch_size):
            rows = order[start : start + batch_size]
            with autocast_context(self.precision, self.device):
                f = self._text_features([pieces[k] for k in rows])
            piece_emb[rows] = l2_normalize(f.float().cpu().numpy())
        if len(pieces) == len(texts):
            return piece_emb
        summed = np.zeros((len(texts), self.dim), np.float32)
        np.add.at(summed, np.asarray(owner), piece_emb)
        return l2_normalize(summed)
