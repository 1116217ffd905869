"""One small config dataclass per method (catalogue Q3-Q12) and the ``METHODS`` table.

A config says, per quantizable layer, which weight quantizer and which input (activation)
quantizer to use, whether the method trains (QAT) and which callbacks training needs.
``quantize_`` applies a config to a model; ``quantize_model`` runs the whole method (the
handler of every config here is in ``nncompress.quantize.lowbit_method``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.quantize.activations import (
    ActQuantizer,
    AffineAct,
    DoReFaAct,
    LinearAct,
    LogAct,
    SignAct,
    XNORAct,
)
from nncompress.quantize.admm import ADMM_LEVELS
from nncompress.quantize.bits import check_bits, check_choice, check_range
from nncompress.quantize.quantizers import (
    ADMMQuantizer,
    BWNQuantizer,
    CastQuantizer,
    DoReFaQuantizer,
    INQQuantizer,
    IntQuantizer,
    ShiftQuantizer,
    SignQuantizer,
    TTQQuantizer,
    TWNQuantizer,
    WeightQuantizer,
)
from nncompress.quantize.registry import QuantizerConfig, build_config
from nncompress.train.callbacks import Callback


@dataclass
class LayerInfo:
    """Where a layer sits among the quantizable layers (execution = registration order)."""

    name: str
    module: nn.Module
    index: int
    count: int

    @property
    def first(self) -> bool:
        return self.index == 0

    @property
    def last(self) -> bool:
        return self.index == self.count - 1


@dataclass
class QuantConfig(QuantizerConfig):
    """Base config of the low-bit methods."""

    name: ClassVar[str] = ""
    trains: ClassVar[bool] = True
    skip_first_last: bool = False
    """Keep the first and the last layer in float."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of layer names left alone."""
    keep_zeros: bool = True
    """Weights that are exactly zero (a pruned model) stay zero during training."""
    calib_batches: int = 8
    """Batches of the calibration pass of methods that quantize activations, >= 1."""

    def __post_init__(self) -> None:
        check_bits(self.calib_batches, 1, 1 << 20, "calib_batches")

    def training(self) -> str:
        return "always" if self.needs_training() else "never"

    def weight_quantizer(self, layer: LayerInfo) -> WeightQuantizer | None:
        return None

    def act_quantizer(self, layer: LayerInfo) -> ActQuantizer | None:
        return None

    def grad_bits(self) -> int | None:
        return None

    def needs_training(self) -> bool:
        """True when the method fine-tunes (QAT); False for post-training methods."""
        return self.trains

    def needs_calibration(self) -> bool:
        return False

    def callbacks(self, model: nn.Module, names: list[str]) -> list[Callback]:
        """Training callbacks (``names``: the quantized weights)."""
        return []


@dataclass
class FloatConfig(QuantConfig):
    """Q3 fp16 / bf16 weights (post-training cast)."""

    name: ClassVar[str] = "fp16"
    trains: ClassVar[bool] = False
    dtype: str = "fp16"
    """``fp16`` or ``bf16``: the float type the weights are cast to."""

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.dtype, ("fp16", "bf16"), "dtype")

    def weight_quantizer(self, layer):
        return CastQuantizer(self.dtype)


@dataclass
class BF16Config(FloatConfig):
    """Q3 bf16 weights: ``FloatConfig`` with ``dtype="bf16"``."""

    name: ClassVar[str] = "bf16"
    dtype: str = "bf16"
    """``bf16`` (see ``FloatConfig.dtype``)."""


@dataclass
class IntConfig(QuantConfig):
    """Q3 uniform int weights (default int8 per channel, symmetric) and optionally
    calibrated int activations (``act_bits``, None = float); ``qat`` fine-tunes."""

    name: ClassVar[str] = "int8"
    bits: int = 8
    """Weight code width (2..16)."""
    per_channel: bool = True
    """One scale (and zero point) per output channel instead of per tensor."""
    symmetric: bool = True
    """Zero point fixed at the middle code (symmetric range) instead of min/max."""
    act_bits: int | None = 8
    """Bits of the calibrated layer-input quantizers (None: inputs stay float)."""
    qat: bool = False
    """Fine-tune with fake quantization (QAT) instead of post-training only."""

    def __post_init__(self):
        super().__post_init__()
        check_bits(self.bits, 2, 8)
        if self.act_bits is not None:
            check_bits(self.act_bits, 2, 16, "act_bits")

    def weight_quantizer(self, layer):
        return IntQuantizer(self.bits, self.symmetric, self.per_channel)

    def act_quantizer(self, layer):
        return AffineAct(self.act_bits) if self.act_bits is not None else None

    def needs_training(self):
        return self.qat

    def needs_calibration(self):
        return self.act_bits is not None


class ClipWeights(Callback):
    """BinaryConnect: clip the real-valued weights to [-1, 1] after each step."""

    def __init__(self, params: list[nn.Parameter]):
        self.params = params

    @torch.no_grad()
    def after_optimizer_step(self, model, optimizer):
        for p in self.params:
            p.clamp_(-1.0, 1.0)


