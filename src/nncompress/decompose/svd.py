"""L1 truncated SVD of a Linear layer.

``W (m, n) ~ U_k S_k V_k^T`` becomes ``Linear(n, k, bias=False)`` with weight
``S_k^(1/2) V_k^T`` followed by ``Linear(k, m)`` with weight ``U_k S_k^(1/2)`` and the
original bias. Parameters: ``k (m + n) + m`` (the catalogue's ``k (m + n + 1)`` counts the
k singular values separately; here they are folded into both factors) vs ``m n + m``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nncompress.checks import check_fraction
from nncompress.decompose.common import check_rank, rank_for_energy


def svd_factors(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, B)`` with ``A (m, k) @ B (k, n) ~ weight (m, n)``, the best rank-``k``
    approximation (Eckart-Young), each factor carrying ``sqrt(s)``.

    Example:
        >>> w = torch.randn(5, 4)
        >>> a, b = svd_factors(w, 4)
        >>> torch.allclose(a @ b, w, atol=1e-5)
        True
    """
    m, n = weight.shape
    k = check_rank(rank, min(m, n))
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    root = s[:k].sqrt()
    a = u[:, :k] * root  # (m, k)
    b = root[:, None] * vh[:k]  # (k, n)
    return a.to(weight.dtype), b.to(weight.dtype)


def svd_rank(weight: torch.Tensor, *, energy: float | None = None, ratio: float | None = None) -> int:
    """k by kept energy (smallest k with ``sum_k s^2 / sum s^2 >= energy``) or by the
    target parameter ratio ``k (m + n) <= ratio * m n`` (at least 1).

    Example:
        >>> svd_rank(torch.eye(4), ratio=0.5)
        1
    """
    m, n = weight.shape
    if energy is not None:
        return rank_for_energy(torch.linalg.svdvals(weight.detach().double()), energy)
    ratio = check_fraction(ratio, "ratio")
    return max(1, min(min(m, n), math.floor(ratio * m * n / (m + n))))


def make_svd(geom: dict[str, Any], rank: int) -> nn.Sequential:
    """The two-Linear replacement (placeholder weights) for a Linear of ``geom``."""
    return nn.Sequential(nn.Linear(geom["in"], rank, bias=False),
                         nn.Linear(rank, geom["out"], bias=geom["bias"]))


@torch.no_grad()
def svd_linear(layer: nn.Linear, rank: int) -> nn.Sequential:
    """Replace ``layer`` by ``Linear(n, k, bias=False) -> Linear(k, m)``.

    Example:
        >>> svd_linear(nn.Linear(8, 6), 2)[0].weight.shape
        torch.Size([2, 8])
    """
    a, b = svd_factors(layer.weight, rank)
    seq = make_svd({"in": layer.in_features, "out": layer.out_features,
                    "bias": layer.bias is not None}, rank).to(layer.weight.device, layer.weight.dtype)
    seq[0].weight.copy_(b)
    seq[1].weight.copy_(a)
    if layer.bias is not None:
        seq[1].bias.copy_(layer.bias)
    return seq
