"""Shared-exponent (block floating point) tensors, the Flexpoint idea (Q15).

A tensor is cut into blocks of ``block`` consecutive values along its last dimension (the
last block of a row may be shorter; ``block=None`` = the whole tensor is one block). Each
block stores one shared exponent ``e`` (int8) and one signed ``b``-bit mantissa per value:

    value = m * 2^(e - (b-1)),   |m| <= qmax = 2^(b-1) - 1   (symmetric, no -2^(b-1))

``e`` is the smallest integer with ``max|x| / 2^(e-(b-1)) <= qmax``, i.e. the step is
``s = 2^ceil(log2(max|x| / qmax))``, so no mantissa overflows, and mantissas are rounded to
nearest. Hence, per block:

* ``|x - q| <= s / 2 = 2^(e-(b-1)) / 2`` for every value, and
* relative to the block's max, ``|x - q| / max|x| < 1 / (2^(b-1) - 1)`` (as ``s < 2 max|x| / qmax``).

Storage: ``b`` bits per value plus 8 bits per block, i.e. ``b + 8/block`` bits per value
(:func:`bfp_storage_bits` counts a short last block exactly). An all-zero block gets the
smallest exponent (-128) and zero mantissas. Exponents below -128 are raised to -128
(tiny values then lose precision, never overflow); a block max of about 2^126 or more,
which needs ``e > 127``, raises ``ConfigError``. Rounding is idempotent: a block that is already
BFP keeps its exponent and mantissas, so ``bfp_round(bfp_round(x)) == bfp_round(x)``.
"""

from __future__ import annotations

import math

import torch

from nncompress.errors import ConfigError

MIN_BITS, MAX_BITS = 2, 24
EXP_MIN, EXP_MAX = -128, 127


def check_bfp_args(mantissa_bits: int, block: int | None) -> None:
    """Raise ``ConfigError`` unless ``2 <= mantissa_bits <= 24`` and ``block`` is None or >= 1."""
    if isinstance(mantissa_bits, bool) or not isinstance(mantissa_bits, int) or not (
            MIN_BITS <= mantissa_bits <= MAX_BITS):
        raise ConfigError(f"mantissa_bits={mantissa_bits!r} is not allowed; use an int in "
                          f"[{MIN_BITS}, {MAX_BITS}]")
    if block is not None and (isinstance(block, bool) or not isinstance(block, int) or block < 1):
        raise ConfigError(f"block={block!r} is not allowed; use an int >= 1 or None (whole tensor)")


def _mantissa_dtype(bits: int) -> torch.dtype:
    return torch.int8 if bits <= 8 else torch.int16 if bits <= 16 else torch.int32


def _blocks(x: torch.Tensor, block: int | None) -> tuple[torch.Tensor, int]:
    """``x`` as ``(rows, nblocks, block)`` float64, zero-padded; returns it and the pad."""
    x = x.detach().to(torch.float64)
    if block is None:
        flat = x.reshape(1, 1, -1)  # (1, 1, N)
        return flat, 0
    last = x.shape[-1] if x.dim() else 1
    rows = x.reshape(-1, last)  # (R, L)
    pad = (-last) % block
    if pad:
        rows = torch.nn.functional.pad(rows, (0, pad))
    return rows.reshape(rows.shape[0], -1, block), pad  # (R, B, block)


def _exponents(peak: torch.Tensor, bits: int) -> torch.Tensor:
    """Smallest ``e`` with ``peak / 2^(e-(b-1)) <= qmax`` (float64 peak -> int64 e)."""
    qmax = 2 ** (bits - 1) - 1
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    e = torch.ceil(torch.log2(safe / qmax)).to(torch.int64) + (bits - 1)
    # log2 may be off by one ulp at exact powers: fix so that the definition holds exactly
    e = torch.where(safe / torch.ldexp(torch.ones_like(safe), e - (bits - 1)) > qmax, e + 1, e)
    e = torch.where(safe / torch.ldexp(torch.ones_like(safe), e - bits) <= qmax, e - 1, e)
    e = torch.where(peak > 0, e, torch.full_like(e, EXP_MIN))
    if bool((e > EXP_MAX).any()):
        raise ConfigError(f"values up to {float(peak.max()):.3g} need a shared exponent above "
                          f"{EXP_MAX}; int8 exponents cannot store them")
    return e.clamp_min(EXP_MIN)


