"""Scoped torch thread count, so one kernel can run on fewer threads than the process.

``torch.set_num_threads`` is process-wide; ``num_threads`` restores the previous value on
exit. Small sparse kernels (a batch-1 CSR matrix-vector product is ~0.5 ms) lose more to
OpenMP wake-up and to cores shared with other processes than they gain from a second
thread, so the planner measures both and may pin a sparse layer to one thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from nncompress.checks import check_int


def check_threads(threads: int | None) -> int | None:
    """Validate a thread count: ``None`` (use torch's current count) or an int >= 1."""
    return threads if threads is None else check_int(threads, "threads", 1)


@contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """Run the body with ``torch.set_num_threads(threads)``; ``None`` changes nothing.

    Not safe while other Python threads run torch ops (the setting is process-wide).

    Example:
        >>> with num_threads(1):
        ...     torch.get_num_threads()
        1
    """
    check_threads(threads)
    old = torch.get_num_threads()
    if threads is None or threads == old:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)
