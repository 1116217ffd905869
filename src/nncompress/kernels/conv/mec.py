"""MEC, memory-efficient convolution (Cho & Brand 2017, arXiv 1706.06873).

Instead of one im2col row per output pixel, MEC lowers the padded input once per output
*column*: the width-wise strip ``x[:, :, :, j*sw : j*sw + KW]`` over all used rows becomes
a row ``L[n, j]`` of length ``IH * KW * C`` (ordered row, column, channel). The inputs of
output row ``i`` are then the contiguous slice ``L[:, :, i*sh*KW*C : (i*sh + KH)*KW*C]``,
and one GEMM per output row with the kernel ``(KH*KW*C, OC)`` gives it. The lowered matrix
has ``N * OW * IH * KW * C`` elements against im2col's ``N * OH * OW * KH * KW * C``
(about ``KH / sh`` times fewer).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nncompress.kernels.conv._args import IntPair, add_bias, check_conv, out_size, pair


def conv2d_mec(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
               groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` by MEC lowering and ``OH`` row GEMMs; any kernel size, stride and zero
    padding; ``dilation=1``, ``groups=1``.

    Example:
        >>> x, w = torch.randn(2, 3, 7, 7), torch.randn(4, 3, 3, 3)
        >>> torch.allclose(conv2d_mec(x, w, stride=2), F.conv2d(x, w, stride=2), atol=1e-5)
        True
    """
    (sh, sw), (ph, pw), (oh, ow) = check_conv(input, weight, bias, stride, padding, dilation, groups)
    n, c = input.shape[:2]
    oc, _, kh, kw = weight.shape
    ih = (oh - 1) * sh + kh  # padded rows any window reaches
    xp = F.pad(input, (pw, pw, ph, ph))[:, :, :ih]  # (N, C, IH, Wp)
    strips = xp.unfold(3, kw, sw)  # (N, C, IH, OW, KW) view
    low = strips.permute(0, 3, 2, 4, 1).reshape(n, ow, ih * kw * c)  # L: (N, OW, IH*KW*C)
    k = weight.permute(2, 3, 1, 0).reshape(kh * kw * c, oc)  # (KH*KW*C, OC), same order
    out = input.new_empty(n, oh, ow, oc)
    step, width = sh * kw * c, kh * kw * c
    for i in range(oh):  # one GEMM per output row over a strided view of L
        out[:, i] = low[:, :, i * step : i * step + width] @ k  # (N, OW, OC)
    return add_bias(out.permute(0, 3, 1, 2), bias)


def mec_memory(input_shape: Sequence[int], weight_shape: Sequence[int], stride: IntPair = 1,
               padding: IntPair = 0) -> int:
    """Elements of the MEC lowered matrix: ``N * OW * IH * KW * C`` with ``IH`` the padded
    rows reached by some window (``(OH - 1) * sh + KH``, the padded height at stride 1).

    Example:
        >>> mec_memory((1, 1, 5, 5), (1, 1, 3, 3))  # 3 strips of 5x3
        45
    """
    n, c = input_shape[0], input_shape[1]
    s = pair(stride, "stride", 1)
    oh, ow = out_size(input_shape, weight_shape, s, pair(padding, "padding", 0))
    kh, kw = weight_shape[-2], weight_shape[-1]
    return n * ow * ((oh - 1) * s[0] + kh) * kw * c
