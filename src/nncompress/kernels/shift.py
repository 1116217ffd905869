"""Shift-and-add for power-of-two weights (INQ / ShiftCNN execution, E3).

Inputs are integer-quantized, ``x ~ s_x * q`` with q int64. A weight ``+-2^n`` (n >= n_min)
multiplies q by a left shift of ``n - n_min``; grouping the weights by exponent,
``sum_k w_k q_k = 2^n_min * sum_n ((sum_{k: +2^n} q_k - sum_{k: -2^n} q_k) << (n - n_min))``:
per exponent a ternary gather-and-add, then one shift per output, all in integers. The
float result is ``s_x * 2^n_min * acc`` (one multiply per output). A ShiftCNN weight is a
sum of N such terms (N codebooks): their accumulators add up.
"""

from __future__ import annotations

import torch
from torch import nn

from nncompress.kernels.ternary import ternary_matmul


def quantize_input(x: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, float]:
    """Symmetric per-tensor integer quantization: ``(q int64, s)`` with ``x ~ s * q``.

    Example:
        >>> quantize_input(torch.tensor([1.0, -0.5]), 8)[0].tolist()
        [127, -64]
    """
    s = float(x.abs().max()) / (2 ** (bits - 1) - 1) or 1.0
    return torch.round(x / s).clamp(-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1).to(torch.int64), s


def _exponent_groups(w: torch.Tensor) -> tuple[int, list[tuple[int, tuple, tuple]]]:
    """(n_min, [(shift, pos (rows, cols), neg (rows, cols)) per exponent])."""
    nz = w != 0
    if not nz.any():
        return 0, []
    mant, e = torch.frexp(w)
    if not bool((mant[nz].abs() == 0.5).all()):
        raise ValueError("shift-and-add needs weights in {0, +-2^n}")
    n = e - 1
    n_min = int(n[nz].min())
    groups = []
    for ex in torch.unique(n[nz]).tolist():  # at most 2^(b-1) exponents, not a loop per weight
        at = nz & (n == ex)
        groups.append(
            (
                ex - n_min,
                torch.nonzero(at & (w > 0), as_tuple=True),
                torch.nonzero(at & (w < 0), as_tuple=True),
            )
        )
    return n_min, groups


def shift_add_matmul(q: torch.Tensor, n_out: int, groups: list) -> torch.Tensor:
    """Integer accumulators ``(B, N)``: per exponent group, ternary sums of ``q`` shifted
    left by the group's shift and added.

    Example:
        >>> w = torch.tensor([[0.5, -0.25]]); n_min, g = _exponent_groups(w)
        >>> shift_add_matmul(torch.tensor([[4, 8]]), 1, g).tolist(), n_min   # (4*2 - 8) * 2^-2
        ([[0]], -2)
    """
    acc = torch.zeros(q.shape[0], n_out, dtype=torch.int64)
    for shift, pos, neg in groups:
        sp, sn = ternary_matmul(q, pos, neg, n_out)
        acc += (sp - sn) << shift
    return acc


class ShiftLinear(nn.Module):
    """Linear layer with weights ``scale_n * sum_t W_t`` where every ``W_t`` is in
    ``{0, +-2^n}`` (INQ: one term, scale 1; ShiftCNN: N terms, scale max|W|), run on
    integer-quantized inputs by shifts and additions.

    Example:
        >>> lin = nn.Linear(2, 1, bias=False); _ = lin.weight.data.copy_(torch.tensor([[0.5, -0.25]]))
        >>> ShiftLinear([lin.weight], None)(torch.tensor([[1.0, 1.0]])).tolist()
        [[0.25]]
    """

    def __init__(
        self,
        terms: list[torch.Tensor],
        bias: torch.Tensor | None,
        scale: torch.Tensor | float = 1.0,
        input_bits: int = 8,
    ):
        super().__init__()
        self.out_features, self.in_features = terms[0].shape
        self.input_bits = input_bits
        self.terms = [_exponent_groups(t.detach().float()) for t in terms]
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).reshape(-1))
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        )

    def integer_forward(self, q: torch.Tensor) -> list[tuple[torch.Tensor, int]]:
        """Per term: (integer accumulator (B, N), n_min)."""
        return [
            (shift_add_matmul(q, self.out_features, groups), n_min) for n_min, groups in self.terms
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, s = quantize_input(x.flatten(1), self.input_bits)
        out = torch.zeros(q.shape[0], self.out_features)
        for acc, n_min in self.integer_forward(q):
            out += torch.ldexp(acc.to(torch.float64), torch.tensor(n_min)).float()
        out = out * (s * self.scale)
        return out + self.bias if self.bias is not None else out
