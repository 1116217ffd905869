"""Q16 TNN, ternary neural networks (Alemdar et al. 2017, arXiv 1609.00222): ternary
weights *and* ternary activations, so a layer's product needs no multiplication.

Every quantized layer's input goes through a ternary activation quantizer

    y = c + a * t,   t = sign(x - c) * 1{|x - c| > Delta}  in {-1, 0, +1}

and its weight through TWN's ternary quantizer ``alpha_w * {-1, 0, +1}`` (per output
neuron by default, as the paper's student has one ternary weight vector per neuron). With
``c = 0`` the activations lie on ``{-a, 0, +a}`` (the paper's bipolar neurons), and
``W y = a alpha_w (T_w t) + c W 1``: ``T_w t`` is a sum of +-1 terms (additions only), the
two scales fold into one per-neuron factor and ``c W 1`` into the bias. Our models put a
ReLU before each layer, so inputs that are never negative get ``c = a``: the levels
``{0, a, 2a}`` use all three codes (with ``c = 0`` they would use two); ``centered=True``
forces ``c = 0``.

``Delta`` and ``a`` are calibrated on the layer's inputs to minimise the squared error
(centred codes: TWN's closed form over every threshold, ``a`` = mean ``|x|`` above it;
non-negative inputs: a search of ``a`` with the rounding thresholds ``a/2``, ``3a/2``),
then held fixed while the weights train with straight-through gradients (passed where
``|x - c| <= a + Delta``, a hard-tanh window). The paper trains the ternary student to
mimic a full-precision teacher; a recipe's ``distill`` block (or ``QuantizeRun.distill``)
does that here.

The quantizers are stored like the other low-bit activation quantizers: the ``activations``
header record holds ``{"kind": "ternary", "delta", "alpha", "center"}`` per layer, the
weights go through the ``lut`` codec (2-bit codes + scales).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from nncompress.errors import ConfigError
from nncompress.quantize.activations import (
    MAX_ACT_VALUE,
    ActQuantizer,
    check_act_value,
    register_activation,
)
from nncompress.quantize.bits import check_bits
from nncompress.quantize.lowbit_method import quantize_lowbit
from nncompress.quantize.methods import LayerInfo, QuantConfig
from nncompress.quantize.quantizers import TWNQuantizer
from nncompress.quantize.registry import QuantizeResult, QuantizeRun, register_quantizer

MAX_LEVEL = MAX_ACT_VALUE
"""Largest ``|Delta|``, ``a`` or ``|c|`` a ternary activation may hold (2^32, the bound of
every calibrated activation parameter): each is at most the largest input the layer saw in
calibration (``a <= max |x|``, ``Delta <= a``, ``c = a <= max x / 2``)."""
_REL = 1e-6
"""Relative slack of the level relations a file must satisfy (float32 rounding)."""

SAMPLE = 1 << 16
"""Calibration values kept per layer and batch (a random subset) to fit Delta and a."""
_A_GRID = 96


def ternary_codes(x: torch.Tensor, delta: float, center: float = 0.0) -> torch.Tensor:
    """The ternary code ``t = sign(x - c) 1{|x - c| > Delta}`` in {-1, 0, +1} (x's dtype).

    Example:
        >>> ternary_codes(torch.tensor([-0.9, 0.1, 0.6]), 0.5).tolist()
        [-1.0, 0.0, 1.0]
    """
    z = x - center
    return torch.where(z.abs() > delta, torch.sign(z), torch.zeros_like(z))


class _TernarySTE(torch.autograd.Function):
    """``c + a t`` forward; the gradient passes where ``|x - c| <= a + Delta``."""

    @staticmethod
    def forward(ctx, x, delta: float, alpha: float, center: float):
        ctx.save_for_backward(x)
        ctx.window, ctx.center = alpha + delta, center
        return center + alpha * ternary_codes(x, delta, center)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x - ctx.center).abs() <= ctx.window).to(grad.dtype), None, None, None


def ternary_activation(x: torch.Tensor, delta: float, alpha: float, center: float = 0.0) -> torch.Tensor:
    """TNN's ternary neuron output ``c + a t`` (values on ``{c - a, c, c + a}``;
    ``{-a, 0, +a}`` when ``c = 0``) with the hard-tanh straight-through gradient.

    Example:
        >>> ternary_activation(torch.tensor([-2.0, 0.2, 1.0]), 0.5, 1.5).tolist()
        [-1.5, 0.0, 1.5]
    """
    return _TernarySTE.apply(x, float(delta), float(alpha), float(center))


def fit_centered(x: torch.Tensor) -> tuple[float, float]:
    """``(Delta, a)`` minimising ``sum (x - a t)^2`` over every threshold (TWN's closed
    form: for a threshold the best ``a`` is the mean ``|x|`` above it, and the error is
    ``sum x^2 - (sum_above |x|)^2 / n_above``).

    Example:
        >>> fit_centered(torch.tensor([-1.0, 0.0, 1.0, 0.05]))
        (0.05000000074505806, 1.0)
    """
    s = x.detach().flatten().double().abs().sort().values  # (n,) ascending
    n = s.numel()
    if n == 0 or float(s[-1]) == 0.0:
        return 0.0, 1.0
    # above[k] = sum of s[k:], count n - k: threshold between s[k-1] and s[k]
    above = s.flip(0).cumsum(0).flip(0)
    count = torch.arange(n, 0, -1, dtype=s.dtype)
    gain = above**2 / count  # error = sum x^2 - gain
    gain[1:][s[1:] == s[:-1]] = -1.0  # a threshold must split distinct values
    k = int(gain.argmax())
    delta = float(s[k - 1]) if k > 0 else 0.0
    alpha = float(above[k] / count[k])
    return delta, alpha


def fit_nonnegative(x: torch.Tensor) -> float:
    """The ``a`` of the levels ``{0, a, 2a}`` (round to nearest) with the least squared
    error on ``x``, searched over a grid up to ``max x``.

    Example:
        >>> fit_nonnegative(torch.tensor([0.0, 1.0, 2.0, 2.0]))
        1.0
    """
    x = x.detach().flatten().float()
    top = float(x.max()) if x.numel() else 0.0
    if top <= 0.0:
        return 1.0
    cands = torch.linspace(top / _A_GRID, top / 2, _A_GRID)  # (G,); a = top / 2 reaches top exactly
    q = (x[None, :] / cands[:, None]).round().clamp(0, 2) * cands[:, None]  # (G, n)
    err = ((q - x[None, :]) ** 2).sum(1)
    return float(cands[int(err.argmin())])


def check_levels(delta: float, alpha: float, center: float) -> None:
    """Refuse (``ConfigError`` naming the value and the bound) levels no calibration writes:
    any of ``Delta``, ``a``, ``|c|`` above ``MAX_LEVEL``, or values off the two shapes ``fit``
    produces: centred codes (``c = 0``, ``0 <= Delta <= a``) or non-negative inputs (``c =
    a``, ``Delta = a / 2``), each up to float32 rounding.

    Example:
        >>> check_levels(0.5, 1.0, 1.0)  # {0, a, 2a}: c = a, Delta = a / 2
        >>> check_levels(0.5, 2.0**40, 0.0)
        Traceback (most recent call last):
        ...
        nncompress.errors.ConfigError: activation quantizer 'ternary': alpha=1099511627776.0 exceeds the bound 4294967296.0 (2^32) of a layer input; a damaged file, or a model fed unnormalised inputs
    """
    for key, v in (("alpha", alpha), ("center", center), ("delta", delta)):
        check_act_value("ternary", key, v)
    if center == 0.0:
        if not delta <= alpha * (1 + _REL):
            raise ConfigError(f"ternary activation: delta={delta!r} > alpha={alpha!r} with center 0; allowed: "
                              "delta <= alpha (the fitted threshold lies below the level)")
    elif not (math.isclose(center, alpha, rel_tol=_REL) and math.isclose(delta, alpha / 2, rel_tol=_REL)):
        raise ConfigError(f"ternary activation: center={center!r}, alpha={alpha!r}, delta={delta!r}; allowed: "
                          "center 0 (with delta <= alpha) or center = alpha with delta = alpha / 2")


class TernaryAct(ActQuantizer):
    """TNN ternary activation quantizer ``c + a t``: calibrated (a sample of inputs is
    kept while ``calibrating``), fitted once on the first forward after calibration (or
    by :meth:`fit`), then fixed; rebuilt from ``{"kind": "ternary", "delta", "alpha",
    "center"}``.

    Example:
        >>> q = TernaryAct(delta=0.5, alpha=1.0, center=0.0)
        >>> q(torch.tensor([-3.0, 0.1, 0.7])).tolist()
        [-1.0, 0.0, 1.0]
    """

    kind, bits = "ternary", 2.0

    def __init__(self, delta: float | None = None, alpha: float | None = None, center: float | None = None,
                 centered: bool = False) -> None:
        super().__init__()
        given = [v for v in (delta, alpha, center) if v is not None]
        if given and len(given) != 3:
            raise ConfigError("ternary activation: give delta, alpha and center together")
        for key, v in (("delta", delta), ("alpha", alpha), ("center", center)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))
                                  or not math.isfinite(v)):
                raise ConfigError(f"ternary activation: {key}={str(v)[:40]} is not a finite number")
        if delta is not None and delta < 0:
            raise ConfigError(f"ternary activation: delta={delta} must be >= 0")
        if alpha is not None and not alpha > 0:
            raise ConfigError(f"ternary activation: alpha={alpha} must be > 0")
        if given:
            check_levels(float(delta), float(alpha), float(center))
        self.delta, self.alpha, self.center = (None if v is None else float(v) for v in (delta, alpha, center))
        self.centered = centered
        self._sample: list[torch.Tensor] = []

    def observe(self, x: torch.Tensor) -> None:
        super().observe(x)
        flat = x.detach().flatten().float().cpu()
        if flat.numel() > SAMPLE:
            flat = flat[torch.randperm(flat.numel(), generator=torch.Generator().manual_seed(len(self._sample)))[:SAMPLE]]
        self._sample.append(flat)

    @property
    def fitted(self) -> bool:
        return self.alpha is not None

    def fit(self) -> None:
        """Choose ``Delta``, ``a``, ``c`` from the calibration sample (``ConfigError``
        without one) and drop the sample."""
        if not self._sample:
            self._need_range()  # raises: not calibrated
        x = torch.cat(self._sample)
        if self.centered or self.lo < 0:
            self.center = 0.0
            self.delta, self.alpha = fit_centered(x)
        else:
            a = fit_nonnegative(x)
            self.center, self.delta, self.alpha = a, a / 2, a
        self.alpha = self.alpha if self.alpha > 0 else 1.0
        # float32 values, so the levels c +- a are exactly what a float32 forward computes
        self.delta, self.alpha, self.center = (float(torch.tensor(v, dtype=torch.float32))
                                               for v in (self.delta, self.alpha, self.center))
        self._sample = []
        check_levels(self.delta, self.alpha, self.center)

    def apply_quant(self, x: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            self.fit()
        return ternary_activation(x, self.delta, self.alpha, self.center)

    def params(self):
        if not self.fitted:
            self.fit()
        return {"delta": self.delta, "alpha": self.alpha, "center": self.center}


register_activation(TernaryAct, ("delta", "alpha", "center"))


@dataclass
class TNNConfig(QuantConfig):
    """Q16 TNN: ternary weights (TWN, per output neuron) and ternary inputs ``c + a t`` of
    every quantized layer but the first (whose input is the data; ``ternary_input`` makes
    it ternary too). Calibrated, then trained (QAT); ``distill`` is the paper's
    teacher-student training."""

    name: ClassVar[str] = "tnn"
    per_channel: bool = True
    """Ternary weight scale per output neuron (else one per layer)."""
    ternary_input: bool = False
    """Ternarise the first layer's input (the data) as well."""
    centered: bool = False
    """Codes centred at 0 ({-a, 0, +a}) even for inputs that are never negative (else those
    get the levels {0, a, 2a})."""

    def __post_init__(self):
        super().__post_init__()
        for key in ("per_channel", "ternary_input", "centered"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"tnn: {key}={getattr(self, key)!r} must be true or false")
        check_bits(self.calib_batches, 1, 1 << 20, "calib_batches")

    def weight_quantizer(self, layer: LayerInfo) -> TWNQuantizer:
        return TWNQuantizer(self.per_channel)

    def act_quantizer(self, layer: LayerInfo) -> TernaryAct | None:
        return None if layer.first and not self.ternary_input else TernaryAct(centered=self.centered)

    def needs_calibration(self) -> bool:
        return True


@register_quantizer(TNNConfig, name="tnn")
def quantize_tnn(model: torch.nn.Module, config: TNNConfig, run: QuantizeRun) -> QuantizeResult:
    """Wrap, calibrate the ternary activations, train and finalize ``model`` (in place).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.quantize.api import activation_spec
        >>> from nncompress.quantize.registry import quantize_model
        >>> g = torch.Generator().manual_seed(0)
        >>> train = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> model = quantize_model(build_model("lenet300"), TNNConfig(), QuantizeRun(train_data=train)).model
        >>> spec = activation_spec(model)  # fc1's input is the data: not ternary by default
        >>> sorted(spec), all(s["center"] == s["alpha"] for s in spec.values())  # ReLU inputs: {0, a, 2a}
        (['fc2', 'fc3'], True)
        >>> model.fc2.weight[0].unique().numel()  # ternary weights per neuron
        3
    """
    return quantize_lowbit(model, config, run)
