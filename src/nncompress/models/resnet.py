"""ResNet-20-style network (He et al. 2016, CIFAR variant) for 1x28x28 inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nncompress.errors import ConfigError

MAX_BLOCKS = 64
"""Most blocks per stage (ResNet-20 has 3; ResNet-110 on CIFAR has 18)."""
MAX_STAGES = 8


def projection_shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Identity when shapes match, else a strided 1x1 conv + BatchNorm (ResNet option B).

    Example:
        >>> type(projection_shortcut(16, 16, 1)).__name__
        'Identity'
    """
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity or 1x1 conv-BN shortcut."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, mid_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_ch)
        self.conv2 = nn.Conv2d(mid_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = projection_shortcut(in_ch, out_ch, stride)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch (everything but the shortcut), before the add."""
        out = torch.relu(self.bn1(self.conv1(x)))
        return self.bn2(self.conv2(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.branch(x) + self.shortcut(x))


class ResNet20(nn.Module):
    """3 stages x ``blocks`` basic blocks with ``widths`` channels (default 16-32-64).

    ``mid_widths`` optionally gives each block's inner width (a structurally pruned model
    is rebuilt from it); by default it equals the stage width.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        blocks: int = 3,
    ):
        super().__init__()
        if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= MAX_BLOCKS:
            raise ConfigError(f"blocks={blocks!r} is not allowed; use an int in 1..{MAX_BLOCKS}")
        if not isinstance(widths, (list, tuple)) or not 1 <= len(widths) <= MAX_STAGES:
            raise ConfigError(f"widths={str(widths)[:60]} is not allowed; use 1..{MAX_STAGES} ints")
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        in_ch = widths[0]
        for stage, width in enumerate(widths):
            for b in range(blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(BasicBlock(in_ch, width, width, stride))
                in_ch = width
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))  # (B, 16, 28, 28)
        x = self.layers(x)  # (B, 64, 7, 7)
        return self.fc(x.mean(dim=(2, 3)))  # (B, classes)
