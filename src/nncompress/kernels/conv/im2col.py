"""im2col + GEMM convolution: every receptive field becomes one row of a lowered matrix
``(N*OH*OW, C*KH*KW)`` multiplied by the flattened kernels ``(C*KH*KW, OC)``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nncompress.kernels.conv._args import IntPair, add_bias, check_conv, out_size, pair


def conv2d_im2col(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                  groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` (cross-correlation) by im2col lowering and one GEMM; any kernel size,
    stride and zero padding; ``dilation=1``, ``groups=1``.

    Example:
        >>> x, w = torch.randn(2, 3, 7, 7), torch.randn(4, 3, 3, 3)
        >>> torch.allclose(conv2d_im2col(x, w, padding=1), F.conv2d(x, w, padding=1), atol=1e-5)
        True
    """
    (sh, sw), (ph, pw), (oh, ow) = check_conv(input, weight, bias, stride, padding, dilation, groups)
    n, c = input.shape[:2]
    oc, _, kh, kw = weight.shape
    xp = F.pad(input, (pw, pw, ph, ph))  # (N, C, H+2ph, W+2pw)
    win = xp.unfold(2, kh, sh).unfold(3, kw, sw)[:, :, :oh, :ow]  # (N, C, OH, OW, KH, KW) view
    cols = win.permute(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, c * kh * kw)  # the lowered matrix
    out = cols @ weight.reshape(oc, c * kh * kw).T  # (N*OH*OW, OC)
    return add_bias(out.view(n, oh, ow, oc).permute(0, 3, 1, 2), bias)


def im2col_memory(input_shape: Sequence[int], weight_shape: Sequence[int], stride: IntPair = 1,
                  padding: IntPair = 0) -> int:
    """Elements of the im2col lowered matrix: ``N * OH * OW * C * KH * KW``.

    Example:
        >>> im2col_memory((1, 1, 5, 5), (1, 1, 3, 3))  # 3*3 outputs x 9 taps
        81
    """
    n, c = input_shape[0], input_shape[1]
    oh, ow = out_size(input_shape, weight_shape, pair(stride, "stride", 1), pair(padding, "padding", 0))
    return n * oh * ow * c * weight_shape[-2] * weight_shape[-1]
