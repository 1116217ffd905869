"""Latency measurement for a shared, noisy CPU: interleaved repeats, medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch

from nncompress.errors import ConfigError


def interleaved_medians(fns: Mapping[str, Callable[[], object]], repeats: int = 30,
                        warmup: int = 2) -> dict[str, float]:
    """Median wall time in milliseconds of each callable, timed round-robin.

    Each repeat calls every function once, in an order rotated by one per repeat, so load
    from other processes falls on all of them alike. Runs under ``torch.inference_mode``.

    Example:
        >>> ms = interleaved_medians({"a": lambda: sum(range(100))}, repeats=3)
        >>> sorted(ms), ms["a"] > 0
        (['a'], True)
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                fns[n]()
        for r in range(repeats):
            k = r % len(names)
            for n in names[k:] + names[:k]:
                t0 = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t0)
    return {n: 1e3 * statistics.median(v) for n, v in times.items()}
