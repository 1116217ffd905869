"""Learning-rate schedules as pure ``step -> multiplier`` functions."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from nncompress.errors import ConfigError

LR_SCHEDULES = ("constant", "cosine", "step")


def lr_multiplier(
    name: str, total_steps: int, milestones: Sequence[float] = (0.5, 0.75), gamma: float = 0.1
) -> Callable[[int], float]:
    """Return ``f(step) -> lr factor``.

    ``cosine``: 0.5 (1 + cos(pi t / T)); ``step``: gamma^(number of milestone fractions of
    T passed); ``constant``: 1.

    Example:
        >>> lr_multiplier("cosine", 10)(10)
        0.0
    """
    if name == "constant":
        return lambda step: 1.0
    if name == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    if name == "step":
        marks = [m * total_steps for m in milestones]
        return lambda step: gamma ** sum(step >= m for m in marks)
    raise ConfigError(f"unknown lr schedule {name!r}; allowed: {', '.join(LR_SCHEDULES)}")
