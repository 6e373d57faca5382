"""Prompt sets for evaluation: what `--prompts` values mean, and their class embeddings.

A prompt set is every class's prompts: from templates (`{}` or `{c}`, validated by
`clipsift.zeroshot.templates`, the same rule as classify and the server), from a file of
templates or of one prompt per class, or from a dataset's own prompts (Roboflow's
`_tokenization.txt`). `TextBank` encodes each distinct prompt once and pools class
embeddings with `clipsift.zeroshot.classes.pool`, the function classify and the server use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from clipsift.errors import UsageError
from clipsift.evaluation.datasets import Dataset
from clipsift.zeroshot.classes import pool, prompts_for
from clipsift.zeroshot.templates import (
    TEMPLATE_SETS,
    has_placeholder,
    named_templates,
    parse_template,
)

DEFAULT_PROMPTS = ("{}", "a photo of a {}.", "imagenet80")


@dataclass(frozen=True)
class PromptSet:
    """Prompts for every class (several per class are averaged into one class embedding).

    Attributes:
        name: how the set is shown ("a photo of a {}.", "imagenet80", "_tokenization.txt").
        prompts: per class, its prompts, aligned with `Dataset.classes`.
        templates: the templates the set was made of, or None for per-class prompts.
    """

    name: str
    prompts: tuple[tuple[str, ...], ...]
    templates: tuple[str, ...] | None = None

    @property
    def per_class(self) -> int:
        return max(len(p) for p in self.prompts)

    @classmethod
    def from_templates(cls, name: str, templates: Sequence[str], classes: Sequence[str]
                       ) -> PromptSet:
        """Every class in every template (validated; `{}` or `{c}` marks the class)."""
        canonical = tuple(parse_template(t) for t in templates)
        flat = prompts_for(classes, canonical)  # class-major
        n = len(canonical)
        prompts = tuple(tuple(flat[i * n : (i + 1) * n]) for i in range(len(classes)))
        return cls(name, prompts, canonical)


def parse_prompts(spec: str, classes: Sequence[str]) -> PromptSet:
    """One `--prompts` value -> a PromptSet.

    `spec` is a named template set (imagenet80, simple), a file, or a template with `{}`
    (or CLIP_benchmark's `{c}`). A file holds either templates (every line has a
    placeholder: one ensemble; CLIP_benchmark template files work as they are) or one full
    prompt per class in class order (like a Roboflow `_tokenization.txt`).

    Raises:
        UsageError: not a set, file or template; a malformed template; or a file that fits
            neither form.
    """
    if spec in TEMPLATE_SETS:
        return PromptSet.from_templates(spec, named_templates(spec), classes)
    path = Path(spec).expanduser()
    if not has_placeholder(spec) and path.is_file():
        try:
            lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines()
                     if ln.strip() and not ln.lstrip().startswith("#")]
        except (OSError, UnicodeDecodeError) as ex:
            raise UsageError(f"cannot read prompt file {spec!r}: {ex}") from ex
        if lines and all(has_placeholder(ln) for ln in lines):
            return PromptSet.from_templates(path.name, lines, classes)
        if len(lines) == len(classes) and not any(has_placeholder(ln) for ln in lines):
            return PromptSet(path.name, tuple((ln,) for ln in lines))
        raise UsageError(
            f"prompt file {spec!r} has {len(lines)} line(s): give either templates with '{{}}' "
            f"on every line, or exactly one prompt per class ({len(classes)}) in class order")
    if not has_placeholder(spec):
        raise UsageError(f"--prompts {spec!r} is not a template with '{{}}', a prompt file, or "
                         f"a named set ({', '.join(TEMPLATE_SETS)})")
    return PromptSet.from_templates(spec, [spec], classes)


def prompt_sets_for(dataset: Dataset, specs: Sequence[str] | None) -> list[PromptSet]:
    """The dataset's own prompts (Roboflow tokenization) first, then `specs` (or defaults)."""
    sets: list[PromptSet] = []
    if dataset.prompts is not None:
        sets.append(PromptSet("_tokenization.txt", tuple((p,) for p in dataset.prompts)))
    for spec in specs or DEFAULT_PROMPTS:
        ps = parse_prompts(spec, dataset.classes)
        if all(ps.prompts != s.prompts for s in sets):
            sets.append(ps)
    return sets


class TextBank:
    """Encodes each distinct prompt once; builds class embeddings for any prompt set."""

    def __init__(self, model) -> None:
        self.model = model
        self._vecs: dict[str, np.ndarray] = {}

    def class_weights(self, ps: PromptSet) -> np.ndarray:
        """float32 [C, D]: per class, the renormalised mean of its unit prompt embeddings
        (`clipsift.zeroshot.classes.pool`, as classify and the server compute them)."""
        flat = [p for cls in ps.prompts for p in cls]
        todo = [p for p in dict.fromkeys(flat) if p not in self._vecs]
        if todo:
            self._vecs.update(zip(todo, self.model.encode_texts(todo), strict=True))
        sizes = {len(cls) for cls in ps.prompts}
        if len(sizes) == 1:
            return pool(np.stack([self._vecs[p] for p in flat]), len(ps.prompts), sizes.pop())
        return np.concatenate([pool(np.stack([self._vecs[p] for p in cls]), 1, len(cls))
                               for cls in ps.prompts])
