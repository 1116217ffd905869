"""L3 Tucker-2 decomposition of a conv kernel (Kim et al., ICLR 2016).

``W (O, C, kh, kw) ~ G x_0 U_out x_1 U_in`` with ``U_in (C, R3)``, ``U_out (O, R4)``
orthonormal and core ``G (R4, R3, kh, kw)``, computed by HOSVD followed by a few HOOI
sweeps. As layers: ``1x1 conv C -> R3`` (``U_in^T``), ``kh x kw`` core conv ``R3 -> R4``
with the original stride/padding, ``1x1 conv R4 -> O`` (``U_out``) with the original bias.
Parameters ``C R3 + R3 R4 kh kw + R4 O`` vs ``O C kh kw``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nncompress.checks import check_fraction
from nncompress.decompose.common import check_rank, rank_for_energy


def unfold(x: torch.Tensor, mode: int) -> torch.Tensor:
    """Mode-``mode`` unfolding: ``(x.shape[mode], prod(other dims))``."""
    return x.movedim(mode, 0).reshape(x.shape[mode], -1)


def leading_subspace(mat: torch.Tensor, rank: int) -> torch.Tensor:
    """``(rows, rank)`` orthonormal basis of the top-``rank`` left singular subspace of
    ``mat`` (eigenvectors of ``mat mat^T``, so ``rank`` may reach ``rows``)."""
    _, vecs = torch.linalg.eigh(mat @ mat.T)  # ascending eigenvalues
    return vecs.flip(1)[:, :rank]


def tucker2_factors(weight: torch.Tensor, rank_out: int, rank_in: int, iters: int = 10
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(core (R4, R3, kh, kw), u_out (O, R4), u_in (C, R3))`` by HOSVD + ``iters`` HOOI
    sweeps; exact when ``R4 = O`` and ``R3 = C``.

    Example:
        >>> w = torch.randn(6, 4, 3, 3)
        >>> core, uo, ui = tucker2_factors(w, 6, 4)
        >>> torch.allclose(tucker2_reconstruct(core, uo, ui), w, atol=1e-5)
        True
    """
    o, c = weight.shape[:2]
    r4, r3 = check_rank(rank_out, o, "output rank"), check_rank(rank_in, c, "input rank")
    w = weight.detach().double()
    u_in = leading_subspace(unfold(w, 1), r3)  # (C, R3)
    u_out = leading_subspace(unfold(w, 0), r4)  # (O, R4)
    for _ in range(iters):
        u_out = leading_subspace(unfold(torch.einsum("ocij,cr->orij", w, u_in), 0), r4)
        u_in = leading_subspace(unfold(torch.einsum("ocij,os->scij", w, u_out), 1), r3)
    core = torch.einsum("ocij,os,cr->srij", w, u_out, u_in)  # (R4, R3, kh, kw)
    return core.to(weight.dtype), u_out.to(weight.dtype), u_in.to(weight.dtype)


def tucker2_reconstruct(core: torch.Tensor, u_out: torch.Tensor, u_in: torch.Tensor) -> torch.Tensor:
    """``core x_0 u_out x_1 u_in``: back to ``(O, C, kh, kw)``."""
    return torch.einsum("srij,os,cr->ocij", core, u_out, u_in)


def tucker2_ratio_ranks(geom: dict[str, Any], ratio: float, groups: int = 1) -> tuple[int, int]:
    """Per-block ``(R4, R3)`` with ``R3 = a C``, ``R4 = a O`` (summed over ``groups``
    blocks) and ``a`` solving ``C R3 + R3 R4 kh kw / groups + R4 O = ratio O C kh kw``.

    Example:
        >>> tucker2_ratio_ranks({"in": 20, "out": 50, "kernel": [5, 5]}, 0.25)
        (22, 9)
    """
    ratio = check_fraction(ratio, "ratio")
    c, o, k2 = geom["in"], geom["out"], math.prod(geom["kernel"])
    qa, qb, qc = c * o * k2 / groups, c * c + o * o, ratio * o * c * k2
    a = (-qb + math.sqrt(qb * qb + 4 * qa * qc)) / (2 * qa)
    r4 = max(1, min(o, round(a * o / groups)))
    r3 = max(1, min(c, round(a * c / groups)))
    return r4, r3


def tucker2_energy_ranks(weight: torch.Tensor, energy: float) -> tuple[int, int]:
    """``(R4, R3)``: per mode, the smallest rank keeping ``energy`` of the unfolding's
    squared singular values."""
    w = weight.detach().double()
    return (rank_for_energy(torch.linalg.svdvals(unfold(w, 0)), energy),
            rank_for_energy(torch.linalg.svdvals(unfold(w, 1)), energy))


def make_tucker2(geom: dict[str, Any], rank_out: int, rank_in: int, groups: int = 1) -> nn.Sequential:
    """``1x1 C -> G R3``, core ``G R3 -> G R4`` (``groups=G``), ``1x1 G R4 -> O``
    (placeholder weights; ``groups=1`` is plain Tucker-2)."""
    r3, r4 = rank_in * groups, rank_out * groups
    return nn.Sequential(
        nn.Conv2d(geom["in"], r3, 1, bias=False),
        nn.Conv2d(r3, r4, tuple(geom["kernel"]), stride=tuple(geom["stride"]),
                  padding=tuple(geom["padding"]), dilation=tuple(geom["dilation"]), groups=groups,
                  bias=False),
        nn.Conv2d(r4, geom["out"], 1, bias=geom["bias"]),
    )


@torch.no_grad()
def fill_tucker2(seq: nn.Sequential, layer: nn.Conv2d, cores: list[torch.Tensor],
                 u_outs: list[torch.Tensor], u_ins: list[torch.Tensor]) -> nn.Sequential:
    """Copy one Tucker block per group into ``seq`` (built by :func:`make_tucker2`)."""
    seq[0].weight.copy_(torch.cat([u.T for u in u_ins], 0)[:, :, None, None])  # (G R3, C, 1, 1)
    seq[1].weight.copy_(torch.cat(cores, 0))  # (G R4, R3, kh, kw)
    seq[2].weight.copy_(torch.cat(u_outs, 1)[:, :, None, None])  # (O, G R4, 1, 1)
    if layer.bias is not None:
        seq[2].bias.copy_(layer.bias)
    return seq


def tucker2_conv(layer: nn.Conv2d, rank_out: int, rank_in: int, geom: dict[str, Any]) -> nn.Sequential:
    """Replace ``layer`` by its Tucker-2 triple.

    Example:
        >>> from nncompress.decompose.common import layer_geometry
        >>> conv = nn.Conv2d(8, 6, 3)
        >>> [m.out_channels for m in tucker2_conv(conv, 3, 2, layer_geometry(conv))]
        [2, 3, 6]
    """
    core, u_out, u_in = tucker2_factors(layer.weight, rank_out, rank_in)
    seq = make_tucker2(geom, rank_out, rank_in).to(layer.weight.device, layer.weight.dtype)
    return fill_tucker2(seq, layer, [core], [u_out], [u_in])
