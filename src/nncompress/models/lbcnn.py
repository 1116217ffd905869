"""E4 local binary convolution (LBCNN, Juefei-Xu et al. CVPR 2017).

An ``LBConv2d`` replaces a convolution by ``m`` fixed, sparse, random binary filters
(entries +1 / -1 with probability ``sparsity / 2`` each, else 0), a nonlinearity and a
learnable 1x1 convolution from the ``m`` responses to the output channels. Only the 1x1
weights (and bias) are learned and stored; the binary filters are regenerated from the
seed (a ``torch.Generator`` on the CPU, so the same on every machine), which the file's
``lbconv`` record keeps with the layer's geometry.

Example:
    >>> layer = LBConv2d(1, 8, 3, mid_channels=16, padding=1, seed=3)
    >>> torch.equal(layer.anchors, LBConv2d(1, 8, 3, mid_channels=16, padding=1, seed=3).anchors)
    True
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.errors import ConfigError
from nncompress.layer_records import register_layer_record, spec_bool, spec_float, spec_int


def binary_filters(out_channels: int, in_channels: int, kernel: int, sparsity: float, seed: int) -> torch.Tensor:
    """Fixed filters (out, in, k, k) with entries in {-1, 0, +1}: nonzero with probability
    ``sparsity``, sign +/-1 equally likely, drawn from a CPU generator seeded with ``seed``.

    Example:
        >>> set(binary_filters(4, 2, 3, 0.5, 0).unique().tolist()) <= {-1.0, 0.0, 1.0}
        True
    """
    g = torch.Generator().manual_seed(seed)
    shape = (out_channels, in_channels, kernel, kernel)
    keep = torch.rand(shape, generator=g) < sparsity
    sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
    return sign * keep


class LBConv2d(nn.Module):
    """Local binary convolution: fixed binary ``anchors`` (a non-persistent buffer, from the
    seed) -> ReLU -> learnable 1x1 conv ``mix``.

    Example:
        >>> LBConv2d(3, 5, 3, mid_channels=8)(torch.zeros(2, 3, 6, 6)).shape
        torch.Size([2, 5, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mid_channels: int = 32,
                 sparsity: float = 0.5, seed: int = 0, padding: int = 0, bias: bool = True):
        super().__init__()
        if not 0 < sparsity <= 1:
            raise ConfigError(f"sparsity={sparsity!r} out of range; allowed: (0, 1]")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.mid_channels, self.sparsity, self.seed, self.padding = mid_channels, sparsity, seed, padding
        self.register_buffer("anchors", binary_filters(mid_channels, in_channels, kernel_size, sparsity, seed),
                             persistent=False)
        self.mix = nn.Conv2d(mid_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.conv2d(x, self.anchors.to(x.dtype), padding=self.padding)  # (B, m, H', W')
        return self.mix(torch.relu(y))

    def spec(self) -> dict[str, Any]:
        return {"in": self.in_channels, "out": self.out_channels, "kernel": self.kernel_size,
                "mid": self.mid_channels, "sparsity": self.sparsity, "seed": self.seed,
                "padding": self.padding, "bias": self.mix.bias is not None}


def _from_spec(spec: Any, where: str) -> LBConv2d:
    return LBConv2d(spec_int(spec, "in", where), spec_int(spec, "out", where), spec_int(spec, "kernel", where, 1, 64),
                    spec_int(spec, "mid", where), spec_float(spec, "sparsity", where, 1e-9, 1.0),
                    spec_int(spec, "seed", where, 0, 2**63 - 1), spec_int(spec, "padding", where, 0, 64),
                    spec_bool(spec, "bias", where))


def lbcnn_lenet5(mid_channels: int = 32, sparsity: float = 0.5, seed: int = 0, num_classes: int = 10) -> nn.Module:
    """LeNet-5 with both convolutions local binary (``conv1``: 1 -> 20, ``conv2``: 20 -> 50,
    5x5, ``mid_channels`` binary filters each; layer k seeded with ``seed + k``).

    Example:
        >>> lbcnn_lenet5(8)(torch.zeros(1, 1, 28, 28)).shape
        torch.Size([1, 10])
    """
    from nncompress.models.lenet import LeNet5

    model = LeNet5(num_classes)
    model.conv1 = LBConv2d(1, 20, 5, mid_channels, sparsity, seed)
    model.conv2 = LBConv2d(20, 50, 5, mid_channels, sparsity, seed + 1)
    return model


register_layer_record("lbconv", (LBConv2d,), _from_spec)
