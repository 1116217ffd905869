"""Resize modules in place so that a state dict of other shapes (a structurally pruned
model) loads into a freshly built architecture."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from nncompress.errors import FormatError

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm)
RESIZABLE = (nn.Linear, *_CONV, *_NORM)
"""Modules whose tensors may take the stored shapes (structured pruning); a stored shape
that differs anywhere else (e.g. a hashed layer's buckets) is a damaged file."""


def _set_tensor(module: nn.Module, name: str, shape: torch.Size) -> None:
    old = getattr(module, name)
    new = torch.zeros(shape, dtype=old.dtype, device=old.device)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        module.register_buffer(name, new)


def resize_to_state(model: nn.Module, shapes: Mapping[str, torch.Size]) -> list[str]:
    """Give every tensor of ``model`` the shape recorded in ``shapes`` (state-dict name ->
    shape) and fix the module attributes that describe it (``in_features``,
    ``out_channels``, ``num_features``, depthwise ``groups``...). Returns resized modules.

    Example:
        >>> m = nn.Linear(4, 3)
        >>> resize_to_state(m, {"weight": torch.Size([2, 4]), "bias": torch.Size([2])})
        ['']
        >>> m.out_features
        2
    """
    current = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    changed: dict[str, nn.Module] = {}
    for key, shape in shapes.items():
        if key in current and tuple(current[key].shape) != tuple(shape):
            mod_name, _, attr = key.rpartition(".")
            mod = model.get_submodule(mod_name) if mod_name else model
            if not isinstance(mod, RESIZABLE):
                raise FormatError(f"tensor {key!r} has shape {list(shape)}, the model's "
                                  f"{type(mod).__name__} holds {list(current[key].shape)} and cannot "
                                  f"be resized (only {', '.join(t.__name__ for t in RESIZABLE)} can)")
            _set_tensor(mod, attr, torch.Size(shape))
            changed[mod_name] = mod
    for mod in changed.values():
        if isinstance(mod, nn.Linear):
            mod.out_features, mod.in_features = mod.weight.shape
        elif isinstance(mod, _CONV):
            depthwise = mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels
            mod.out_channels = mod.weight.shape[0]
            if depthwise:
                mod.groups = mod.out_channels
            mod.in_channels = mod.weight.shape[1] * mod.groups
        elif isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            mod.num_features = mod.running_mean.shape[0] if mod.running_mean is not None else mod.weight.shape[0]
        elif isinstance(mod, nn.LayerNorm) and mod.weight is not None:
            mod.normalized_shape = tuple(mod.weight.shape)
    return list(changed)
