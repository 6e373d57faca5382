"""Split long texts into pieces that fit a model's context, without losing any words."""

from __future__ import annotations

import re
from collections.abc import Callable

_UNITS = re.compile(r"\S+\s*")


def split_to_fit(text: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    """Greedily pack whitespace-separated words into pieces of at most `max_tokens` tokens.

    A single word longer than the limit (e.g. Chinese text without spaces) is cut by
    characters. Every character of `text` ends up in exactly one piece.

    Args:
        text: the text to split.
        max_tokens: content tokens allowed per piece (context length minus start/end).
        count: function giving the number of content tokens of a string.
    Returns:
        The pieces, in order; empty pieces are dropped.
    """
    pieces: list[str] = []
    current = ""
    for unit in _units(text, max_tokens, count):
        candidate = current + unit
        if current and count(candidate) > max_tokens:
            pieces.append(current.strip())
            current = unit
        else:
            current = candidate
    if current.strip():
        pieces.append(current.strip())
    return [p for p in pieces if p]


def _units(text: str, max_tokens: int, count: Callable[[str], int]) -> list[str]:
    units: list[str] = []
    for word in _UNITS.findall(text):
        if count(word) <= max_tokens:
            units.append(word)
            continue
        chunk = ""
        for ch in word:
            if chunk and count(chunk + ch) > max_tokens:
                units.append(chunk)
                chunk = ""
            chunk += ch
        if chunk:
            units.append(chunk)
    return units
