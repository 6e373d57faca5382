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


def progress_bar(label: str, rate: str, *extra: str, console=None):
    """A rich progress bar on stderr: LABEL, bar, done/total, RATE, elapsed, ETA, then the
    EXTRA text columns. Texts are rich templates (``{task.fields[rate]:.1f} img/s``)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(rate),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
               *(TextColumn(text) for text in extra)]
    return Progress(*columns, console=console or Console(stderr=True), transient=False)
