"""DoReFa-Net (Q11, Zhou et al. 2016) and QNN-style activation quantizers (Q12).

* ``quantize_k(r) = round((2^k - 1) r) / (2^k - 1)`` for r in [0, 1] (STE backward).
* Weights, k = 1: ``E(|w|) * sign(w)``; k > 1: ``2 quantize_k(tanh(w) / (2 max|tanh(w)|)
  + 1/2) - 1``, levels ``2i / (2^k - 1) - 1``. This module multiplies the result by an
  optional fixed per-layer ``scale`` (``max|W|`` of the float weights at wrap time, so a
  BatchNorm-free net such as LeNet-5 keeps its activation magnitudes; the paper relies on
  BatchNorm instead and uses scale 1).
* Activations: ``quantize_k(clip(x, 0, 1))``.
* Gradients: see ``ste.dorefa_grad_quantize``.
* Q12 linear: ``clip(round(x / s) * s, lo, hi)``; log: ``sign(x) 2^round(log2|x|)`` with
  the exponent clipped to ``[e_max - n + 1, e_max]`` (n = 2^(b-1) - 1 exponents; a 0 code)
  and values below ``2^(e_min - 1)`` set to 0 (Miyashita et al. 2016, with a zero code).
"""

from __future__ import annotations

import torch

from nncompress.quantize.ste import ste


def quantize_k(r: torch.Tensor, bits: int) -> torch.Tensor:
    """DoReFa's ``round((2^k - 1) r) / (2^k - 1)`` with an identity gradient.

    Example:
        >>> quantize_k(torch.tensor([0.2, 0.9]), 2).tolist()
        [0.3333333432674408, 1.0]
    """
    n = float(2**bits - 1)
    return ste(r, torch.round(r * n) / n)


def dorefa_weight(w: torch.Tensor, bits: int, scale: float = 1.0) -> torch.Tensor:
    """DoReFa k-bit weights (differentiable through tanh and the STE), times ``scale``.

    Example:
        >>> dorefa_weight(torch.tensor([1.0, -1.0, 0.1]), 2).tolist()
        [1.0, -1.0, 0.3333333730697632]
    """
    if bits == 1:
        from nncompress.quantize.ste import sign_ste

        return w.abs().mean().detach() * sign_ste(w, clip=False) * scale
    t = torch.tanh(w)
    r = t / (2 * t.abs().max().detach().clamp_min(1e-12)) + 0.5
    return (2 * quantize_k(r, bits) - 1) * scale


def dorefa_weight_levels(bits: int) -> torch.Tensor:
    """The 2^k DoReFa weight levels ``2i / (2^k - 1) - 1`` as float32 (k > 1).

    Example:
        >>> dorefa_weight_levels(2).tolist()
        [-1.0, -0.3333333134651184, 0.3333333730697632, 1.0]
    """
    n = 2**bits - 1
    return 2 * (torch.arange(n + 1, dtype=torch.float32) / n) - 1


def dorefa_activation(x: torch.Tensor, bits: int) -> torch.Tensor:
    """``quantize_k(clip(x, 0, 1))``; gradient passes inside [0, 1].

    Example:
        >>> dorefa_activation(torch.tensor([-1.0, 0.4, 2.0]), 2).tolist()
        [0.0, 0.3333333432674408, 1.0]
    """
    return quantize_k(x.clamp(0, 1), bits)


def linear_activation(x: torch.Tensor, step: float, lo: float, hi: float) -> torch.Tensor:
    """QNN linear quantization ``clip(round(x / s) * s, lo, hi)`` with an STE.

    Example:
        >>> linear_activation(torch.tensor([0.26, 5.0, -1.0]), 0.25, 0.0, 1.0).tolist()
        [0.25, 1.0, 0.0]
    """
    return ste(x, (torch.round(x / step) * step).clamp(lo, hi))


def log_activation(x: torch.Tensor, e_min: int, e_max: int) -> torch.Tensor:
    """Log quantization ``sign(x) 2^clip(round(log2|x|), e_min, e_max)``, 0 below
    ``2^(e_min - 1)``, with an STE.

    Example:
        >>> log_activation(torch.tensor([0.3, -5.0, 0.01, 0.0]), -3, 2).tolist()
        [0.25, -4.0, 0.0, 0.0]
    """
    a = x.detach().abs()
    e = torch.round(torch.log2(a)).clamp(e_min, e_max)
    mag = torch.where(a >= 2.0 ** (e_min - 1), torch.exp2(e), torch.zeros_like(a))
    return ste(x, torch.where(mag > 0, torch.sign(x) * mag, torch.zeros_like(x)))
