"""Winograd minimal filtering F(2x2, 3x3) (Lavin & Gray 2016, arXiv 1509.09308).

The padded input is cut into 4x4 tiles with stride 2 (overlapping by 2); each tile ``d``
and kernel ``g`` give a 2x2 output tile ``Y = A^T [(G g G^T) * (B^T d B)] A``: 16
multiplications instead of 36. Summing over input channels in the transformed domain
turns the elementwise products into 16 GEMMs ``(OC, C) @ (C, tiles)``. The last row /
column of tiles is zero-padded when the output size is odd and cropped afterwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nncompress.errors import ConfigError
from nncompress.kernels.conv._args import IntPair, add_bias, check_conv


def winograd_f23_matrices(dtype: torch.dtype = torch.float32,
                          device: torch.device | str | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(B^T (4, 4), G (4, 3), A^T (2, 4))`` of F(2, 3); the 1-D rule is
    ``y = A^T [(G g) * (B^T d)]`` for a 4-sample input ``d`` and a 3-tap filter ``g``.

    Example:
        >>> bt, g, at = winograd_f23_matrices()
        >>> d, k = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 0.0, -1.0])
        >>> (at @ ((g @ k) * (bt @ d))).tolist()  # [1-3, 2-4]
        [-2.0, -2.0]
    """
    bt = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
                      dtype=dtype, device=device)
    g = torch.tensor([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]],
                     dtype=dtype, device=device)
    at = torch.tensor([[1, 1, 1, 0], [0, 1, -1, -1]], dtype=dtype, device=device)
    return bt, g, at


def conv2d_winograd(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                    stride: IntPair = 1, padding: IntPair = 0, dilation: IntPair = 1,
                    groups: int = 1) -> torch.Tensor:
    """``F.conv2d`` for 3x3 kernels at stride 1 by Winograd F(2x2, 3x3); any zero padding,
    batch and channel counts, odd output sizes. ConfigError for other kernels or strides.

    Example:
        >>> x, w = torch.randn(2, 3, 9, 9), torch.randn(4, 3, 3, 3)
        >>> torch.allclose(conv2d_winograd(x, w, padding=1), F.conv2d(x, w, padding=1), atol=1e-4)
        True
    """
    if weight.dim() == 4 and tuple(weight.shape[2:]) != (3, 3):
        raise ConfigError(f"Winograd F(2x2,3x3) needs a 3x3 kernel, got {tuple(weight.shape[2:])}")
    (sh, sw), (ph, pw), (oh, ow) = check_conv(input, weight, bias, stride, padding, dilation, groups)
    if (sh, sw) != (1, 1):
        raise ConfigError(f"Winograd F(2x2,3x3) needs stride 1, got {stride!r}")
    n, c = input.shape[:2]
    oc = weight.shape[0]
    th, tw = (oh + 1) // 2, (ow + 1) // 2  # output tiles per column / row
    # pad: the requested zero padding, then extra bottom/right rows so every tile is whole
    xp = F.pad(input, (pw, pw + 2 * tw - ow, ph, ph + 2 * th - oh))  # (N, C, 2th+2, 2tw+2)
    tiles = xp.unfold(2, 4, 2).unfold(3, 4, 2)  # (N, C, th, tw, 4, 4)
    bt, g, at = winograd_f23_matrices(input.dtype, input.device)
    # transforms as einsums that land directly in the GEMM layouts
    v = torch.einsum("ai,bj,ncxyij->abcnxy", bt, bt, tiles)  # B^T d B: (4, 4, C, N, th, tw)
    u = torch.einsum("ai,bj,kcij->abkc", g, g, weight)  # G g G^T: (4, 4, OC, C)
    m = torch.bmm(u.reshape(16, oc, c), v.reshape(16, c, n * th * tw))  # (16, OC, P)
    m = m.view(4, 4, oc, n, th, tw)
    y = torch.einsum("ai,bj,ijknxy->nkxayb", at, at, m)  # A^T M A: (N, OC, th, 2, tw, 2)
    y = y.reshape(n, oc, 2 * th, 2 * tw)[:, :, :oh, :ow]
    return add_bias(y, bias)
