"""LeNet-300-100 and LeNet-5 in the Caffe form used by Han et al. (2015, 2016)."""

from __future__ import annotations

import torch
from torch import nn


class LeNet300100(nn.Module):
    """784-300-100-10 fully connected net (266,200 weights + 410 biases).

    ``dropout`` (default 0, as in Caffe) adds dropout before fc2 and fc3 so that the
    dropout-adjustment rule of iterative pruning has something to act on;
    ``input_dropout`` drops input pixels before fc1 (Srivastava et al. 2014 use 0.2 on
    MNIST MLPs; 0 = no module, so existing runs draw the same random numbers).
    """

    def __init__(self, num_classes: int = 10, in_features: int = 784, dropout: float = 0.0,
                 input_dropout: float = 0.0):
        super().__init__()
        self.drop0 = nn.Dropout(input_dropout) if input_dropout > 0 else nn.Identity()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop0(x.flatten(1))  # (B, 784)
        x = self.drop1(torch.relu(self.fc1(x)))  # (B, 300)
        x = self.drop2(torch.relu(self.fc2(x)))  # (B, 100)
        return self.fc3(x)  # (B, classes)


class LeNet5(nn.Module):
    """Caffe LeNet-5: conv 20@5x5, max-pool, conv 50@5x5, max-pool, fc 500, fc 10.

    430,500 weights (500 + 25,000 + 400,000 + 5,000) + 580 biases, for 1x28x28 input.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.fc1 = nn.Linear(50 * 4 * 4, 500)
        self.fc2 = nn.Linear(500, num_classes)
        self.pool = nn.MaxPool2d(2)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv1(x))  # (B, 20, 12, 12)
        x = self.pool(self.conv2(x))  # (B, 50, 4, 4)
        x = self.drop(torch.relu(self.fc1(x.flatten(1))))  # (B, 500)
        return self.fc2(x)
