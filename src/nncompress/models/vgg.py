"""A small VGG-style network for 1x28x28 inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

DEFAULT_CFG: tuple[int | str, ...] = (32, 32, "M", 64, 64, "M", 128, 128, "M")


class SmallVGG(nn.Module):
    """Stacks of 3x3 conv-BN-ReLU with max-pooling ('M'), then a two-layer classifier."""

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        cfg: Sequence[int | str] = DEFAULT_CFG,
        hidden: int = 256,
        dropout: float = 0.0,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        ch = in_channels
        pools = 0
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                pools += 1
            else:
                layers += [nn.Conv2d(ch, int(item), 3, padding=1, bias=False),
                           nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
                ch = int(item)
        self.features = nn.Sequential(*layers)
        side = 28 // (2**pools)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(ch * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