def bfp_quantize(x: torch.Tensor, mantissa_bits: int = 8,
                 block: int | None = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``x`` into BFP mantissas (shape of ``x``, int8/16/32) and int8 exponents.

    Exponents have shape ``(*x.shape[:-1], ceil(x.shape[-1] / block))`` (``()`` when
    ``block`` is None).

    Example:
        >>> m, e = bfp_quantize(torch.tensor([1.0, -0.5, 0.26, 0.0]), mantissa_bits=4, block=4)
        >>> m.tolist(), e.tolist()   # step 2^(1-3) = 0.25; qmax = 7
        ([4, -2, 1, 0], [1])
    """
    check_bfp_args(mantissa_bits, block)
    if not torch.isfinite(x).all():
        raise ConfigError("bfp_quantize cannot store NaN/inf values")
    blocks, pad = _blocks(x, block)  # (R, B, block)
    e = _exponents(blocks.abs().amax(dim=-1), mantissa_bits)  # (R, B)
    step = torch.ldexp(torch.ones_like(blocks[..., 0]), e - (mantissa_bits - 1))  # (R, B)
    qmax = 2 ** (mantissa_bits - 1) - 1
    m = torch.round(blocks / step.unsqueeze(-1)).clamp(-qmax, qmax)  # (R, B, block)
    m = m.reshape(m.shape[0], -1)
    if pad:
        m = m[:, :-pad]
    m = m.reshape(x.shape).to(_mantissa_dtype(mantissa_bits))
    e_shape = () if block is None else (*x.shape[:-1], e.shape[-1]) if x.dim() else (e.shape[-1],)
    return m, e.reshape(e_shape).to(torch.int8)


def bfp_dequantize(mantissas: torch.Tensor, exponents: torch.Tensor, mantissa_bits: int = 8,
                   block: int | None = 32, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``m * 2^(e - (b-1))`` with each block's exponent broadcast over its values.

    Example:
        >>> bfp_dequantize(torch.tensor([4, -2, 1, 0]), torch.tensor([1]), 4, 4).tolist()
        [1.0, -0.5, 0.25, 0.0]
    """
    check_bfp_args(mantissa_bits, block)
    m = mantissas.to(torch.float64)
    e = exponents.to(torch.int64)
    if block is None:
        e_full = e.reshape(()).expand(m.shape)
    else:
        last = m.shape[-1] if m.dim() else 1
        e_full = e.repeat_interleave(block, dim=-1)[..., :last].reshape(m.shape)
    return torch.ldexp(m, e_full - (mantissa_bits - 1)).to(dtype)


def bfp_round(x: torch.Tensor, mantissa_bits: int = 8, block: int | None = 32) -> torch.Tensor:
    """Fake-quant: ``x`` rounded to its BFP representation, same dtype and shape.

    Example:
        >>> bfp_round(torch.tensor([1.0, 0.3]), mantissa_bits=4, block=2).tolist()
        [1.0, 0.25]
    """
    m, e = bfp_quantize(x, mantissa_bits, block)
    return bfp_dequantize(m, e, mantissa_bits, block, dtype=x.dtype)


def bfp_storage_bits(shape: tuple[int, ...] | torch.Size, mantissa_bits: int,
                     block: int | None) -> int:
    """Exact bits of a BFP tensor: ``b`` per value + 8 per block (short last blocks count).

    Example:
        >>> bfp_storage_bits((10, 40), 8, 32)   # 400*8 + 10 rows * 2 blocks * 8
        3360
    """
    check_bfp_args(mantissa_bits, block)
    n = math.prod(shape)
    if block is None:
        nblocks = 1
    else:
        last = shape[-1] if len(shape) else 1
        nblocks = (n // last if last else 0) * math.ceil(last / block)
    return mantissa_bits * n + 8 * nblocks


def bfp_bits_per_value(mantissa_bits: int, block: int) -> float:
    """The nominal ``b + 8 / block`` bits per value (full blocks).

    Example:
        >>> bfp_bits_per_value(8, 32)
        8.25
    """
    check_bfp_args(mantissa_bits, block)
    return mantissa_bits + 8.0 / block


def bfp_max_relative_error(mantissa_bits: int) -> float:
    """Bound on ``|x - q| / max|x|`` within a block: ``1 / (2^(b-1) - 1)`` (strict).

    Example:
        >>> bfp_max_relative_error(8)   # 1/127
        0.007874015748031496
    """
    check_bfp_args(mantissa_bits, None)
    return 1.0 / (2 ** (mantissa_bits - 1) - 1)
