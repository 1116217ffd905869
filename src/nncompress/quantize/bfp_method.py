"""Block floating point (Q15) as a quantizer: every chosen weight (and, with ``biases``, the
bias of the same layers) is rounded to block floating point in place and stored with the
``bfp`` codec (codec hints), which reproduces the rounded tensor exactly. Post-training."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from nncompress.format import set_codec_hints
from nncompress.prune.targets import prunable_weights
from nncompress.quantize.bfp import bfp_round, bfp_storage_bits, check_bfp_args
from nncompress.quantize.registry import (
    QuantizerConfig,
    QuantizeResult,
    QuantizeRun,
    register_quantizer,
)


@dataclass
class BFPConfig(QuantizerConfig):
    """Options of ``method: bfp`` (Q15).

    Example:
        >>> BFPConfig(mantissa_bits=6, block=16).training()
        'never'
    """

    mantissa_bits: int = 8
    """Signed mantissa bits, 2..24."""
    block: int | None = 32
    """Values per shared int8 exponent along the last dimension (>= 1), or null: one
    exponent per tensor."""
    biases: bool = False
    """Round and store the biases of the same layers that way too."""
    include: list[str] | None = None
    """Glob patterns of the layers to round (default: every Linear/Conv layer)."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of layers left alone."""

    def __post_init__(self) -> None:
        check_bfp_args(self.mantissa_bits, self.block)


@register_quantizer(BFPConfig, name="bfp")
def quantize_bfp(model: nn.Module, config: BFPConfig, run: QuantizeRun) -> QuantizeResult:
    """Round the chosen tensors; summary: bits per tensor and overall bits per value."""
    weights = prunable_weights(model, config.include, config.exclude)
    tensors: dict[str, torch.Tensor] = dict(weights)
    if config.biases:
        params = dict(model.named_parameters())
        for name in weights:
            bias = f"{name[: -len('weight')]}bias"
            if bias in params:
                tensors[bias] = params[bias]
    layers = {}
    with torch.no_grad():
        for name, t in tensors.items():
            t.copy_(bfp_round(t, config.mantissa_bits, config.block))
            bits = bfp_storage_bits(tuple(t.shape), config.mantissa_bits, config.block)
            layers[name] = {"bits": bits, "bits_per_value": bits / max(t.numel(), 1)}
    set_codec_hints(model, {name: ("bfp", {"mantissa_bits": config.mantissa_bits, "block": config.block})
                            for name in tensors})
    run.mark("after_bfp")
    total_bits = sum(v["bits"] for v in layers.values())
    total_values = sum(t.numel() for t in tensors.values())
    return QuantizeResult(model, {"mantissa_bits": config.mantissa_bits, "block": config.block, "layers": layers,
                                  "bits_per_value": total_bits / max(total_values, 1)})
