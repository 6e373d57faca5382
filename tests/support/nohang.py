"""Run a call that must not block, with a deadline: a regression fails instead of hanging.

A reader stuck opening a FIFO is released by opening the FIFO for writing, so the test run
goes on after the failure.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest


def within(seconds: float, fn: Callable[[], Any], fifos: Sequence[Path] = ()) -> Any:
    """Call `fn` in a thread; its result (or exception) if it ends within `seconds`, else
    release the FIFOs' blocked readers and fail the test."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        for fifo in fifos:  # a writer opening the FIFO lets a blocked open() return
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError:
                pass
        thread.join(5)
        pytest.fail(f"blocked for more than {seconds} s (a FIFO or device was waited on)")
    if "error" in box:
        raise box["error"]
    return box.get("value")
