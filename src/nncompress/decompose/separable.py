"""L2 spatially separable convolution: a ``kh x kw`` conv becomes a ``(kh x 1)`` conv
``C -> r`` followed by a ``(1 x kw)`` conv ``r -> O``.

With ``M[c*kh + i, o*kw + j] = W[o, c, i, j]`` (shape ``(C kh, O kw)``) and its SVD
``M ~ U_r S_r V_r^T``: vertical filters ``V[q, c, i] = U[c kh + i, q] sqrt(s_q)``,
horizontal filters ``H[o, q, j] = sqrt(s_q) V_r^T[q, o kw + j]``, so
``sum_q H[o, q, j] V[q, c, i] = M_r[c kh + i, o kw + j]``: exact when ``rank(M) <= r``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nncompress.checks import check_fraction
from nncompress.decompose.common import check_rank, rank_for_energy


def _matrix(weight: torch.Tensor) -> torch.Tensor:
    o, c, kh, kw = weight.shape
    return weight.permute(1, 2, 0, 3).reshape(c * kh, o * kw)  # (C kh, O kw)


def separable_full_rank(weight: torch.Tensor) -> int:
    """``min(C kh, O kw)``, the rank at which the factorisation is exact."""
    o, c, kh, kw = weight.shape
    return min(c * kh, o * kw)


def separable_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(vertical (r, C, kh, 1), horizontal (O, r, 1, kw))`` conv weights.

    Example:
        >>> v, h = separable_factors(torch.randn(4, 3, 3, 3), 2)
        >>> v.shape, h.shape
        (torch.Size([2, 3, 3, 1]), torch.Size([4, 2, 1, 3]))
    """
    o, c, kh, kw = weight.shape
    r = check_rank(rank, separable_full_rank(weight))
    u, s, vh = torch.linalg.svd(_matrix(weight.detach().double()), full_matrices=False)
    root = s[:r].sqrt()
    vert = (u[:, :r] * root).T.reshape(r, c, kh, 1)  # (r, C, kh, 1)
    horiz = (root[:, None] * vh[:r]).reshape(r, o, 1, kw).permute(1, 0, 2, 3)  # (O, r, 1, kw)
    return vert.to(weight.dtype).contiguous(), horiz.to(weight.dtype).contiguous()


def separable_rank(weight: torch.Tensor, *, energy: float | None = None, ratio: float | None = None) -> int:
    """r by kept energy of ``M``'s singular values or by the parameter ratio
    ``r (C kh + O kw) <= ratio * O C kh kw``."""
    o, c, kh, kw = weight.shape
    if energy is not None:
        return rank_for_energy(torch.linalg.svdvals(_matrix(weight.detach().double())), energy)
    ratio = check_fraction(ratio, "ratio")
    return max(1, min(separable_full_rank(weight), math.floor(ratio * o * c * kh * kw / (c * kh + o * kw))))


def make_separable(geom: dict[str, Any], rank: int) -> nn.Sequential:
    """``Conv(C, r, (kh, 1)) -> Conv(r, O, (1, kw))`` with the stride/padding/dilation of
    ``geom`` split by axis (placeholder weights)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom["kernel"], geom["stride"], geom["padding"], geom["dilation"]
    return nn.Sequential(
        nn.Conv2d(geom["in"], rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1), bias=False),
        nn.Conv2d(rank, geom["out"], (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                  bias=geom["bias"]),
    )


@torch.no_grad()
def separable_conv(layer: nn.Conv2d, rank: int, geom: dict[str, Any]) -> nn.Sequential:
    """Replace ``layer`` (described by ``geom``) by its rank-``r`` separable pair.

    Example:
        >>> from nncompress.decompose.common import layer_geometry
        >>> conv = nn.Conv2d(3, 4, 3)
        >>> separable_conv(conv, 2, layer_geometry(conv))[1].kernel_size
        (1, 3)
    """
    vert, horiz = separable_factors(layer.weight, rank)
    seq = make_separable(geom, rank).to(layer.weight.device, layer.weight.dtype)
    seq[0].weight.copy_(vert)
    seq[1].weight.copy_(horiz)
    if layer.bias is not None:
        seq[1].bias.copy_(layer.bias)
    return seq
