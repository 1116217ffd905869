"""Weight quantizers: one small module per method, sharing one interface.

``forward(w)`` is the fake-quantized weight used during training, with the method's own
gradient; ``quantize(w)`` returns the final float32 values and the packing (format name
and parameters, see ``packing.py``) that stores them exactly. Quantizers that learn
something (TTQ's W_p, W_n) hold it as parameters, so ``fit`` trains them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from nncompress.quantize.admm import admm_project, level_set
from nncompress.quantize.affine import (
    choose_qparams,
    dequantize_affine,
    fake_quant_affine,
    quantize_affine,
)
from nncompress.quantize.binary import binarize_weight, bwn_quantize, bwn_weight
from nncompress.quantize.dorefa import dorefa_weight
from nncompress.quantize.pow2 import inq_exponents, inq_quantize, shift_quantize
from nncompress.quantize.ste import binary_sign, ste
from nncompress.quantize.ternary import (
    ttq_init_scales,
    ttq_threshold,
    ttq_weight,
    twn_quantize,
    twn_weight,
)

Packing = tuple[str, dict[str, Any]]


class WeightQuantizer(nn.Module):
    """Base class: ``forward`` = fake-quant (training), ``quantize`` = final values.

    ``bits`` is the nominal code width per weight (scales and codebooks come on top).
    """

    bits: float = 32.0

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w

    @torch.no_grad()
    def quantize(self, w: torch.Tensor) -> tuple[torch.Tensor, Packing]:
        """Final float32 values and the packing that stores them exactly."""
        raise NotImplementedError


class CastQuantizer(WeightQuantizer):
    """fp16 / bf16 weights (Q3): a round trip through the narrow dtype."""

    def __init__(self, dtype: str = "fp16"):
        super().__init__()
        self.dtype_name = dtype
        self.dtype = torch.float16 if dtype == "fp16" else torch.bfloat16
        self.bits = 16.0

    def forward(self, w):
        return ste(w, w.to(self.dtype).to(w.dtype))

    @torch.no_grad()
    def quantize(self, w):
        return w.detach().to(self.dtype).float(), (self.dtype_name, {})


class IntQuantizer(WeightQuantizer):
    """Uniform b-bit weights (Q3), per channel or per tensor, symmetric or asymmetric;
    scale and zero point from the current min/max (PTQ) and recomputed each step (QAT)."""

    def __init__(self, bits: int = 8, symmetric: bool = True, per_channel: bool = True):
        super().__init__()
        self.bits, self.symmetric, self.per_channel = bits, symmetric, per_channel

    def _qparams(self, w):
        return choose_qparams(
            w, self.bits, self.symmetric, 0 if self.per_channel and w.dim() > 1 else None
        )

    def forward(self, w):
        s, z = self._qparams(w)
        return fake_quant_affine(w, s, z, self.bits, self.symmetric).to(w.dtype)

    @torch.no_grad()
    def quantize(self, w):
        w = w.detach().float()
        s, z = self._qparams(w)
        q = dequantize_affine(quantize_affine(w, s, z, self.bits, self.symmetric), s, z)
        params = {
            "bits": self.bits,
            "symmetric": self.symmetric,
            "per_channel": self.per_channel and w.dim() > 1,
            "scale": s.flatten().tolist(),
            "zero_point": z.flatten().tolist(),
        }
        return q, ("int", params)


class SignQuantizer(WeightQuantizer):
    """BinaryConnect / BNN weights: +-1 (deterministic or stochastic), clipped STE, times
    a fixed ``scale`` (1 in the papers, whose nets normalise with BatchNorm)."""

    def __init__(self, stochastic: bool = False, scale: float = 1.0):
        super().__init__()
        self.stochastic, self.scale = stochastic, float(scale)
        self.bits = 1.0

    def forward(self, w):
        return binarize_weight(w, self.stochastic and self.training) * self.scale

    @torch.no_grad()
    def quantize(self, w):
        q = binary_sign(w.detach().float()) * torch.tensor(self.scale, dtype=torch.float32)
        return q, ("binary", {"per_channel": False})


class BWNQuantizer(WeightQuantizer):
    """BWN / XNOR-Net weights: ``alpha * sign(W)``, ``alpha = mean|W|`` per filter."""

    def __init__(self, per_channel: bool = True):
        super().__init__()
        self.per_channel = per_channel
        self.bits = 1.0

    def forward(self, w):
        return bwn_weight(w, self.per_channel)

    @torch.no_grad()
    def quantize(self, w):
        pc = self.per_channel and w.dim() > 1
        return bwn_quantize(w, pc), ("binary", {"per_channel": pc})


class TWNQuantizer(WeightQuantizer):
    """TWN ternary weights ``alpha * {-1, 0, 1}`` with ``Delta = 0.7 mean|W|``."""

    def __init__(self, per_channel: bool = False):
        super().__init__()
        self.per_channel = per_channel
        self.bits = 2.0

    def forward(self, w):
        return twn_weight(w, self.per_channel)

    @torch.no_grad()
    def quantize(self, w):
        return twn_quantize(w, self.per_channel), (
            "lut",
            {"per_channel": self.per_channel and w.dim() > 1},
        )


class TTQQuantizer(WeightQuantizer):
    """TTQ: ``{-W_n, 0, +W_p}`` with trainable per-layer scales (initialised from ``w``)."""

    def __init__(self, w: torch.Tensor, t: float = 0.05, zero_ratio: float | None = None):
        super().__init__()
        self.t, self.zero_ratio = t, zero_ratio
        wp, wn = ttq_init_scales(w, ttq_threshold(w, t, zero_ratio))
        self.wp = nn.Parameter(torch.tensor(wp, dtype=w.dtype, device=w.device))
        self.wn = nn.Parameter(torch.tensor(wn, dtype=w.dtype, device=w.device))
        self.bits = 2.0

    def forward(self, w):
        return ttq_weight(w, self.wp, self.wn, ttq_threshold(w, self.t, self.zero_ratio))

    @torch.no_grad()
    def quantize(self, w):
        w = w.detach().float()
        q = ttq_weight(
            w,
            self.wp.detach().float(),
            self.wn.detach().float(),
            ttq_threshold(w, self.t, self.zero_ratio),
        )
        return q, ("lut", {"per_channel": False})


class INQQuantizer(WeightQuantizer):
    """INQ: weights are quantized in place by ``INQ`` steps; forward is the identity.
    ``n1, n2`` are set at the first partition step (from max|W| and ``bits``)."""

    def __init__(self, bits: int = 5):
        super().__init__()
        self.bits = float(bits)
        self.n1: int | None = None
        self.n2: int | None = None

    @torch.no_grad()
    def quantize(self, w):
        if self.n1 is None:
            self.n1, self.n2 = inq_exponents(float(w.detach().abs().max()), int(self.bits))
        q = inq_quantize(w.detach().float(), self.n1, self.n2)
        return q, ("pow2", {"n_max": self.n1, "n_min": self.n2, "bits": int(self.bits)})


class ShiftQuantizer(WeightQuantizer):
    """ShiftCNN: N codebooks of B bits, greedy residual; STE when fine-tuned."""

    def __init__(self, n: int = 2, bits: int = 4, per_channel: bool = False):
        super().__init__()
        self.n, self.b, self.per_channel = n, bits, per_channel
        self.bits = float(n * bits)

    def forward(self, w):
        return ste(w, shift_quantize(w, self.n, self.b, self.per_channel).to(w.dtype))

    @torch.no_grad()
    def quantize(self, w):
        pc = self.per_channel and w.dim() > 1
        return shift_quantize(w, self.n, self.b, pc), (
            "shift",
            {"n": self.n, "bits": self.b, "per_channel": pc},
        )


class ADMMQuantizer(WeightQuantizer):
    """ADMM: float weights during training (the ``ADMMCallback`` pulls them to the
    constraint set); ``quantize`` is the final projection ``alpha * Q``."""

    def __init__(self, levels: str = "ternary"):
        super().__init__()
        self.levels = levels
        n = level_set(levels).numel()
        self.bits = float((n - 1).bit_length())

    @torch.no_grad()
    def quantize(self, w):
        q, _ = admm_project(w.detach().float(), level_set(self.levels))
        return q, ("lut", {"per_channel": False})


class DoReFaQuantizer(WeightQuantizer):
    """DoReFa k-bit weights (tanh normalisation) times a fixed per-layer scale."""

    def __init__(self, w: torch.Tensor, bits: int = 2, scaled: bool = True):
        super().__init__()
        self.bits = float(bits)
        self.k = bits
        self.scale = float(w.detach().abs().max()) if scaled else 1.0

    def forward(self, w):
        return dorefa_weight(w, self.k, self.scale)

    @torch.no_grad()
    def quantize(self, w):
        return dorefa_weight(w.detach().float(), self.k, self.scale), (
            "lut",
            {"per_channel": False},
        )
