"""Bit-packed binary matmul by XNOR + popcount (XNOR-Net / BNN execution, E3).

For +-1 vectors a, b of length K packed as bits (1 = +1), ``a . b = K - 2 popcount(a XOR
b)`` (matches minus mismatches). Signs are packed 64 per int64 word; the tail of the last
word is padded with 0 bits on both sides, which XOR to 0 and so do not count.
Popcount: SWAR bit tricks on int64 (``popcount64``) or a 256-entry byte table
(``popcount_lut``). Everything is vectorised torch; chunks over the output dimension bound
the ``(M, N_chunk, W)`` XOR temporary.
"""

from __future__ import annotations

import torch
from torch import nn

_M1, _M2, _M4, _H01 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F, 0x0101010101010101
_SHIFTS = torch.arange(64, dtype=torch.int64)  # (64,) bit j of a word = element 64 w + j
_LUT = torch.tensor([i.bit_count() for i in range(256)], dtype=torch.int64)


def pack_signs(x: torch.Tensor) -> torch.Tensor:
    """Pack ``x > 0`` of a ``(M, K)`` tensor into ``(M, ceil(K / 64))`` int64 words.

    Example:
        >>> pack_signs(torch.tensor([[1.0, -1.0, 1.0]])).tolist()
        [[5]]
    """
    m, k = x.shape
    w = (k + 63) // 64
    bits = torch.zeros(m, w * 64, dtype=torch.int64)
    bits[:, :k] = (x > 0).to(torch.int64)
    return (bits.reshape(m, w, 64) << _SHIFTS).sum(
        dim=2
    )  # disjoint bits: sum == OR (wraps at bit 63)


def popcount64(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 (SWAR: 2-, 4-, 8-bit partial sums, then a multiply).

    Example:
        >>> popcount64(torch.tensor([0, 7, -1])).tolist()
        [0, 3, 64]
    """
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    return ((x * _H01) >> 56) & 0xFF


def popcount_lut(x: torch.Tensor) -> torch.Tensor:
    """Set bits of each int64 by a byte lookup table (8 lookups per word).

    Example:
        >>> popcount_lut(torch.tensor([0, 7, -1])).tolist()
        [0, 3, 64]
    """
    b = x.contiguous().view(torch.uint8).reshape(*x.shape, 8).to(torch.int64)
    return _LUT[b].sum(dim=-1)


def xnor_dot(
    a: torch.Tensor, b: torch.Tensor, k: int, popcount=popcount64, chunk: int = 64
) -> torch.Tensor:
    """``(M, N)`` integer dot products of the +-1 rows packed in ``a (M, W)`` and
    ``b (N, W)``: ``K - 2 popcount(a XOR b)``.

    Example:
        >>> a, b = pack_signs(torch.tensor([[1.0, -1.0, 1.0]])), pack_signs(torch.tensor([[1.0, 1.0, 1.0]]))
        >>> xnor_dot(a, b, 3).tolist()
        [[1]]
    """
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.int64)
    for j in range(0, b.shape[0], chunk):  # chunks of output units, not a loop per weight
        x = a[:, None, :] ^ b[None, j : j + chunk, :]  # (M, n, W)
        out[:, j : j + chunk] = k - 2 * popcount(x).sum(dim=2)
    return out


class BinaryLinear(nn.Module):
    """Linear layer with weights ``alpha_n * sign(W)`` executed by XNOR + popcount.

    ``input_mode``: ``"sign"`` (BNN: the input is binarised to +-1), or ``"xnor"``
    (XNOR-Net: ``beta * sign(x)``, ``beta = mean|x|`` per sample).
    ``y = alpha * beta * (K - 2 popcount(x_bits XOR w_bits)) + bias``.

    Example:
        >>> lin = nn.Linear(3, 2); _ = lin.weight.data.copy_(torch.tensor([[1., -1, 1], [-2, -2, 2]]))
        >>> BinaryLinear.from_linear(lin, "sign")(torch.tensor([[1.0, -1.0, 1.0]])).shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        packed: torch.Tensor,
        alpha: torch.Tensor,
        bias: torch.Tensor | None,
        in_features: int,
        input_mode: str = "sign",
        popcount=popcount64,
    ):
        super().__init__()
        self.register_buffer("packed", packed)  # (N, W) int64
        self.register_buffer("alpha", alpha)  # (N,)
        self.bias = (
            None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        )
        self.in_features, self.input_mode, self.popcount = in_features, input_mode, popcount

    @classmethod
    def from_linear(
        cls, lin: nn.Linear, input_mode: str = "sign", popcount=popcount64
    ) -> BinaryLinear:
        """Pack a Linear whose rows are ``+-alpha_n`` (a BWN/BNN-finalized layer);
        ``popcount`` is ``popcount64`` (SWAR) or ``popcount_lut``."""
        w = lin.weight.detach().float()
        return cls(
            pack_signs(w), w.abs().amax(dim=1), lin.bias, lin.in_features, input_mode, popcount
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # (B, K)
        dot = xnor_dot(pack_signs(x), self.packed, self.in_features, self.popcount).to(
            x.dtype
        )  # (B, N)
        out = dot * self.alpha
        if self.input_mode == "xnor":
            out = out * x.abs().mean(dim=1, keepdim=True)
        return out + self.bias if self.bias is not None else out
