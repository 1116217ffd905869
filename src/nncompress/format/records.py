"""Model records: how a technique stores, in a ``.nnc`` header, what it changed in the
module tree, and how ``load`` restores it. ``format`` defines the contract and loops over
the registry; techniques register (``format`` imports no technique package).

A :class:`ModelRecord` is a header field (``key``) with two functions:

* ``capture(model) -> JSON | None``: what to store (``None`` or empty: nothing);
* ``restore(model, value, ctx)``: rebuild it on a freshly built model. ``value`` comes from
  an untrusted file: validate every field before touching a module and raise
  ``ConfigError`` / ``FormatError`` naming the field (``load`` reports it as ``FormatError``
  naming the record). ``ctx`` carries the file's budget and stored tensor shapes.

``phase="structure"`` records run before the stored tensors are copied in (they change
the module tree: removed blocks, low-rank layers); ``phase="behaviour"`` records run after
(activation quantizers). Within a phase, records run by ``order``.

The architecture itself (which model to build) is one :class:`Architectures` provider,
registered by ``nncompress.models``.

Registration happens when the technique's module is imported; ``load_plugins`` imports
the fixed list ``PLUGIN_MODULES`` (never a module a file names), so a fresh process can
load every file nncompress writes.

Example (a technique storing one JSON field):
    >>> register_record(ModelRecord("my_field", capture=lambda m: None,
    ...                             restore=lambda m, v, ctx: None))  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.errors import ConfigError


@dataclass(frozen=True)
class RestoreContext:
    """What a record's ``restore`` may need besides its value."""

    source: str
    """The file (for messages)."""
    budget: int
    """Most elements the file may declare (build large skeletons on the meta device first)."""
    shapes: dict[str, torch.Size]
    """Stored tensor name -> shape."""

    @property
    def max_dim(self) -> int:
        """The largest dimension of any stored tensor (a genuine record's sizes are <= it)."""
        return max((max(s, default=1) for s in self.shapes.values()), default=1)


@dataclass(frozen=True)
class ModelRecord:
    """One header field owned by a technique (see the module docstring)."""

    key: str
    capture: Callable[[nn.Module], Any]
    restore: Callable[[nn.Module, Any, RestoreContext], None]
    phase: str = "structure"
    order: int = 0
    kind: type = dict
    """JSON type of the field (``dict`` or ``list``), checked by the header schema."""


@dataclass(frozen=True)
class Architectures:
    """How models name their architecture in a file and are rebuilt from it."""

    capture: Callable[[nn.Module], dict[str, Any] | None]
    """``model -> {"name": ..., "kwargs": {...}}`` or None for a user-defined model."""
    build: Callable[..., nn.Module]
    """``build(name, **kwargs) -> model`` (raises ``ConfigError`` for bad arguments)."""
    input_shape: Callable[[dict[str, Any] | None], list[int] | None]
    """The per-sample input shape of an architecture record, or None."""


_RECORDS: dict[str, ModelRecord] = {}
_ARCH: list[Architectures] = []
PHASES = ("structure", "behaviour")
RESERVED = {"nncompress", "arch", "metadata", "tensors", "input_shape", "signature"}

PLUGIN_MODULES = (
    "nncompress.models",
    "nncompress.quantize.codecs",
    "nncompress.quantize.bfp_codec",
    "nncompress.quantize.rowblock_codec",
    "nncompress.quantize.tier_codec",
    "nncompress.quantize.api",
    "nncompress.quantize.hashed_arch",
    "nncompress.decompose.api",
    "nncompress.prune.structured.blocks",
)
"""Modules that register codecs, records or architectures; ``load_plugins`` imports them
(a fixed list: nothing a file names is ever imported)."""


def load_plugins() -> None:
    """Import every module of ``PLUGIN_MODULES`` (each registers what it owns)."""
    for module in PLUGIN_MODULES:
        importlib.import_module(module)


def register_record(record: ModelRecord) -> ModelRecord:
    """Add a technique's record (replacing one of the same key)."""
    if not record.key or record.key in RESERVED:
        raise ConfigError(f"record key {record.key!r} is empty or reserved ({sorted(RESERVED)})")
    if record.phase not in PHASES:
        raise ConfigError(f"record phase {record.phase!r} not allowed; use one of {PHASES}")
    _RECORDS[record.key] = record
    return record


def records(phase: str | None = None) -> list[ModelRecord]:
    """Registered records (of one phase), in restore order."""
    return sorted((r for r in _RECORDS.values() if phase is None or r.phase == phase),
                  key=lambda r: (PHASES.index(r.phase), r.order, r.key))


def register_architectures(provider: Architectures) -> None:
    """Set the architecture provider (``nncompress.models`` registers its registry)."""
    _ARCH[:] = [provider]


def architectures() -> Architectures:
    """The architecture provider (importing the plug-ins when none is registered yet)."""
    if not _ARCH:
        load_plugins()
    return _ARCH[0]
