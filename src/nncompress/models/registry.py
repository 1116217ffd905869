"""Registry of built-in architectures, so a saved file can name how to rebuild its model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from nncompress.errors import ConfigError
from nncompress.models.efficient import MobileNetSmall, ShuffleNetSmall, SqueezeNetSmall
from nncompress.models.lenet import LeNet5, LeNet300100
from nncompress.models.resnet import ResNet20
from nncompress.models.vgg import SmallVGG

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300100,
    "lenet5": LeNet5,
    "resnet20": ResNet20,
    "vgg-small": SmallVGG,
    "mobilenet-small": MobileNetSmall,
    "shufflenet-small": ShuffleNetSmall,
    "squeezenet-small": SqueezeNetSmall,
}
ARCH_ATTR = "_nncompress_arch"


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Add a user architecture so that ``nncompress.load`` can rebuild it by name."""
    MODELS[name] = factory


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model and remember (name, kwargs) for the file format.

    Example:
        >>> build_model("lenet300").fc1.weight.shape
        torch.Size([300, 784])
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    try:
        model = MODELS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for model {name!r}: {exc}") from exc
    setattr(model, ARCH_ATTR, {"name": name, "kwargs": dict(kwargs)})
    return model


def arch_of(model: nn.Module) -> dict[str, Any] | None:
    """The (name, kwargs) a model was built with, or None for a user-defined model."""
    return getattr(model, ARCH_ATTR, None)
