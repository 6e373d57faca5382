"""Memory bounds of the server's image decoding (uploads and thumbnails).

Two limits hold together: `decode_concurrency` threads decode at once (an anyio capacity
limiter in `Service`), and their estimated peak memory (`clipsift.inputs.images.decode_cost`:
decoded buffer + RGB result + the preprocess's RGB copy) stays within
`decode_memory_bytes` (this `DecodeBudget`). Ordinary photos run side by side; images that
decode huge (an 8000x8000 float TIFF of 0.5 MB is estimated at 832 MB) take their turn
alone, so a burst of them cannot multiply the server's memory. An image costlier than the
whole budget runs alone.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

#: Pillow allocates an image in blocks of this size; at 64 MiB (Pillow's default is 16 MiB)
#: the blocks of large images are memory-mapped by the C allocator, so their memory goes
#: back to the system when freed instead of staying in the heap (measured: resident memory
#: back to idle after a burst of worst-case decodes, not +1-1.3 GB).
PILLOW_BLOCK_BYTES = 64 * 1024 * 1024


def return_freed_pixels_to_the_system() -> None:
    """Set Pillow's allocation block size to `PILLOW_BLOCK_BYTES` (process-wide; servers)."""
    from PIL import Image

    setter = getattr(Image.core, "set_block_size", None)
    if setter is not None:
        setter(PILLOW_BLOCK_BYTES)


class DecodeBudget:
    """Bytes of decode memory that may be held at once; callers wait for their share.

    Args:
        limit: the budget in bytes (>= 1).

    Example:
        >>> budget = DecodeBudget(512 * 1024 * 1024)
        >>> with budget.reserve(decode_cost(data)):
        ...     image = open_image(data)
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    @contextlib.contextmanager
    def reserve(self, cost: int) -> Iterator[None]:
        """Hold `cost` bytes (at most the whole budget) while the block runs; waits (this
        thread) until they are free."""
        share = max(0, min(int(cost), self.limit))
        with self._cond:
            self._cond.wait_for(lambda: self.used + share <= self.limit)
            self.used += share
            self.peak = max(self.peak, self.used)
        try:
            yield
        finally:
            with self._cond:
                self.used -= share
                self._cond.notify_all()
