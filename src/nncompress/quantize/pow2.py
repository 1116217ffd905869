"""Power-of-two weights: INQ levels (Q8, Zhou et al. 2017) and ShiftCNN (Q9, Gudovskiy 2017).

* INQ: for bit width b and ``s = max|W|``, ``n1 = floor(log2(4 s / 3))`` and
  ``n2 = n1 + 1 - 2^(b-1) / 2``; levels ``P = {0} U {+-2^n : n2 <= n <= n1}``. A weight
  goes to ``beta sign(w)`` when ``(alpha + beta) / 2 <= |w| < 3 beta / 2`` for adjacent
  levels ``alpha < beta`` of P, else 0: i.e. ``n = floor(log2(4|w|/3))`` clamped to n1,
  and 0 below ``2^(n2-1)``. (b = 5: 1 bit for zero + 4 bits for 16 signed levels.)
* ShiftCNN: normalise by ``max|W|``; N codebooks ``C = {0, +-2^-m : m = 0..M-1}`` with
  ``M = 2^(B-1) - 1`` (2^B - 1 values in B bits); greedy residual quantisation: for
  i = 1..N pick the nearest codeword to the residual and subtract it. The weight is
  ``max|W| * sum_i c_i``: N shifts and N-1 adds per input.

``pow2_round`` is the shared rule: the nearest of ``{0, +-2^n : n_min <= n <= n_max}``
(linear distance; ties of the 3/4 threshold round up, as INQ's ``>=``).
"""

from __future__ import annotations

import math

import torch


def pow2_round(x: torch.Tensor, n_min: int, n_max: int) -> torch.Tensor:
    """Nearest value of ``{0} U {+-2^n : n_min <= n <= n_max}`` to each entry (float32).

    Example:
        >>> pow2_round(torch.tensor([0.74, 0.76, 3.0, 0.1, -0.3]), -2, 1).tolist()
        [0.5, 1.0, 2.0, 0.0, -0.25]
    """
    x = x.float()
    a = x.abs()
    n = torch.floor(torch.log2(a * (4.0 / 3.0))).clamp(n_min, n_max)  # log2(0) = -inf -> n_min
    mag = torch.ldexp(torch.ones_like(a), n.to(torch.int32))
    mag = torch.where(a >= math.ldexp(1.0, n_min - 1), mag, torch.zeros_like(a))
    return torch.where(mag > 0, torch.sign(x) * mag, torch.zeros_like(a))  # no -0.0


def inq_exponents(max_abs: float, bits: int) -> tuple[int, int]:
    """INQ's ``(n1, n2)`` for ``s = max|W|`` and bit width ``b``.

    Example:
        >>> inq_exponents(0.9, 5)   # 4*0.9/3 = 1.2 -> n1 = 0; n2 = 0 + 1 - 8
        (0, -7)
    """
    if max_abs <= 0:
        raise ValueError(f"max|W| must be > 0 for INQ levels, got {max_abs}")
    n1 = math.floor(math.log2(4.0 * max_abs / 3.0))
    n2 = n1 + 1 - 2 ** (bits - 1) // 2
    return n1, n2


def inq_levels(max_abs: float, bits: int) -> list[float]:
    """The sorted INQ level set ``P`` (``2^b/2 + 1`` values: 0 and the signed powers).

    Example:
        >>> inq_levels(0.9, 3)
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    n1, n2 = inq_exponents(max_abs, bits)
    pos = [math.ldexp(1.0, n) for n in range(n2, n1 + 1)]
    return sorted([-p for p in pos] + [0.0] + pos)


def inq_quantize(w: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """INQ quantization of ``w`` to ``{0, +-2^n : n2 <= n <= n1}``.

    Example:
        >>> inq_quantize(torch.tensor([0.9, 0.2, -0.004]), 0, -7).tolist()  # 0.004 >= 2^-8
        [1.0, 0.25, -0.0078125]
    """
    return pow2_round(w, n2, n1)


def shift_codebook(bits: int) -> list[float]:
    """ShiftCNN codebook ``{0, +-2^-m : m = 0..2^(B-1) - 2}`` (``2^B - 1`` values), sorted.

    Example:
        >>> shift_codebook(2)
        [-1.0, 0.0, 1.0]
        >>> shift_codebook(3)
        [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    """
    m = 2 ** (bits - 1) - 1
    pos = [math.ldexp(1.0, -k) for k in range(m)]
    return sorted([-p for p in pos] + [0.0] + pos)


def shift_scale(w: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """ShiftCNN's normaliser ``max|W|`` (per tensor or per output channel, keepdim).

    Example:
        >>> shift_scale(torch.tensor([[1.0, -4.0], [0.5, 0.0]]), True).flatten().tolist()
        [4.0, 0.5]
    """
    w = w.detach().float()
    if per_channel and w.dim() > 1:
        s = w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True)
    else:
        s = w.abs().max().reshape([1] * w.dim())
    return torch.where(s > 0, s, torch.ones_like(s))


def shift_codes(r: torch.Tensor, n: int, bits: int) -> torch.Tensor:
    """Greedy residual decomposition of normalised weights ``r`` (|r| <= 1) into ``n``
    codewords of the B-bit codebook; returns the codewords, shape ``(n, *r.shape)``.

    Example:
        >>> shift_codes(torch.tensor([0.75, -0.3]), 2, 3).tolist()
        [[1.0, -0.25], [-0.25, 0.0]]
    """
    m = 2 ** (bits - 1) - 1
    out = []
    res = r.float()
    for _ in range(n):  # n is 1..4: a loop over codebooks, not over weights
        c = pow2_round(res, -(m - 1), 0)
        out.append(c)
        res = res - c
    return torch.stack(out)  # (n, *shape)


def shift_quantize(w: torch.Tensor, n: int, bits: int, per_channel: bool = False) -> torch.Tensor:
    """ShiftCNN weights ``max|W| * sum_i c_i`` in float32 (the sum of dyadic codewords is
    exact; one rounding for the product, as in the decoder).

    Example:
        >>> shift_quantize(torch.tensor([4.0, 3.0, -1.2]), 2, 3).tolist()
        [4.0, 3.0, -1.0]
    """
    s = shift_scale(w, per_channel)
    codes = shift_codes(w.detach().float() / s, n, bits)
    return s * codes.sum(dim=0)
