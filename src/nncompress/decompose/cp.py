"""L4 CP decomposition of a conv kernel (Lebedev et al., ICLR 2015).

``W[o, c, i, j] ~ sum_r A[o, r] B[c, r] Kv[i, r] Kh[j, r]`` (CP-ALS), which as layers is
``1x1 conv C -> R`` (``B^T``), depthwise ``(kh x 1)`` conv (``Kv``), depthwise
``(1 x kw)`` conv (``Kh``), ``1x1 conv R -> O`` (``A``, with the original bias).
Parameters ``R (C + kh + kw + O)`` vs ``O C kh kw``.
"""

from __future__ import annotations

import logging
import math
import string
from typing import Any

import torch
from torch import nn

from nncompress.checks import check_fraction
from nncompress.decompose.common import check_rank
from nncompress.decompose.tucker import unfold

log = logging.getLogger(__name__)


def cp_max_rank(shape: tuple[int, ...] | torch.Size) -> int:
    """Upper bound of the CP rank of a tensor of ``shape``: product of all dims but the
    largest.

    Example:
        >>> cp_max_rank((50, 20, 5, 5))
        500
    """
    return math.prod(shape) // max(shape)


def cp_reconstruct(factors: list[torch.Tensor]) -> torch.Tensor:
    """``sum_r outer(f_0[:, r], f_1[:, r], ...)``."""
    letters = string.ascii_lowercase[: len(factors)]
    eq = ",".join(f"{a}z" for a in letters) + "->" + letters
    return torch.einsum(eq, *factors)


def cp_als(x: torch.Tensor, rank: int, iters: int = 500, tol: float = 1e-10, seed: int = 0
           ) -> tuple[list[torch.Tensor], float]:
    """CP decomposition by alternating least squares: ``(factors, relative error)`` with
    factor n of shape ``(x.shape[n], rank)`` and the scale spread evenly over the factors.

    Starts from the leading left singular vectors of each unfolding (random columns where
    a mode is smaller than ``rank``) and stops when the relative error changes by less
    than ``tol`` between sweeps.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> fs = [torch.randn(d, 2, generator=g) for d in (4, 3, 3)]
        >>> _, err = cp_als(cp_reconstruct(fs), 2)
        >>> err < 1e-6
        True
    """
    rank = check_rank(rank, cp_max_rank(x.shape))
    xd = x.detach().double()
    n_modes = xd.dim()
    gen = torch.Generator().manual_seed(seed)
    factors = []
    for n, d in enumerate(xd.shape):
        f = torch.randn(d, rank, generator=gen, dtype=torch.float64)
        u, _, _ = torch.linalg.svd(unfold(xd, n), full_matrices=False)
        k = min(rank, u.shape[1])
        f[:, :k] = u[:, :k]
        factors.append(f)
    letters = string.ascii_lowercase[:n_modes]
    norm = float(xd.norm())
    err, prev = math.inf, math.inf
    sweeps = 0
    for _ in range(iters):
        sweeps += 1
        for n in range(n_modes):
            others = [m for m in range(n_modes) if m != n]
            eq = letters + "," + ",".join(f"{letters[m]}z" for m in others) + "->" + letters[n] + "z"
            mttkrp = torch.einsum(eq, xd, *[factors[m] for m in others])  # (I_n, R)
            gram = torch.ones(rank, rank, dtype=torch.float64)
            for m in others:
                gram = gram * (factors[m].T @ factors[m])  # (R, R)
            factors[n] = torch.linalg.lstsq(gram, mttkrp.T, rcond=None).solution.T
        # balance the column norms across factors (the product is unchanged)
        norms = torch.stack([f.norm(dim=0) for f in factors]).clamp_min(1e-300)  # (N, R)
        geo = norms.log().mean(0).exp()  # (R,)
        factors = [f * (geo / nm) for f, nm in zip(factors, norms)]
        err = float((xd - cp_reconstruct(factors)).norm()) / max(norm, 1e-300)
        if abs(prev - err) < tol:
            break
        prev = err
    log.debug("cp_als rank %d: %d sweeps, relative error %.3g", rank, sweeps, err)
    return [f.to(x.dtype) for f in factors], err


def cp_ratio_rank(geom: dict[str, Any], ratio: float) -> int:
    """R with ``R (C + kh + kw + O) <= ratio * O C kh kw`` (at least 1).

    Example:
        >>> cp_ratio_rank({"in": 20, "out": 50, "kernel": [5, 5]}, 0.25)
        78
    """
    ratio = check_fraction(ratio, "ratio")
    (kh, kw), c, o = geom["kernel"], geom["in"], geom["out"]
    return max(1, math.floor(ratio * o * c * kh * kw / (c + kh + kw + o)))


def make_cp(geom: dict[str, Any], rank: int) -> nn.Sequential:
    """``1x1 C -> R``, depthwise ``(kh, 1)``, depthwise ``(1, kw)``, ``1x1 R -> O``
    (placeholder weights)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geom["kernel"], geom["stride"], geom["padding"], geom["dilation"]
    return nn.Sequential(
        nn.Conv2d(geom["in"], rank, 1, bias=False),
        nn.Conv2d(rank, rank, (kh, 1), stride=(sh, 1), padding=(ph, 0), dilation=(dh, 1),
                  groups=rank, bias=False),
        nn.Conv2d(rank, rank, (1, kw), stride=(1, sw), padding=(0, pw), dilation=(1, dw),
                  groups=rank, bias=False),
        nn.Conv2d(rank, geom["out"], 1, bias=geom["bias"]),
    )


@torch.no_grad()
def cp_conv(layer: nn.Conv2d, rank: int, geom: dict[str, Any], iters: int = 500, seed: int = 0
            ) -> nn.Sequential:
    """Replace ``layer`` by its rank-``R`` CP pipeline of four convs.

    Example:
        >>> from nncompress.decompose.common import layer_geometry
        >>> conv = nn.Conv2d(4, 6, 3)
        >>> [m.groups for m in cp_conv(conv, 5, layer_geometry(conv), iters=20)]
        [1, 5, 5, 1]
    """
    (a, b, kv, kh), _ = cp_als(layer.weight, rank, iters=iters, seed=seed)
    seq = make_cp(geom, rank).to(layer.weight.device, layer.weight.dtype)
    seq[0].weight.copy_(b.T[:, :, None, None])  # (R, C, 1, 1)
    seq[1].weight.copy_(kv.T[:, None, :, None])  # (R, 1, kh, 1)
    seq[2].weight.copy_(kh.T[:, None, None, :])  # (R, 1, 1, kw)
    seq[3].weight.copy_(a[:, :, None, None])  # (O, R, 1, 1)
    if layer.bias is not None:
        seq[3].bias.copy_(layer.bias)
    return seq
