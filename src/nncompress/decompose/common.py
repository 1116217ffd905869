"""Shared pieces of the low-rank methods: layer geometry (what is needed to rebuild a
replacement without the original weights), rank selection rules and cost counting."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nncompress.checks import check_fraction, check_int
from nncompress.errors import ConfigError


def layer_geometry(layer: nn.Module, name: str = "layer") -> dict[str, Any]:
    """JSON-able description of a Linear or ungrouped Conv2d layer.

    Raises ``ConfigError`` for any other module (or a grouped / string-padded conv).

    Example:
        >>> layer_geometry(nn.Linear(4, 3))
        {'type': 'linear', 'in': 4, 'out': 3, 'bias': True}
    """
    if isinstance(layer, nn.Linear):
        return {"type": "linear", "in": layer.in_features, "out": layer.out_features,
                "bias": layer.bias is not None}
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ConfigError(f"{name}: grouped conv (groups={layer.groups}) cannot be decomposed; "
                              "only groups=1 is allowed")
        if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
            raise ConfigError(f"{name}: padding {layer.padding!r}/{layer.padding_mode!r} not supported; "
                              "use integer zero padding")
        return {"type": "conv2d", "in": layer.in_channels, "out": layer.out_channels,
                "kernel": list(layer.kernel_size), "stride": list(layer.stride),
                "padding": list(layer.padding), "dilation": list(layer.dilation),
                "bias": layer.bias is not None}
    raise ConfigError(f"{name}: {type(layer).__name__} cannot be decomposed; allowed: Linear, Conv2d")


def check_geometry(geom: Any, name: str = "layer") -> dict[str, Any]:
    """Validate a geometry record read from a file (what :func:`layer_geometry` writes):
    exact keys, ``in``/``out`` >= 1, and for a conv 2-element kernel, stride, padding and
    dilation lists of ints with kernel, stride, dilation in 1..64 and padding in
    0..max(16, dilation x (kernel - 1)) (beyond that a layer mostly sees zeros). Raises ``ConfigError``.

    Example:
        >>> check_geometry({"type": "linear", "in": 4, "out": 3, "bias": True})["out"]
        3
    """
    def ints(key: str, lo: int, hi: int, n: int | None = None) -> list[int]:
        value = geom.get(key)
        values = value if n is not None else [value]
        if n is not None and (type(value) is not list or len(value) != n):
            raise ConfigError(f"{name}: geometry {key} = {str(value)[:40]} is not a list of {n} ints")
        for v in values:
            if type(v) is not int or not lo <= v <= hi:
                raise ConfigError(f"{name}: geometry {key} = {str(value)[:40]} is outside {lo}..{hi}")
        return values

    if not isinstance(geom, dict) or geom.get("type") not in ("linear", "conv2d"):
        raise ConfigError(f"{name}: geometry {str(geom)[:80]} is not a linear or conv2d record")
    keys = {"type", "in", "out", "bias"} | ({"kernel", "stride", "padding", "dilation"}
                                            if geom["type"] == "conv2d" else set())
    if set(geom) != keys:
        raise ConfigError(f"{name}: geometry keys {sorted(geom)} are not {sorted(keys)}")
    ints("in", 1, 2**31)
    ints("out", 1, 2**31)
    if type(geom["bias"]) is not bool:
        raise ConfigError(f"{name}: geometry bias = {str(geom['bias'])[:40]} is not true or false")
    if geom["type"] == "conv2d":
        kernel = ints("kernel", 1, 64, 2)
        ints("stride", 1, 64, 2)
        dilation = ints("dilation", 1, 64, 2)
        for axis, pad in enumerate(ints("padding", 0, 64 * 63, 2)):
            if pad > max(dilation[axis] * (kernel[axis] - 1), 16):
                raise ConfigError(f"{name}: geometry padding {geom['padding']} exceeds max(16, dilation "
                                  f"x (kernel - 1) = {dilation[axis] * (kernel[axis] - 1)})")
    return geom


def require_conv(geom: dict[str, Any], method: str, name: str = "layer") -> None:
    """Raise ``ConfigError`` unless ``geom`` describes a Conv2d (``method`` needs one)."""
    if geom["type"] != "conv2d":
        raise ConfigError(f"{name}: method {method!r} needs a Conv2d, got {geom['type']}")


def check_rank(rank: int, full: int, what: str = "rank") -> int:
    """``rank`` as an int in [1, full], else ``ConfigError`` naming it.

    Example:
        >>> check_rank(3, 5)
        3
    """
    return check_int(rank, what, 1, full)


def rank_for_energy(values: torch.Tensor, energy: float) -> int:
    """Smallest k with ``sum(s_1..s_k ^2) >= energy * sum(s^2)`` (``values`` = singular
    values in any order).

    Example:
        >>> rank_for_energy(torch.tensor([3.0, 2.0, 1.0]), 0.9)   # 9/14, 13/14, 14/14
        2
    """
    check_fraction(energy, "energy")
    sq = torch.sort(values.detach().double().abs(), descending=True).values ** 2
    cum = torch.cumsum(sq, 0)  # (K,)
    target = energy * float(cum[-1]) * (1 - 1e-12)
    k = int(torch.searchsorted(cum, torch.tensor([target], dtype=cum.dtype))[0]) + 1
    return max(1, min(k, len(sq)))


def count_params(module: nn.Module) -> int:
    """Number of parameter elements of ``module``."""
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, input_shape: tuple[int, ...] | torch.Size) -> int:
    """Multiply-accumulates of the Linear/Conv layers in one forward pass of a batch of
    ``input_shape`` (per sample from the project's H1 accounting,
    ``nncompress.analysis.accounting``, times the batch size).

    Example:
        >>> count_macs(nn.Linear(4, 3), (1, 4))
        12
    """
    from nncompress.analysis.accounting import layer_stats, totals

    p = next(module.parameters())
    x = torch.zeros(tuple(input_shape), dtype=p.dtype, device=p.device)
    return totals(layer_stats(module, x))["macs"] * x.shape[0]


def conv_weight_count(geom: dict[str, Any]) -> int:
    """Weights of the original layer (``m*n`` or ``O*C*kh*kw``)."""
    return geom["out"] * geom["in"] * math.prod(geom.get("kernel", [1]))
