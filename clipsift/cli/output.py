"""Shared console helpers for CLI commands (stderr for messages, stdout for results)."""

from __future__ import annotations

import sys


def print_error(message: str) -> None:
    """Print an error for a person on stderr, no traceback."""
    from rich.console import Console

    Console(stderr=True, highlight=False, soft_wrap=True).print(
        f"[bold red]error:[/] {message}", markup=True
    )


def notice(message: str) -> None:
    """A one-line notice on stderr (fallbacks, summaries)."""
    sys.stderr.write(message.rstrip("\n") + "\n")
