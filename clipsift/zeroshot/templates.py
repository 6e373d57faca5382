"""Prompt templates and labels: the one place user input becomes validated prompts.

A template is a string with one placeholder where the label goes: ``{}``, or ``{c}`` as in
CLIP_benchmark's template files. Literal braces are written ``{{`` and ``}}`` (as in
``str.format``). Anything else in braces (``{style}``, ``{0}``, ``{:>5}``) is a usage error
naming the template and the placeholder, in the CLI, the library, evaluation and the
server alike. Validated templates are canonical: ``{}`` for the label, doubled literal
braces, so `fill` (``str.format``) is always safe.

    >>> parse_template("a photo of a {c}.")
    'a photo of a {}.'
    >>> fill(parse_template("{{logo}} of {}"), "a dog")
    '{logo} of a dog'
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import Path

from clipsift.errors import UsageError

TEMPLATE_SETS = ("imagenet80", "simple")
#: Placeholder names accepted for the label: `{}` and CLIP_benchmark's `{c}`.
LABEL_FIELDS = ("", "c")
_HELP = ("use '{}' (or '{c}') once where the label goes, e.g. 'a photo of a {}.', and write "
         "literal braces as '{{' and '}}'")


def named_templates(name: str) -> list[str]:
    """Templates of a named set, canonical (one `{}`).

    `imagenet80` is OpenAI's 80-template ImageNet ensemble and `simple` its 18-template
    short list, both taken from open_clip's metadata.

    Args:
        name: one of TEMPLATE_SETS.
    Returns:
        The templates, in the set's order.
    Raises:
        UsageError: unknown set name (the known ones are listed).
    """
    from open_clip.zero_shot_metadata import (
        OPENAI_IMAGENET_TEMPLATES,
        SIMPLE_IMAGENET_TEMPLATES,
    )

    sets = {"imagenet80": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}
    if name not in sets:
        raise UsageError(f"unknown template set {name!r}; known sets: {', '.join(TEMPLATE_SETS)}")
    mark = "\x00"  # the label slot, then literal braces escaped around it
    return [_escape(fn(mark)).replace(mark, "{}") for fn in sets[name]]


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def _fields(template: str) -> list[tuple[str, str, str, str | None]]:
    """(literal, field, spec, conversion) pieces of `template`, as str.format reads them."""
    try:
        return list(string.Formatter().parse(template))
    except ValueError as ex:  # a lone '{' or '}'
        raise UsageError(f"template {template!r}: {ex}; {_HELP}") from None


def parse_template(template: str) -> str:
    """Validate a user template and return its canonical form.

    Args:
        template: text with exactly one `{}` or `{c}` for the label; `{{`/`}}` are literal.
    Returns:
        The template with `{}` as the label slot and literal braces doubled.
    Raises:
        UsageError: no label slot, more than one, or any other placeholder (named).

    Example:
        >>> parse_template("a {c} in {{brackets}}")
        'a {} in {{brackets}}'
    """
    out: list[str] = []
    slots = 0
    for literal, field, spec, conversion in _fields(template):
        out.append(_escape(literal))
        if field is None:
            continue
        if field not in LABEL_FIELDS or spec or conversion:
            shown = "{" + field + (f"!{conversion}" if conversion else "") + \
                (f":{spec}" if spec else "") + "}"
            raise UsageError(f"template {template!r} has the placeholder {shown!r}; {_HELP}")
        slots += 1
        out.append("{}")
    if slots != 1:
        raise UsageError(f"template {template!r} has {slots} label placeholders, it needs "
                         f"exactly one; {_HELP}")
    return "".join(out)


def has_placeholder(text: str) -> bool:
    """True when `text` is meant as a template: it has a brace that is not a doubled one."""
    bare = text.replace("{{", "").replace("}}", "")
    return "{" in bare or "}" in bare


def fill(template: str, label: str) -> str:
    """The prompt for `label` from a template (validated here, so any input is safe)."""
    return parse_template(template).format(label)


def resolve_templates(templates: Sequence[str] | None = None, template_set: str | None = None
                      ) -> list[str] | None:
    """User templates and/or a named set -> one validated, canonical list.

    Args:
        templates: templates as the user typed them (`--template`, a request's list).
        template_set: a named set (TEMPLATE_SETS), appended after `templates`.
    Returns:
        The templates, or None when there are none (labels are then full prompts).
    Raises:
        UsageError: a bad template or an unknown set.
    """
    out = [parse_template(t) for t in (templates or [])]
    if template_set:
        out += named_templates(template_set)
    return out or None


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
