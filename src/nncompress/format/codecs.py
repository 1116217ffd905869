"""Tensor codecs: how one tensor becomes bytes in a ``.nnc`` file and back, exactly.

A codec is registered by name; ``save`` picks one per tensor. ``decode(encode(t))`` must be
bit-identical to ``t`` for lossless codecs (``lossless = True``); ``save`` checks it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from nncompress.errors import ConfigError
from nncompress.format.records import load_plugins
from nncompress.state import model_state, read_state


@dataclass
class EncodedTensor:
    """One tensor as written: codec name, shape, dtype, JSON metadata and byte sections.

    ``meta["bits"]`` (optional) splits the stored bits by kind, e.g. ``{"weights": ...,
    "index": ..., "other": ...}``; ``meta["stats"]`` carries codec-specific accounting.
    """

    codec: str
    shape: list[int]
    dtype: str
    meta: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, bytes] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        """Bytes of all sections of this tensor."""
        return sum(len(b) for b in self.sections.values())


class TensorCodec:
    """Base class of tensor codecs. Subclasses set ``name`` and implement both methods."""

    name: str = ""
    lossless: bool = True

    def encode(self, tensor: torch.Tensor, **params: Any) -> EncodedTensor:
        raise NotImplementedError

    def decode(self, enc: EncodedTensor) -> torch.Tensor:
        raise NotImplementedError

    def check(self, enc: EncodedTensor) -> None:
        """Validate a stored tensor's metadata and section lengths before ``decode``
        (``enc`` comes from an untrusted file; its name, shape and dtype are already
        validated). Raise ``FormatError`` naming the field; the default checks nothing,
        so a codec that reads metadata overrides it."""


class CodecRegistry:
    """Name -> codec. One default instance, ``CODECS``, holds the built-ins; techniques add
    theirs with ``register_codec``."""

    def __init__(self) -> None:
        self._codecs: dict[str, TensorCodec] = {}

    def register(self, codec: TensorCodec) -> TensorCodec:
        if not codec.name:
            raise ConfigError("a tensor codec needs a non-empty name")
        self._codecs[codec.name] = codec
        return codec

    def get(self, name: str) -> TensorCodec:
        if name not in self._codecs:
            load_plugins()  # codecs registered by techniques (records.PLUGIN_MODULES)
        if name not in self._codecs:
            raise ConfigError(f"unknown tensor codec {name!r}; allowed: {', '.join(sorted(self._codecs))}")
        return self._codecs[name]

    def names(self) -> list[str]:
        return sorted(self._codecs)


CODECS = CodecRegistry()


def register_codec(codec: TensorCodec) -> TensorCodec:
    """Register a codec in the default registry (usable as a class-instance decorator)."""
    return CODECS.register(codec)


def get_codec(name: str) -> TensorCodec:
    """Look up a registered codec by name."""
    return CODECS.get(name)


CodecChoice = str | tuple[str, Mapping[str, Any]]


def set_codec_hints(model: torch.nn.Module, hints: Mapping[str, CodecChoice]) -> None:
    """Attach per-tensor codec choices to a model (a technique's ``finalize`` does this),
    merged with earlier hints. ``save`` uses them unless told otherwise.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 2))
        >>> set_codec_hints(model, {"0.weight": ("deep", {"index_bits": 5})})
        >>> codec_hints(model)
        {'0.weight': ('deep', {'index_bits': 5})}
    """
    state = model_state(model, create=True)
    state.codec_hints = {**state.codec_hints, **hints}


def codec_hints(model: torch.nn.Module) -> dict[str, CodecChoice]:
    """The codec hints attached to ``model`` (empty when none)."""
    return dict(read_state(model).codec_hints)


def normalise_choice(choice: CodecChoice) -> tuple[str, dict[str, Any]]:
    """``"name"`` or ``("name", {params})`` -> ``(name, params)``."""
    if isinstance(choice, str):
        return choice, {}
    if isinstance(choice, (tuple, list)) and len(choice) == 2 and isinstance(choice[0], str):
        return choice[0], dict(choice[1] or {})
    raise ConfigError(f"codec choice {choice!r} must be 'name' or ('name', {{params}})")
