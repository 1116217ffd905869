"""Argument checks shared by the E2 convolution algorithms (the ``F.conv2d`` signature)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nncompress.errors import ConfigError

IntPair = int | Sequence[int]


def pair(value: IntPair, name: str, minimum: int) -> tuple[int, int]:
    """``value`` as ``(h, w)``; ConfigError unless both are ints >= ``minimum``."""
    if isinstance(value, str):
        raise ConfigError(f"{name}={value!r} not supported; give an int or a pair of ints")
    vals = (value, value) if isinstance(value, int) else tuple(value)
    if len(vals) != 2 or not all(isinstance(v, int) and v >= minimum for v in vals):
        raise ConfigError(f"{name} must be an int or a pair of ints >= {minimum}, got {value!r}")
    return int(vals[0]), int(vals[1])


def check_conv(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               stride: IntPair, padding: IntPair, dilation: IntPair, groups: int
               ) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Validate a dense 2-D convolution call; returns ``(stride, padding, (oh, ow))``."""
    if input.dim() != 4 or weight.dim() != 4:
        raise ConfigError(f"input must be (N, C, H, W) and weight (OC, C, KH, KW), got shapes "
                          f"{tuple(input.shape)} and {tuple(weight.shape)}")
    if groups != 1:
        raise ConfigError(f"groups={groups} not supported; only groups=1")
    if pair(dilation, "dilation", 1) != (1, 1):
        raise ConfigError(f"dilation={dilation!r} not supported; only dilation=1")
    if input.shape[1] != weight.shape[1]:
        raise ConfigError(f"input has {input.shape[1]} channels, weight expects {weight.shape[1]}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ConfigError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    s, p = pair(stride, "stride", 1), pair(padding, "padding", 0)
    oh, ow = out_size(tuple(input.shape), tuple(weight.shape), s, p)
    return s, p, (oh, ow)


def out_size(input_shape: Sequence[int], weight_shape: Sequence[int], stride: tuple[int, int],
             padding: tuple[int, int]) -> tuple[int, int]:
    """Output ``(oh, ow)``; ConfigError when the (padded) input is smaller than the kernel."""
    ih, iw = input_shape[-2] + 2 * padding[0], input_shape[-1] + 2 * padding[1]
    kh, kw = weight_shape[-2], weight_shape[-1]
    if ih < kh or iw < kw:
        raise ConfigError(f"padded input {ih}x{iw} is smaller than the {kh}x{kw} kernel")
    return (ih - kh) // stride[0] + 1, (iw - kw) // stride[1] + 1


def add_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``out (N, OC, OH, OW)`` plus a per-channel ``bias (OC,)`` if given."""
    return out if bias is None else out + bias.view(1, -1, 1, 1)
