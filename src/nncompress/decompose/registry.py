"""Decomposition methods by name: what the ``decompose`` recipe stage's ``method`` picks.

Each technique file of this package registers its method beside its config and entry
point, so the stage (``recipes/decompose_stage.py``) knows none by name::

    register_method("tt", TTConfig, tt_decompose, "L6 Tensor-Train cores of Linear layers")

An entry point takes ``(model, config)`` (plus ``example_input=`` when registered with
``example_input=True``), replaces layers in place and returns a JSON-able report per
replaced layer (``{layer name: {...}}``). ``fixed`` names options that the method's name
sets (``circulant`` is ``StructuredConfig`` with ``kind: circulant``): a recipe may not
give them.

Example:
    >>> from nncompress.decompose import DECOMPOSE_METHODS
    >>> DECOMPOSE_METHODS.get("circulant").fixed
    {'kind': 'circulant'}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.config import from_dict
from nncompress.errors import ConfigError

Apply = Callable[..., dict[str, dict[str, Any]]]


@dataclass(frozen=True)
class DecomposeMethod:
    """One registered method: its recipe name, config dataclass, entry point and summary."""

    name: str
    config: type
    apply: Apply
    doc: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    example_input: bool = False

    def options(self) -> list[str]:
        """The config fields a recipe may give (those the name fixes left out)."""
        return sorted(f.name for f in dataclasses.fields(self.config) if f.init and f.name not in self.fixed)


class DecomposeRegistry:
    """Method name -> :class:`DecomposeMethod`; ``DECOMPOSE_METHODS`` is the default instance."""

    def __init__(self) -> None:
        self._by_name: dict[str, DecomposeMethod] = {}

    def register(self, name: str, config: type, apply: Apply, doc: str, fixed: Mapping[str, Any] | None = None,
                 example_input: bool = False) -> None:
        """Register ``apply(model, config)`` under ``name`` (registering a name again replaces it)."""
        if not isinstance(name, str) or not name:
            raise TypeError(f"decomposition method name {name!r} must be a non-empty string")
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"decomposition method {name!r}: {config!r} is not a dataclass")
        fixed = dict(fixed or {})
        unknown = sorted(set(fixed) - {f.name for f in dataclasses.fields(config)})
        if unknown:
            raise TypeError(f"decomposition method {name!r}: fixed options {unknown} are not fields of "
                            f"{config.__name__}")
        self._by_name[name] = DecomposeMethod(name, config, apply, doc, fixed, example_input)

    def unregister(self, name: str) -> None:
        """Remove a method (tests registering their own)."""
        self._by_name.pop(name, None)

    def names(self) -> list[str]:
        """Method names in registration order."""
        return list(self._by_name)

    def get(self, name: str) -> DecomposeMethod:
        """The method of a name; ``ConfigError`` naming the allowed ones."""
        if name not in self._by_name:
            raise ConfigError(f"method {name!r} not allowed; use one of {self.names()}")
        return self._by_name[name]


DECOMPOSE_METHODS = DecomposeRegistry()
register_method = DECOMPOSE_METHODS.register


def method_config(name: str, options: Mapping[str, Any], where: str = "decompose") -> Any:
    """The config of method ``name`` from a recipe's options (keys and types checked, then
    the config's own checks); options the name fixes are refused by name.

    Example:
        >>> method_config("circulant", {"include": ["fc1"]}).kind
        'circulant'
    """
    spec = DECOMPOSE_METHODS.get(name)
    clash = sorted(set(options) & set(spec.fixed))
    if clash:
        raise ConfigError(f"{where}: key(s) {clash} are set by method {name!r} "
                          f"({', '.join(f'{k}={v!r}' for k, v in spec.fixed.items())}); remove them")
    unknown = sorted(set(options) - set(spec.options()))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown} for method {name!r}; allowed: {spec.options()}")
    return from_dict(spec.config, {**options, **spec.fixed}, where)


def apply_method(model: nn.Module, name: str, config: Any,
                 example_input: torch.Tensor | None = None) -> dict[str, dict[str, Any]]:
    """Run method ``name``'s entry point on ``model`` (in place); its per-layer report.

    Example:
        >>> m = nn.Sequential(nn.Linear(8, 4))
        >>> apply_method(m, "toeplitz", method_config("toeplitz", {}))["0"]["params_after"]
        11
    """
    spec = DECOMPOSE_METHODS.get(name)
    if spec.example_input:
        return spec.apply(model, config, example_input=example_input)
    return spec.apply(model, config)
