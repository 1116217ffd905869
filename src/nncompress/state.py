"""What nncompress remembers about a model between calls, in one typed place.

Techniques leave facts on a model that later steps need: the architecture it was built
from (so a file can rebuild it), codec choices for ``save``, the low-rank record, the
activation quantizers and their hooks, per-layer quantization summaries, BWNH statistics.
They all live in one :class:`ModelState` held by the model (``model_state(model)``), not in
loose private attributes; ``copy.deepcopy(model)`` copies it with the model, as a copy of
the model should.

Example:
    >>> from torch import nn
    >>> m = nn.Linear(2, 2)
    >>> model_state(m) is None
    True
    >>> model_state(m, create=True).codec_hints["weight"] = "raw"
    >>> model_state(m).codec_hints
    {'weight': 'raw'}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

_ATTR = "_nncompress_state"


@dataclass
class ModelState:
    """Facts techniques record on a model (every field empty by default)."""

    arch: dict[str, Any] | None = None
    """``{"name", "kwargs"}`` of a built-in architecture (``models.build_model``); None for
    a user-defined model."""
    codec_hints: dict[str, Any] = field(default_factory=dict)
    """Tensor name -> codec choice for ``save`` (``format.set_codec_hints``)."""
    lowrank: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Layers replaced by ``decompose``: module path -> method, ranks, geometry."""
    activations: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Activation quantizer specs of a finalized low-bit model: layer -> spec."""
    activation_hooks: list[Any] = field(default_factory=list)
    """The forward pre-hook handles that apply ``activations``."""
    quant_summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per finalized layer: packing format, weight bits, activation bits."""
    bwnh_stats: dict[str, Any] = field(default_factory=dict)
    """BWNH per-layer statistics (``quantize.bwnh``)."""
    huggingface: dict[str, Any] = field(default_factory=dict)
    """A Hugging Face model's sentence-transformers ``pooling`` and ``normalize`` and its
    tokenizer ``files`` (name -> text), set by ``models.huggingface`` and stored in a file."""


def model_state(model: nn.Module, create: bool = False) -> ModelState | None:
    """The model's :class:`ModelState` (None when it has none, unless ``create``)."""
    state = model.__dict__.get(_ATTR)
    if state is None and create:
        state = ModelState()
        model.__dict__[_ATTR] = state
    return state


def read_state(model: nn.Module) -> ModelState:
    """The model's state for reading: its own, or an empty one (not attached) when it has
    none, so ``read_state(m).lowrank`` works on any module."""
    return model_state(model) or ModelState()
