"""QAT layers: a Linear / Conv2d that keeps its float weight (same parameter, same
state-dict key) and computes the fake-quantized weight in ``forward``.

``QuantLinear(x) = gq(linear(aq(x), wq(W), b))``: ``aq`` quantizes the input, ``wq`` the
weight, and ``gq`` (DoReFa) quantizes the gradient flowing back into the layer output.
``to_float`` turns it back into a plain ``nn.Linear`` / ``nn.Conv2d`` with given weights.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from nncompress.modules import set_submodule  # noqa: F401  (re-exported)
from nncompress.quantize.activations import ActQuantizer
from nncompress.quantize.quantizers import WeightQuantizer
from nncompress.quantize.ste import quantize_grad


class _QuantMixin:
    wq: WeightQuantizer | None
    aq: ActQuantizer | None
    g_bits: int | None

    def _set_quant(self, wq, aq, g_bits) -> None:
        self.wq, self.aq, self.g_bits = wq, aq, g_bits

    def quant_weight(self) -> torch.Tensor:
        """The weight as the forward pass sees it (fake-quantized)."""
        return self.wq(self.weight) if self.wq is not None else self.weight

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return self.aq(x) if self.aq is not None else x


class QuantLinear(_QuantMixin, nn.Linear):
    """``nn.Linear`` with fake-quantized weight / input / gradient.

    Example:
        >>> from nncompress.quantize.quantizers import SignQuantizer
        >>> q = QuantLinear.from_float(nn.Linear(4, 2), SignQuantizer())
        >>> q.quant_weight().abs().unique().tolist()  # the sign of every weight
        [1.0]
    """

    @classmethod
    def from_float(
        cls,
        mod: nn.Linear,
        wq: WeightQuantizer | None,
        aq: ActQuantizer | None = None,
        g_bits: int | None = None,
    ) -> QuantLinear:
        new = cls(mod.in_features, mod.out_features, bias=mod.bias is not None, device="meta")
        new.weight, new.bias = mod.weight, mod.bias
        new._set_quant(wq, aq, g_bits)
        new.train(mod.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_grad(F.linear(self._input(x), self.quant_weight(), self.bias), self.g_bits)

    def to_float(self, weight: torch.Tensor) -> nn.Linear:
        """A plain ``nn.Linear`` holding ``weight`` and this layer's bias."""
        out = nn.Linear(
            self.in_features, self.out_features, bias=self.bias is not None, device="meta"
        )
        out.weight = nn.Parameter(
            weight.to(self.weight.device, self.weight.dtype),
            requires_grad=self.weight.requires_grad,
        )
        out.bias = self.bias
        out.train(self.training)
        return out


class QuantConv2d(_QuantMixin, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized weight / input / gradient."""

    @classmethod
    def from_float(
        cls,
        mod: nn.Conv2d,
        wq: WeightQuantizer | None,
        aq: ActQuantizer | None = None,
        g_bits: int | None = None,
    ) -> QuantConv2d:
        new = cls(
            mod.in_channels,
            mod.out_channels,
            mod.kernel_size,
            mod.stride,
            mod.padding,
            mod.dilation,
            mod.groups,
            mod.bias is not None,
            mod.padding_mode,
            device="meta",
        )
        new.weight, new.bias = mod.weight, mod.bias
        new._set_quant(wq, aq, g_bits)
        new.train(mod.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_grad(
            self._conv_forward(self._input(x), self.quant_weight(), self.bias), self.g_bits
        )

    def to_float(self, weight: torch.Tensor) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` holding ``weight`` and this layer's bias."""
        out = nn.Conv2d(
            self.in_channels,
            self.out_channels,
            self.kernel_size,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            self.bias is not None,
            self.padding_mode,
            device="meta",
        )
        out.weight = nn.Parameter(
            weight.to(self.weight.device, self.weight.dtype),
            requires_grad=self.weight.requires_grad,
        )
        out.bias = self.bias
        out.train(self.training)
        return out


QUANT_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: QuantLinear,
    nn.Conv2d: QuantConv2d,
}
"""Float layer type -> its QAT counterpart."""


def is_quant_layer(mod: nn.Module) -> bool:
    """True for ``QuantLinear`` / ``QuantConv2d``."""
    return isinstance(mod, (QuantLinear, QuantConv2d))


