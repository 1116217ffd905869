"""L5 block term decomposition: a sum of ``G`` Tucker-2 blocks,
``W ~ sum_g G_g x_0 U_out,g x_1 U_in,g``, which as layers is Tucker-2 with a grouped core
conv (``groups=G``): block g reads its own slice of the reduced input channels and
writes its own slice of the core's outputs.

Fitting: greedy (each block is the Tucker-2 HOOI fit of the residual left by the previous
ones), then ``sweeps`` rounds of block coordinate descent (refit each block to ``W``
minus the others). Parameters ``C G R3 + G R3 R4 kh kw + G R4 O``.
"""

from __future__ import annotations

import torch
from torch import nn

from nncompress.decompose.common import check_rank
from nncompress.decompose.tucker import (
    fill_tucker2,
    make_tucker2,
    tucker2_factors,
    tucker2_reconstruct,
)
from nncompress.errors import ConfigError


def btd_factors(weight: torch.Tensor, rank_out: int, rank_in: int, groups: int, sweeps: int = 3
                ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``groups`` Tucker-2 blocks ``(core, u_out, u_in)``, each of ranks (``rank_out``,
    ``rank_in``), whose sum approximates ``weight``.

    Example:
        >>> blocks = btd_factors(torch.randn(6, 4, 3, 3), 2, 2, groups=2)
        >>> [b[0].shape for b in blocks]
        [torch.Size([2, 2, 3, 3]), torch.Size([2, 2, 3, 3])]
    """
    check_rank(groups, max(weight.shape[0], weight.shape[1]), "groups")
    w = weight.detach().double()
    blocks: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
    recon = torch.zeros_like(w)
    for _ in range(groups):
        block = tucker2_factors(w - recon, rank_out, rank_in, iters=5)
        blocks.append(block)
        recon = recon + tucker2_reconstruct(*block)
    for _ in range(sweeps):
        for g in range(groups):
            rest = recon - tucker2_reconstruct(*blocks[g])
            blocks[g] = tucker2_factors(w - rest, rank_out, rank_in, iters=5)
            recon = rest + tucker2_reconstruct(*blocks[g])
    return [tuple(t.to(weight.dtype) for t in b) for b in blocks]


@torch.no_grad()
def btd_conv(layer: nn.Conv2d, rank_out: int, rank_in: int, groups: int, geom: dict) -> nn.Sequential:
    """Replace ``layer`` by ``1x1 -> grouped core -> 1x1`` holding ``groups`` blocks.

    Example:
        >>> from nncompress.decompose.common import layer_geometry
        >>> conv = nn.Conv2d(8, 6, 3)
        >>> btd_conv(conv, 2, 2, 3, layer_geometry(conv))[1].groups
        3
    """
    if groups < 1:
        raise ConfigError(f"groups must be >= 1, got {groups}")
    blocks = btd_factors(layer.weight, rank_out, rank_in, groups)
    seq = make_tucker2(geom, rank_out, rank_in, groups).to(layer.weight.device, layer.weight.dtype)
    return fill_tucker2(seq, layer, [b[0] for b in blocks], [b[1] for b in blocks], [b[2] for b in blocks])
