"""Ternary matmul without multiplications (TWN / TTQ execution, E3).

For ``W = W_p [W > 0] - W_n [W < 0]``, output n is ``W_p,n * sum_{k in P_n} x_k -
W_n,n * sum_{k in N_n} x_k``: the weights are stored as the coordinates of their +1 and
-1 entries; inputs are gathered at those coordinates and summed per output with
``index_add_`` over the rows of the transposed input (additions only), then each output gets two scale multiplications (one per
output unit, not per weight).
"""

from __future__ import annotations

import torch
from torch import nn


def ternary_matmul(
    x: torch.Tensor,
    pos: tuple[torch.Tensor, torch.Tensor],
    neg: tuple[torch.Tensor, torch.Tensor],
    n_out: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output sums of ``x (B, K)`` over the +1 and the -1 coordinates
    (``(rows, cols)`` index pairs); returns ``(sum_pos, sum_neg)``, each ``(B, n_out)``.

    Example:
        >>> p = (torch.tensor([0, 1]), torch.tensor([0, 2])); n = (torch.tensor([0]), torch.tensor([1]))
        >>> [t.tolist() for t in ternary_matmul(torch.tensor([[1.0, 2.0, 4.0]]), p, n, 2)]
        [[[1.0, 4.0]], [[2.0, 0.0]]]
    """
    xt = x.T.contiguous()  # (K, B): gathering whole rows is contiguous
    sp = torch.zeros(n_out, x.shape[0], dtype=x.dtype).index_add_(0, pos[0], xt[pos[1]])  # (N, B)
    sn = torch.zeros(n_out, x.shape[0], dtype=x.dtype).index_add_(0, neg[0], xt[neg[1]])  # (N, B)
    sp, sn = sp.T, sn.T  # (B, N)
    return sp, sn


class TernaryLinear(nn.Module):
    """Linear layer with weights in ``{-W_n, 0, +W_p}`` per output row, run by gathers and
    additions (``y = W_p * sum_pos - W_n * sum_neg + bias``).

    Example:
        >>> lin = nn.Linear(3, 1, bias=False); _ = lin.weight.data.copy_(torch.tensor([[0.5, 0.0, -0.5]]))
        >>> t = TernaryLinear.from_linear(lin)
        >>> t(torch.tensor([[2.0, 7.0, 1.0]])).tolist()
        [[0.5]]
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        w = weight.detach().float()  # (N, K)
        self.out_features, self.in_features = w.shape
        pr, pc = torch.nonzero(w > 0, as_tuple=True)
        nr, nc = torch.nonzero(w < 0, as_tuple=True)
        for name, t in (("pos_rows", pr), ("pos_cols", pc), ("neg_rows", nr), ("neg_cols", nc)):
            self.register_buffer(name, t)
        self.register_buffer("wp", w.clamp_min(0).amax(dim=1))  # (N,)
        self.register_buffer("wn", (-w).clamp_min(0).amax(dim=1))  # (N,)
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        )

    @classmethod
    def from_linear(cls, lin: nn.Linear) -> TernaryLinear:
        """From a Linear whose rows hold at most one positive and one negative value."""
        return cls(lin.weight, lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        sp, sn = ternary_matmul(
            x, (self.pos_rows, self.pos_cols), (self.neg_rows, self.neg_cols), self.out_features
        )
        out = sp * self.wp - sn * self.wn
        return out + self.bias if self.bias is not None else out
