"""Which parameters a pruner may touch."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

from nncompress.errors import ConfigError
from nncompress.modules import select_layers

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(kw_only=True)
class LayerSelection:
    """The layers a pruning config applies to (a base of the pruners' configs).

    Example:
        >>> LayerSelection(exclude=["fc3"]).include is None
        True
    """

    include: list[str] | None = None
    """Glob patterns of the layers to prune (default: every Linear/Conv layer)."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of layers left dense."""


def is_conv(module: nn.Module) -> bool:
    """True for convolution modules."""
    return isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d))


def prunable_weights(
    model: nn.Module,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    types: tuple[type[nn.Module], ...] = PRUNABLE_TYPES,
) -> dict[str, nn.Parameter]:
    """Weight parameters of Linear/Conv layers, keyed by state-dict name (``fc1.weight``).

    ``include``/``exclude`` are glob patterns over module names (``fc*``, ``layers.0.*``).
    Raises ``ConfigError`` when nothing is left to prune.

    Example:
        >>> from nncompress.models.lenet import LeNet300100
        >>> list(prunable_weights(LeNet300100()))
        ['fc1.weight', 'fc2.weight', 'fc3.weight']
    """
    include = list(include) if include is not None else None
    exclude = list(exclude)
    out = {f"{name}.weight" if name else "weight": mod.weight
           for name, mod in select_layers(model, include, exclude, types).items()
           if getattr(mod, "weight", None) is not None}
    if not out:
        kinds = ", ".join(t.__name__ for t in types)
        raise ConfigError(
            f"model {type(model).__name__} has no prunable layer (looked for {kinds}"
            f" with include={include}, exclude={exclude})"
        )
    return out


def module_of(model: nn.Module, param_name: str) -> nn.Module:
    """The module owning parameter ``param_name`` (``fc1.weight`` -> ``model.fc1``)."""
    return model.get_submodule(param_name.rsplit(".", 1)[0]) if "." in param_name else model