def _params_named(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    params = dict(model.named_parameters())
    return [params[n] for n in names]


@dataclass
class BinaryConnectConfig(QuantConfig):
    """Q4 BinaryConnect: +-1 weights (no scale), real weights kept and clipped to [-1, 1].

    ``scaled=True`` (not in the paper) multiplies each layer's +-1 by a fixed constant,
    mean|W| of the float weights at wrap time: a BatchNorm-free net (LeNet-5) otherwise
    sees its activations grow by ~sqrt(fan_in) per layer and its softmax saturate.
    """

    name: ClassVar[str] = "binaryconnect"
    stochastic: bool = False
    """Stochastic binarisation (+1 with probability hard_sigmoid(w)) instead of sign(w)."""
    scaled: bool = False
    """Multiply each layer's +-1 by mean|W| at wrap time (see the class docstring)."""

    def weight_quantizer(self, layer):
        scale = float(layer.module.weight.detach().abs().mean()) if self.scaled else 1.0
        return SignQuantizer(self.stochastic, scale)

    def callbacks(self, model, names):
        return [ClipWeights(_params_named(model, names))]


@dataclass
class BNNConfig(BinaryConnectConfig):
    """Q4 BNN: +-1 weights and +-1 inputs of every binarised layer but the first."""

    name: ClassVar[str] = "bnn"

    def act_quantizer(self, layer):
        return None if layer.first else SignAct()


@dataclass
class BWNConfig(QuantConfig):
    """Q5 BWN: ``alpha * sign(W)``, alpha = mean|W| per filter."""

    name: ClassVar[str] = "bwn"
    per_channel: bool = True
    """alpha per output filter (else one per layer)."""

    def weight_quantizer(self, layer):
        return BWNQuantizer(self.per_channel)


@dataclass
class XNORConfig(BWNConfig):
    """Q5 XNOR-Net: BWN weights and scaled binary inputs; first/last layer kept float."""

    name: ClassVar[str] = "xnor"
    skip_first_last: bool = True

    def act_quantizer(self, layer):
        return None if layer.first else XNORAct()


@dataclass
class TWNConfig(QuantConfig):
    """Q6 TWN: Delta = 0.7 mean|W|, alpha = mean |w| over |w| > Delta."""

    name: ClassVar[str] = "twn"
    per_channel: bool = False
    """Delta and alpha per output filter (else one per layer)."""

    def weight_quantizer(self, layer):
        return TWNQuantizer(self.per_channel)


@dataclass
class TTQConfig(QuantConfig):
    """Q7 TTQ: trainable W_p, W_n per layer; threshold t max|W| or a target zero ratio."""

    name: ClassVar[str] = "ttq"
    t: float = 0.05
    """Threshold as a fraction of max|W|: weights below t max|W| become zero."""
    zero_ratio: float | None = None
    """Target share of zero weights per layer instead of ``t`` (None: use ``t``)."""

    def __post_init__(self):
        super().__post_init__()
        check_range(self.t, 0.0, 1.0, "t")
        if self.zero_ratio is not None:
            check_range(self.zero_ratio, 0.0, 0.999, "zero_ratio")

    def weight_quantizer(self, layer):
        return TTQQuantizer(layer.module.weight, self.t, self.zero_ratio)


@dataclass
class INQConfig(QuantConfig):
    """Q8 INQ: power-of-two weights quantized in growing partitions, largest |w| first,
    the rest retrained between steps (``epochs_per_step`` of the training config each)."""

    name: ClassVar[str] = "inq"
    bits: int = 5
    """Bits of the power-of-two codes (one for zero, the rest for +-2^n)."""
    schedule: list[float] = field(default_factory=lambda: [0.5, 0.75, 0.875, 1.0])
    """Cumulative share of weights quantized at each step (increasing, ending at 1.0)."""

    def __post_init__(self):
        super().__post_init__()
        check_bits(self.bits, 2, 8)
        s = [float(x) for x in self.schedule]
        if not s or any(not 0 < x <= 1 for x in s) or s != sorted(s) or s[-1] != 1.0:
            raise ConfigError(
                f"INQ schedule={self.schedule!r} must rise within (0, 1] and end at 1.0"
            )
        self.schedule = s

    def weight_quantizer(self, layer):
        return INQQuantizer(self.bits)


@dataclass
class ShiftCNNConfig(QuantConfig):
    """Q9 ShiftCNN: N codebooks of B bits, greedy residual (PTQ unless ``qat``)."""

    name: ClassVar[str] = "shiftcnn"
    n: int = 2
    """Codebooks N: each weight is a sum of N codewords 0 or +-2^-m."""
    bits: int = 4
    """Bits B per codeword (2^B - 1 codewords)."""
    per_channel: bool = False
    """Scale per output channel instead of per tensor."""
    qat: bool = False
    """Fine-tune with the quantizer in the loop (else post-training only)."""

    def __post_init__(self):
        super().__post_init__()
        check_bits(self.n, 1, 4, "n")
        check_bits(self.bits, 2, 8)

    def weight_quantizer(self, layer):
        return ShiftQuantizer(self.n, self.bits, self.per_channel)

    def needs_training(self):
        return self.qat


@dataclass
class ADMMConfig(QuantConfig):
    """Q10 ADMM: alpha * {level set} via an augmented Lagrangian during training."""

    name: ClassVar[str] = "admm"
    levels: str = "ternary"
    """Level set: ``ternary`` {-a,0,a}, ``int5`` {-2a..2a} or ``pow2`` {0,+-a,+-2a,+-4a}."""
    rho: float = 1.0
    """Penalty weight of the augmented Lagrangian."""
    interval: int = 20
    """Steps between projections of G and dual updates (>= 1)."""
    rho_growth: float = 1.0
    """rho is multiplied by this after every projection (1.0: constant)."""

    def __post_init__(self):
        super().__post_init__()
        check_choice(self.levels, tuple(ADMM_LEVELS), "levels")
        check_range(self.rho, 1e-9, 1e9, "rho")

    def weight_quantizer(self, layer):
        return ADMMQuantizer(self.levels)

    def callbacks(self, model, names):
        from nncompress.quantize.admm import ADMMCallback

        return [ADMMCallback(model, names, self.levels, self.rho, self.interval, self.rho_growth)]


@dataclass
class DoReFaConfig(QuantConfig):
    """Q11 DoReFa: k-bit weights (tanh), k-bit inputs (all but the first layer), k-bit
    gradients (``g_bits``, None = float)."""

    name: ClassVar[str] = "dorefa"
    w_bits: int = 2
    """Weight bits (1..8)."""
    a_bits: int | None = 4
    """Input bits of every layer but the first (1..16; None: float inputs)."""
    g_bits: int | None = None
    """Gradient bits (2..16; None: float gradients)."""
    scaled: bool = True
    """Multiply the k-bit weights by the layer's max|W| (else they stay in [-1, 1])."""

    def __post_init__(self):
        super().__post_init__()
        check_bits(self.w_bits, 1, 8, "w_bits")
        if self.a_bits is not None:
            check_bits(self.a_bits, 1, 16, "a_bits")
        if self.g_bits is not None:
            check_bits(self.g_bits, 2, 16, "g_bits")

    def weight_quantizer(self, layer):
        return DoReFaQuantizer(layer.module.weight, self.w_bits, self.scaled)

    def act_quantizer(self, layer):
        return None if layer.first or self.a_bits is None else DoReFaAct(self.a_bits)

    def grad_bits(self):
        return self.g_bits


@dataclass
class LinearActConfig(QuantConfig):
    """Q12 linear activation quantization of every layer input but the first (weights
    stay float); calibrated, post-training."""

    name: ClassVar[str] = "act-linear"
    trains: ClassVar[bool] = False
    bits: int = 8
    """Bits of the calibrated linear input quantizers."""

    def __post_init__(self):
        super().__post_init__()
        check_bits(self.bits, 2, 16)

    def act_quantizer(self, layer):
        return None if layer.first else LinearAct(self.bits)

    def needs_calibration(self):
        return True


@dataclass
class LogActConfig(LinearActConfig):
    """Q12 log activation quantization ``sign(x) 2^round(log2|x|)``."""

    name: ClassVar[str] = "act-log"
    bits: int = 5
    """Bits of the log input quantizers (1 sign bit, the rest zero code + exponents)."""

    def __post_init__(self):
        check_bits(self.bits, 2, 8)
        super().__post_init__()

    def act_quantizer(self, layer):
        return None if layer.first else LogAct(self.bits)


METHODS: dict[str, type[QuantConfig]] = {
    "fp16": FloatConfig,
    "bf16": BF16Config,
    "int8": IntConfig,
    "binaryconnect": BinaryConnectConfig,
    "bnn": BNNConfig,
    "bwn": BWNConfig,
    "xnor": XNORConfig,
    "twn": TWNConfig,
    "ttq": TTQConfig,
    "inq": INQConfig,
    "shiftcnn": ShiftCNNConfig,
    "admm": ADMMConfig,
    "dorefa": DoReFaConfig,
    "act-linear": LinearActConfig,
    "act-log": LogActConfig,
}
"""Method name -> config class of the low-bit methods (each registered as a quantizer under
that name by ``nncompress.quantize.lowbit_method``)."""


def make_config(method: str, params: dict[str, Any] | None = None) -> QuantConfig:
    """Build the config of a low-bit ``method`` from a params dict; unknown keys are errors.

    Example:
        >>> make_config("int8", {"per_channel": False}).per_channel
        False
    """
    if method not in METHODS:
        raise ConfigError(
            f"unknown quantization method {method!r}; allowed: {', '.join(sorted(METHODS))}"
        )
    return build_config(METHODS[method], method, params)
