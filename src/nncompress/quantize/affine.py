"""Uniform (affine) integer quantization, Q3: ``w ~ (q - z) * s`` with q in ``0..2^b-1``.

Symmetric: ``s = max|w| / (2^(b-1) - 1)``, ``z = 2^(b-1)`` (codes stay in the symmetric
range ``z +- (2^(b-1) - 1)``), so 0 maps to exactly 0. Asymmetric: the range is widened to
include 0, ``s = (max - min) / (2^b - 1)``, ``z = round(-min / s)``, so 0 is exact too.
Per-channel statistics reduce over every dimension but ``axis`` (0 = output channel).

The dequantized value is always computed as ``(q - z) * s`` in float32 with q, z held as
float32 integers: the packed decoder computes the same expression, so a finalized weight
and the loaded one are bit-identical.
"""

from __future__ import annotations

import torch

from nncompress.quantize.ste import ste


def _reduce_dims(x: torch.Tensor, axis: int | None) -> tuple[int, ...]:
    return (
        tuple(d for d in range(x.dim()) if d != axis) if axis is not None else tuple(range(x.dim()))
    )


def _keep_shape(x: torch.Tensor, axis: int | None) -> list[int]:
    shape = [1] * x.dim()
    if axis is not None:
        shape[axis] = x.shape[axis]
    return shape


def qparams_from_range(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (float32 tensors) for observed ``[lo, hi]`` ranges.

    Example:
        >>> s, z = qparams_from_range(torch.tensor(-1.0), torch.tensor(1.0), 8, True)
        >>> round(s.item() * 127, 6), z.item()
        (1.0, 128.0)
    """
    lo = torch.minimum(lo.float(), torch.zeros_like(lo, dtype=torch.float32))
    hi = torch.maximum(hi.float(), torch.zeros_like(hi, dtype=torch.float32))
    if symmetric:
        half = 2 ** (bits - 1) - 1
        scale = torch.maximum(hi, -lo) / half
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        scale = (hi - lo) / (2**bits - 1)
        zero = torch.zeros_like(scale)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero channel
    if not symmetric:
        zero = torch.round(-lo / scale).clamp(0, 2**bits - 1)
    return scale, zero


def choose_qparams(
    w: torch.Tensor, bits: int, symmetric: bool = True, axis: int | None = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max scale and zero point of ``w``, per channel along ``axis`` (None: per tensor).

    Returned shapes broadcast against ``w`` (``(C, 1, 1, 1)`` for a conv weight).

    Example:
        >>> s, z = choose_qparams(torch.tensor([[-2.0, 1.0], [0.5, 0.25]]), 8)
        >>> [round(v * 127, 5) for v in s.flatten().tolist()], z.flatten().tolist()
        ([2.0, 0.5], [128.0, 128.0])
    """
    dims = _reduce_dims(w, axis)
    lo = w.detach().float().amin(dim=dims, keepdim=True) if dims else w.detach().float()
    hi = w.detach().float().amax(dim=dims, keepdim=True) if dims else w.detach().float()
    if axis is None:
        lo, hi = lo.reshape(_keep_shape(w, None)), hi.reshape(_keep_shape(w, None))
    return qparams_from_range(lo, hi, bits, symmetric)


def code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Smallest and largest code: ``(1, 2^b - 1)`` symmetric, ``(0, 2^b - 1)`` otherwise.

    Example:
        >>> code_range(8, True)
        (1, 255)
    """
    return (1 if symmetric else 0), 2**bits - 1


def quantize_affine(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    """Integer codes ``clamp(round(w / s) + z)`` as float32 (exact small integers).

    Example:
        >>> quantize_affine(torch.tensor([0.5, -1.0]), torch.tensor(0.5), torch.tensor(128.), 8, True).tolist()
        [129.0, 126.0]
    """
    lo, hi = code_range(bits, symmetric)
    return (torch.round(w.float() / scale) + zero).clamp(lo, hi)


def dequantize_affine(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``(q - z) * s`` in float32: the decoder's exact expression.

    Example:
        >>> dequantize_affine(torch.tensor([129.0]), torch.tensor(0.5), torch.tensor(128.0)).item()
        0.5
    """
    return (q.float() - zero.float()) * scale.float()


def fake_quant_affine(
    w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool
) -> torch.Tensor:
    """Quantize-dequantize with the straight-through estimator (QAT forward).

    Example:
        >>> fake_quant_affine(torch.tensor([0.3]), torch.tensor(0.25), torch.tensor(0.), 8, False).item()
        0.25
    """
    return ste(w, dequantize_affine(quantize_affine(w, scale, zero, bits, symmetric), scale, zero))
