"""Class embeddings: one unit vector per label, the renormalised mean of the unit
embeddings of its prompts (CLIP's prompt ensembling).

The one implementation used by `classify` (CLI and library), `evaluate` and the server.
The pieces keep model calls apart, so async code can encode the prompts its own way:

    prompts = prompts_for(labels, templates)          # [C * T] texts, label-major
    weights = pool(encode(prompts), len(labels), n)   # [C, D]

`class_embeddings(model, labels, templates)` does both with `model.encode_texts`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from clipsift.models.base import l2_normalize
from clipsift.zeroshot.templates import parse_template


def prompts_for(labels: Sequence[str], templates: Sequence[str] | None) -> list[str]:
    """Every label in every template, label-major: [l0 t0, l0 t1, ..., l1 t0, ...].

    Args:
        labels: class names.
        templates: templates (validated here: `{}` or `{c}` once, `{{`/`}}` literal); None
            or empty means each label is its own prompt.
    Returns:
        len(labels) * max(1, len(templates)) prompts.
    Raises:
        UsageError: a template is malformed.

    Example:
        >>> prompts_for(["cat", "dog"], ["a {}.", "art of the {c}."])
        ['a cat.', 'art of the cat.', 'a dog.', 'art of the dog.']
    """
    if not templates:
        return list(labels)
    canonical = [parse_template(t) for t in templates]
    return [t.format(label) for label in labels for t in canonical]


def templates_per_class(templates: Sequence[str] | None) -> int:
    """How many prompts `prompts_for` makes per label."""
    return max(1, len(templates or ()))


def pool(embeddings: np.ndarray, n_classes: int, n_templates: int) -> np.ndarray:
    """Class embeddings from prompt embeddings in `prompts_for` order.

    Args:
        embeddings: float [n_classes * n_templates, D], unit rows (as `encode_texts` gives).
        n_classes: number of labels.
        n_templates: prompts per label.
    Returns:
        float32 [n_classes, D], unit rows: per label, the mean of its prompts' embeddings,
        renormalised.
    Raises:
        ValueError: the row count is not n_classes * n_templates.
    """
    emb = np.asarray(embeddings, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != n_classes * n_templates:
        raise ValueError(f"expected {n_classes} x {n_templates} prompt embeddings, got shape "
                         f"{emb.shape}")
    grouped = emb.reshape(n_classes, n_templates, emb.shape[1])  # [C, T, D]
    return l2_normalize(grouped.mean(axis=1))  # [C, D]


def class_embeddings(model, labels: Sequence[str], templates: Sequence[str] | None
                     ) -> np.ndarray:
    """One unit vector per label: the renormalised mean of its prompts' unit embeddings.

    Args:
        model: a ClipModel.
        labels: class names.
        templates: templates with `{}` (or `{c}`); None uses each label as its own prompt.
    Returns:
        float32 [len(labels), dim].
    Raises:
        UsageError: a template is malformed.
    """
    prompts = prompts_for(labels, templates)
    return pool(model.encode_texts(prompts), len(labels), templates_per_class(templates))
