"""Shared tiny seeded fixtures."""

import pytest
import torch
from torch.utils.data import TensorDataset

from nncompress.models import build_model


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture
def tiny_data() -> TensorDataset:
    """256 random 1x28x28 images with labels from a fixed linear rule (learnable)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, 1, 28, 28, generator=g)
    w = torch.randn(784, 10, generator=g)
    y = (x.flatten(1) @ w).argmax(1)
    return TensorDataset(x, y)


@pytest.fixture
def lenet300():
    return build_model("lenet300")


@pytest.fixture
def lenet5():
    return build_model("lenet5")
