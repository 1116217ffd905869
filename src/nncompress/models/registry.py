"""Registry of built-in architectures, so a saved file can name how to rebuild its model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from nncompress.errors import ConfigError
from nncompress.models.efficient import MobileNetSmall, ShuffleNetSmall, SqueezeNetSmall
from nncompress.models.lbcnn import lbcnn_lenet5
from nncompress.models.lenet import LeNet5, LeNet300100
from nncompress.models.resnet import ResNet20
from nncompress.models.vgg import SmallVGG
from nncompress.state import model_state, read_state

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet300": LeNet300100,
    "lenet5": LeNet5,
    "resnet20": ResNet20,
    "vgg-small": SmallVGG,
    "mobilenet-small": MobileNetSmall,
    "shufflenet-small": ShuffleNetSmall,
    "squeezenet-small": SqueezeNetSmall,
    "lbcnn-lenet5": lbcnn_lenet5,
}


def _image(kwargs: dict[str, Any]) -> list[int]:
    return [int(kwargs.get("in_channels", 1)), 28, 28]


INPUT_SHAPES: dict[str, Callable[[dict[str, Any]], list[int]]] = {
    "lenet300": lambda kw: [int(kw.get("in_features", 784))],
    **{name: _image for name in ("lenet5", "resnet20", "vgg-small", "mobilenet-small",
                                 "shufflenet-small", "squeezenet-small", "lbcnn-lenet5")},
}
"""Built-in architecture -> the per-sample input shape it was designed for (a 28x28
image, or the flattened vector of LeNet-300-100), from its kwargs. ``save`` records it
(after checking the model runs on it) so that ``load`` can check a loaded model runs."""


def default_input_shape(arch: dict[str, Any] | None) -> list[int] | None:
    """The input shape of a built-in architecture record (a ``hashed`` record: its base's),
    or None when unknown.

    Example:
        >>> default_input_shape({"name": "lenet5", "kwargs": {}})
        [1, 28, 28]
    """
    if not arch:
        return None
    if arch.get("name") == "hashed":
        arch = arch.get("kwargs", {}).get("base")
        if not isinstance(arch, dict):
            return None
    shape_of = INPUT_SHAPES.get(str(arch.get("name")))
    try:
        return shape_of(dict(arch.get("kwargs", {}))) if shape_of else None
    except (TypeError, ValueError):
        return None


def register_model(name: str, factory: Callable[..., nn.Module]) -> None:
    """Add a user architecture so that ``nncompress.load`` can rebuild it by name."""
    MODELS[name] = factory


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model and remember (name, kwargs) for the file format.

    Example:
        >>> build_model("lenet300").fc1.weight.shape
        torch.Size([300, 784])
    """
    if name == "huggingface":  # a transformers model from its stored config (models.hf_arch)
        from nncompress.models.hf_arch import build_huggingface

        try:
            return build_huggingface(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"bad arguments for model 'huggingface': {exc}") from exc
    if name not in MODELS:  # architectures registered by techniques (e.g. 'hashed')
        from nncompress.format.records import load_plugins

        load_plugins()
    if name not in MODELS:
        raise ConfigError(f"unknown model {str(name)[:60]!r}; allowed: {', '.join(sorted(MODELS))}")
    try:
        model = MODELS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for model {name!r}: {exc}") from exc
    model_state(model, create=True).arch = {"name": name, "kwargs": dict(kwargs)}
    return model


def arch_of(model: nn.Module) -> dict[str, Any] | None:
    """The (name, kwargs) a model was built with (a transformers model: ``huggingface``
    with its config, see ``models.hf_arch``), or None for a user-defined model."""
    from nncompress.models.hf_arch import capture_huggingface

    return capture_huggingface(model) or read_state(model).arch


def _register() -> None:
    from nncompress.format.records import Architectures, register_architectures

    register_architectures(Architectures(capture=arch_of, build=build_model,
                                         input_shape=default_input_shape))


_register()
