"""Prompt templates: named sets, user templates, and class-embedding ensembles."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clipsift.errors import UsageError

TEMPLATE_SETS = ("imagenet80", "simple")


def named_templates(name: str) -> list[str]:
    """Templates of a named set as format strings with one `{}`.

    `imagenet80` is OpenAI's 80-template ImageNet ensemble and `simple` its 18-template
    short list, both taken from open_clip's metadata.
    """
    from open_clip.zero_shot_metadata import (
        OPENAI_IMAGENET_TEMPLATES,
        SIMPLE_IMAGENET_TEMPLATES,
    )

    sets = {"imagenet80": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}
    if name not in sets:
        raise UsageError(f"unknown template set {name!r}; known sets: {', '.join(TEMPLATE_SETS)}")
    return [fn("{}") for fn in sets[name]]


def check_template(template: str) -> str:
    """A template must contain exactly one `{}` where the label goes."""
    if template.count("{}") != 1:
        raise UsageError(
            f"template {template!r} must contain exactly one '{{}}' where the label goes, "
            "e.g. 'a photo of a {}.'"
        )
    return template


def parse_labels(labels: str | None = None, labels_file: str | Path | None = None) -> list[str]:
    """Labels from a comma-separated string and/or a UTF-8 file with one label per line."""
    out: list[str] = []
    if labels:
        out += [s.strip() for s in labels.split(",") if s.strip()]
    if labels_file:
        path = Path(labels_file)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError as ex:
            raise UsageError(f"labels file {str(path)!r} does not exist") from ex
        except UnicodeDecodeError as ex:
            raise UsageError(f"labels file {str(path)!r} is not UTF-8 text: {ex}") from ex
        out += [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not out:
        raise UsageError("no labels given: use --labels 'cat,dog' or --labels-file FILE")
    dupes = sorted({x for x in out if out.count(x) > 1})
    if dupes:
        raise UsageError(f"duplicate labels: {', '.join(dupes)}")
    return out


def resolve_templates(templates: Sequence[str] | None = None, template_set: str | None = None
                      ) -> list[str] | None:
    """Combine explicit templates and a named set; None means labels are full prompts."""
    out = [check_template(t) for t in (templates or [])]
    if template_set:
        out += named_templates(template_set)
    return out or None


def class_embeddings(model, labels: Sequence[str], templates: Sequence[str] | None) -> np.ndarray:
    """One unit vector per label: the renormalised mean of its prompts' unit embeddings.

    Args:
        model: a ClipModel.
        labels: class names.
        templates: format strings with `{}`; None uses each label as its own prompt.
    Returns:
        float32 [len(labels), dim].
    """
    from clipsift.models.base import l2_normalize

    if not templates:
        return model.encode_texts(list(labels))
    prompts = [t.format(label) for label in labels for t in templates]
    emb = model.encode_texts(prompts).reshape(len(labels), len(templates), -1)  # [C, T, D]
    return l2_normalize(emb.mean(axis=1))
