"""Validation of bit widths and other quantizer arguments (errors name the value and range)."""

from __future__ import annotations

from nncompress.errors import ConfigError


def check_bits(bits: object, low: int, high: int, name: str = "bits") -> int:
    """Return ``bits`` as an int, or raise ``ConfigError`` naming the value and ``low..high``.

    Example:
        >>> check_bits(4, 2, 8)
        4
    """
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ConfigError(f"{name}={bits!r} must be an integer in {low}..{high}")
    if not low <= bits <= high:
        raise ConfigError(f"{name}={bits} is out of range; allowed: {low}..{high}")
    return bits


def check_choice(value: object, allowed: tuple, name: str) -> object:
    """Return ``value`` if it is one of ``allowed``, else raise ``ConfigError``.

    Example:
        >>> check_choice("fp16", ("fp16", "bf16"), "dtype")
        'fp16'
    """
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; use one of {allowed}")
    return value


def check_range(value: float, low: float, high: float, name: str) -> float:
    """Return ``value`` if ``low <= value <= high``, else raise ``ConfigError``.

    Example:
        >>> check_range(0.05, 0.0, 1.0, "t")
        0.05
    """
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigError(f"{name}={value!r} is out of range; allowed: {low}..{high}")
    return float(value)
