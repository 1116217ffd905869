"""A user-defined CNN and dataset factory, as a user of nncompress would write them in
their own package (nothing here is part of nncompress).

    PYTHONPATH=examples/own_model nncompress run examples/own_model/recipe.yaml
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


class TinyCNN(nn.Module):
    """Two 3x3 convolutions and a linear classifier for 1x28x28 images."""

    def __init__(self, width: int = 16, classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),  # (B, w, 14, 14)
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.MaxPool2d(2),  # (B, 2w, 7, 7)
        )
        self.classifier = nn.Linear(2 * width * 7 * 7, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, 28, 28) -> (B, classes)
        return self.classifier(self.features(x).flatten(1))


def build_cnn(width: int = 16, classes: int = 10) -> nn.Module:
    """The model factory named in the recipe: ``tinycnn:build_cnn``."""
    return TinyCNN(width, classes)


class DigitImages(Dataset):
    """The user's own dataset class: (image, label) pairs, images scaled to [0, 1]."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[i], self.labels[i]


def digit_splits(test_fraction: float = 0.2, seed: int = 0) -> dict[str, Dataset]:
    """The data factory named in the recipe: ``tinycnn:digit_splits``. Here it reads the
    scikit-learn digits bundled with nncompress; a user would read their own files."""
    from nncompress.data import load_dataset

    full = load_dataset("digits", "train")
    test = load_dataset("digits", "test")
    images = torch.cat([full.tensors[0], test.tensors[0]])
    labels = torch.cat([full.tensors[1], test.tensors[1]])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(labels) * test_fraction)
    te, tr = order[:n_test], order[n_test:]
    return {"train": DigitImages(images[tr], labels[tr]), "test": DigitImages(images[te], labels[te])}
