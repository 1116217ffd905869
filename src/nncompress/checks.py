"""Range and choice validators shared by every config and entry point.

Each returns the checked value (as ``int`` / ``float``) or raises ``ConfigError`` naming
the argument, the value and what is allowed:
``check_float(1.5, "energy", 0, 1, lo_open=True)`` -> ``energy must be in (0, 1], got 1.5``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypeVar

from nncompress.errors import ConfigError

T = TypeVar("T")


def interval(lo: float | None, hi: float | None, lo_open: bool = False, hi_open: bool = False) -> str:
    """``[lo, hi]``-style text of a range; a missing bound reads as ``>= lo`` / ``<= hi``.

    Example:
        >>> interval(0, 1, hi_open=True), interval(1, None), interval(0, None, lo_open=True)
        ('[0, 1)', '>= 1', '> 0')
    """
    if hi is None:
        return "any value" if lo is None else f"{'>' if lo_open else '>='} {lo}"
    if lo is None:
        return f"{'<' if hi_open else '<='} {hi}"
    return f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def _inside(v: float, lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> bool:
    if math.isnan(v):
        return False
    if lo is not None and (v < lo or (lo_open and v == lo)):
        return False
    return hi is None or not (v > hi or (hi_open and v == hi))


def check_int(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]`` (a missing bound is open-ended; an integral
    float such as ``3.0`` counts as its int).

    Example:
        >>> check_int(3, "steps", 1)
        3
    """
    where = interval(lo, hi)
    if isinstance(value, (bool, str)) or not _is_integral(value) or not _inside(float(value), lo, hi, False, False):
        raise ConfigError(f"{name} must be an integer {_phrase(where)}, got {value!r}")
    return int(value)


def _is_integral(value: Any) -> bool:
    try:
        return float(value) == int(value)
    except (TypeError, ValueError, OverflowError):
        return False


def check_float(value: Any, name: str, lo: float | None = None, hi: float | None = None, *,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` as a float inside the range (``lo_open`` / ``hi_open`` exclude the bound;
    NaN is never inside).

    Example:
        >>> check_float(0.5, "target", 0, 1, hi_open=True)
        0.5
    """
    where = interval(lo, hi, lo_open, hi_open)
    try:
        if isinstance(value, (bool, str)):
            raise TypeError
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name} must be a number {_phrase(where)}, got {value!r}") from exc
    if not _inside(v, lo, hi, lo_open, hi_open):
        raise ConfigError(f"{name} must be {_phrase(where)}, got {value!r}")
    return v


def _phrase(where: str) -> str:
    return f"in {where}" if where[0] in "([" else where


def check_fraction(value: Any, name: str, *, zero: bool = False, one: bool = True) -> float:
    """A fraction: ``(0, 1]`` by default; ``zero=True`` admits 0, ``one=False`` excludes 1
    (``[0, 1)`` is a share removed, e.g. a sparsity or a pruning target).

    Example:
        >>> check_fraction(0.9, "energy"), check_fraction(0.0, "sparsity", zero=True, one=False)
        (0.9, 0.0)
    """
    return check_float(value, name, 0, 1, lo_open=not zero, hi_open=not one)


def check_choice(value: T, allowed: Iterable[Any], name: str) -> T:
    """``value`` if it is one of ``allowed``.

    Example:
        >>> check_choice("global", ("global", "layer"), "mode")
        'global'
    """
    allowed = tuple(allowed)
    try:
        known = value in allowed
    except TypeError:  # an unhashable value against a mapping's keys
        known = False
    if not known:
        raise ConfigError(f"{name}={value!r} not allowed; allowed: {', '.join(map(str, allowed))}")
    return value
