"""Small MobileNet-, ShuffleNet- and SqueezeNet-style nets for 1x28x28 inputs, built from
``nncompress.models.blocks``; each takes a width multiplier ``width``.

At ``width=1`` each costs about 1.1-1.5M MACs per image (LeNet-5: 2.3M).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.models.blocks import DepthwiseSeparable, Fire, ShuffleUnit


def scaled(channels: int, width: float, multiple: int = 1) -> int:
    """``channels * width`` rounded to the nearest multiple of ``multiple`` (at least one).

    Example:
        >>> scaled(96, 0.5, 12)
        48
    """
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not math.isfinite(width) \
            or width <= 0:
        raise ConfigError(f"width must be a finite number > 0, got {width!r}")
    return max(multiple, int(round(channels * width / multiple)) * multiple)


def _stem(in_channels: int, out_ch: int, batch_norm: bool = True) -> nn.Sequential:
    if batch_norm:
        return nn.Sequential(nn.Conv2d(in_channels, out_ch, 3, 1, 1, bias=False),
                             nn.BatchNorm2d(out_ch), nn.ReLU())
    return nn.Sequential(nn.Conv2d(in_channels, out_ch, 3, 1, 1), nn.ReLU())


class MobileNetSmall(nn.Module):
    """3x3 conv stem (16) then 5 depthwise separable blocks (32/2, 32, 64/2, 64, 128),
    global average pool, linear classifier. 28x28 -> 14x14 -> 7x7.

    Example:
        >>> MobileNetSmall(width=0.5)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    PLAN = ((32, 2), (32, 1), (64, 2), (64, 1), (128, 1))  # (out channels, stride)

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0):
        super().__init__()
        ch = scaled(16, width)
        self.stem = _stem(in_channels, ch)
        blocks = []
        for out, stride in self.PLAN:
            blocks.append(DepthwiseSeparable(ch, scaled(out, width), stride))
            ch = scaled(out, width)
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))  # (B, 128w, 7, 7)
        return self.fc(x.mean(dim=(2, 3)))  # (B, classes)


class ShuffleNetSmall(nn.Module):
    """3x3 conv stem (24) then two ShuffleNet v1 stages of (stride-2 unit, stride-1 unit)
    with 96 and 192 channels (rounded to multiples of ``4*groups``), global average pool,
    linear classifier.

    Example:
        >>> ShuffleNetSmall(groups=2)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0,
                 groups: int = 3):
        super().__init__()
        if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
            raise ConfigError(f"groups must be a positive integer, got {groups!r}")
        ch = scaled(24, width, groups)
        self.stem = _stem(in_channels, ch)
        units = []
        for out in (96, 192):
            out = max(scaled(out, width, 4 * groups), ch + groups)
            out += -out % (4 * groups)  # mid = out/4 and out - ch divisible by groups
            units += [ShuffleUnit(ch, out, groups, stride=2), ShuffleUnit(out, out, groups, stride=1)]
            ch = out
        self.units = nn.Sequential(*units)
        self.fc = nn.Linear(ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.units(self.stem(x))  # (B, 192w, 7, 7)
        return self.fc(x.mean(dim=(2, 3)))  # (B, classes)


class SqueezeNetSmall(nn.Module):
    """3x3 conv stem (16), max-pool, Fire x2 (squeeze 8, expand 16+16), max-pool,
    Fire x2 (squeeze 16, expand 32+32), 1x1 conv classifier, global average pool
    (no fully connected layer, as in SqueezeNet). ``batch_norm`` (default on) adds BN to
    the stem and fire modules; without it (the paper's form) SGD at lr 0.05 from the default
    init does not leave chance level within 150 steps on Fashion-MNIST.

    Example:
        >>> SqueezeNetSmall()(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: float = 1.0,
                 batch_norm: bool = True):
        super().__init__()
        s8, e16, s16, e32 = (scaled(c, width) for c in (8, 16, 16, 32))
        stem = scaled(16, width)
        self.stem = _stem(in_channels, stem, batch_norm)
        self.features = nn.Sequential(
            nn.MaxPool2d(2),  # 28 -> 14
            Fire(stem, s8, e16, e16, batch_norm),
            Fire(2 * e16, s8, e16, e16, batch_norm),
            nn.MaxPool2d(2),  # 14 -> 7
            Fire(2 * e16, s16, e32, e32, batch_norm),
            Fire(2 * e32, s16, e32, e32, batch_norm),
        )
        self.classifier = nn.Conv2d(2 * e32, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.stem(x))  # (B, 64w, 7, 7)
        return self.classifier(x).mean(dim=(2, 3))  # (B, classes)
