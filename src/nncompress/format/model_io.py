"""``save`` / ``load`` of whole models in the ``.nnc`` format.

The file holds the architecture (for built-in models: registry name and kwargs), every
tensor of the state dict through its tensor codec, and free-form JSON metadata (e.g. the
accuracy measured before saving). ``load`` rebuilds a model whose tensors are
bit-identical to those that were saved; ``save`` verifies that before it writes.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress import __version__
from nncompress.errors import ConfigError, FormatError
from nncompress.format import bfp_codec, builtin_codecs  # noqa: F401  (register the built-in codecs)
from nncompress.format.codecs import (
    CodecChoice,
    EncodedTensor,
    codec_hints,
    get_codec,
    normalise_choice,
)
from nncompress.format.container import pack_container, unpack_container
from nncompress.format.resize import resize_to_state
from nncompress.models.registry import arch_of, build_model
from nncompress.prune.targets import PRUNABLE_TYPES
from nncompress.train.checkpoint import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass
class TensorEntry:
    """What the file says about one tensor."""

    name: str
    codec: str
    shape: list[int]
    dtype: str
    nbytes: int
    meta: dict[str, Any]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclass
class FileInfo:
    """Parsed header of a ``.nnc`` file (no model is built)."""

    path: str
    file_bytes: int
    arch: dict[str, Any] | None
    metadata: dict[str, Any]
    tensors: list[TensorEntry] = field(default_factory=list)
    version: str = ""
    activations: dict[str, Any] = field(default_factory=dict)
    lowrank: dict[str, Any] = field(default_factory=dict)
    removed_blocks: list[str] = field(default_factory=list)


def _weight_names(model: nn.Module) -> set[str]:
    return {f"{n}.weight" for n, m in model.named_modules()
            if isinstance(m, PRUNABLE_TYPES) and getattr(m, "weight", None) is not None}


def plan_codecs(model: nn.Module, codecs: Mapping[str, CodecChoice] | None = None,
                default_weight: CodecChoice = "auto", default_other: CodecChoice = "raw"
                ) -> dict[str, tuple[str, dict[str, Any]]]:
    """Codec per state-dict tensor: explicit ``codecs`` > model hints > defaults
    (``auto`` for Linear/Conv weights, ``raw`` for everything else)."""
    state = model.state_dict()
    explicit = dict(codecs or {})
    unknown = set(explicit) - set(state)
    if unknown:
        raise ConfigError(f"codecs name unknown tensors {sorted(unknown)}; the model has {sorted(state)}")
    hints = codec_hints(model)
    weights = _weight_names(model)
    plan = {}
    for name in state:
        choice = explicit.get(name) or hints.get(name) or (default_weight if name in weights else default_other)
        plan[name] = normalise_choice(choice)
    return plan


def encode_state(model: nn.Module, plan: Mapping[str, tuple[str, dict[str, Any]]],
                 verify: bool = True) -> dict[str, EncodedTensor]:
    """Encode every tensor by its planned codec; with ``verify``, decode it again and
    require equality for lossless codecs."""
    out = {}
    for name, tensor in model.state_dict().items():
        codec_name, params = plan[name]
        enc = get_codec(codec_name).encode(tensor.detach().cpu(), **params)
        if verify:
            back = get_codec(enc.codec).decode(enc)
            if get_codec(enc.codec).lossless and not torch.equal(back, tensor.detach().cpu()):
                raise FormatError(f"codec {enc.codec!r} did not reproduce tensor {name!r} exactly")
        out[name] = enc
    return out


def save(model: nn.Module, path: str | Path, *, codecs: Mapping[str, CodecChoice] | None = None,
         metadata: Mapping[str, Any] | None = None, verify: bool = True) -> FileInfo:
    """Write ``model`` to ``path`` in the ``.nnc`` format (atomically: temp file + rename).

    Args:
        codecs: per-tensor codec choices, e.g. ``{"fc1.weight": ("deep", {"index_bits": 5})}``;
            tensors not named use the model's hints, else ``auto`` (weights) / ``raw``.
        metadata: JSON-able extras stored in the header (accuracy, recipe, ...).
        verify: decode every tensor again before writing and fail on a mismatch.

    Example:
        >>> info = save(model, "lenet.nnc", metadata={"accuracy": 0.98})  # doctest: +SKIP
        >>> info.file_bytes  # doctest: +SKIP
        27342
    """
    encoded = encode_state(model, plan_codecs(model, codecs), verify)
    tensors, sections = [], {}
    for i, (name, enc) in enumerate(encoded.items()):
        keys = {}
        for sec_name, payload in enc.sections.items():
            key = f"t{i}.{sec_name}"
            sections[key] = payload
            keys[sec_name] = key
        tensors.append({"name": name, "codec": enc.codec, "shape": enc.shape, "dtype": enc.dtype,
                        "meta": enc.meta, "sections": keys})
    meta = {"nncompress": __version__, "arch": arch_of(model), "metadata": dict(metadata or {}),
            "tensors": tensors}
    acts = _activation_spec(model)
    if acts:
        meta["activations"] = acts
    lowrank = _lowrank_spec(model)
    if lowrank:
        meta["lowrank"] = lowrank
    blocks = _removed_blocks(model)
    if blocks:
        meta["removed_blocks"] = blocks
    blob = pack_container(meta, sections)
    atomic_write_bytes(path, blob)
    log.info("saved %s (%d bytes, %d tensors)", path, len(blob), len(tensors))
    return _file_info(str(path), len(blob), meta, sections)


def _activation_spec(model: nn.Module) -> dict[str, Any]:
    """Activation quantizers attached by a low-bit method (JSON spec), if any."""
    from nncompress.quantize.api import activation_spec

    return activation_spec(model)


def _lowrank_spec(model: nn.Module) -> dict[str, Any]:
    """Layers replaced by ``nncompress.decompose`` (JSON record), if any."""
    from nncompress.decompose.api import lowrank_spec

    return lowrank_spec(model)


def _removed_blocks(model: nn.Module) -> list[str]:
    """Residual blocks replaced by their shortcut (depth pruning), if any."""
    from nncompress.prune.structured.blocks import removed_blocks

    return removed_blocks(model)


def _file_info(path: str, size: int, meta: dict[str, Any], sections: Mapping[str, bytes]) -> FileInfo:
    entries = []
    try:
        for t in meta["tensors"]:
            nbytes = sum(len(sections[k]) for k in t["sections"].values())
            entries.append(TensorEntry(t["name"], t["codec"], [int(d) for d in t["shape"]],
                                       t["dtype"], nbytes, t["meta"]))
        return FileInfo(path, size, meta.get("arch"), meta.get("metadata", {}), entries,
                        meta.get("nncompress", ""), meta.get("activations") or {},
                        meta.get("lowrank") or {}, [str(n) for n in meta.get("removed_blocks") or []])
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{path}: tensor table is damaged ({exc!r})") from exc


def _read(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such file")
    blob = path.read_bytes()
    container = unpack_container(blob, str(path))
    return container, _file_info(str(path), len(blob), container.meta, container.sections)


def read_info(path: str | Path) -> FileInfo:
    """Parse and verify a ``.nnc`` file's header and checksums without building a model."""
    return _read(path)[1]


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], FileInfo]:
    """Decode every tensor of a ``.nnc`` file into a state dict."""
    container, info = _read(path)
    state = {}
    for t in container.meta["tensors"]:
        enc = EncodedTensor(t["codec"], info_shape(t), t["dtype"], t["meta"],
                            {k: container.sections[v] for k, v in t["sections"].items()})
        tensor = get_codec(enc.codec).decode(enc)
        if list(tensor.shape) != enc.shape:
            raise FormatError(f"{path}: tensor {t['name']!r} decoded to shape {list(tensor.shape)}, "
                              f"header says {enc.shape}")
        state[t["name"]] = tensor
    return state, info


def info_shape(entry: Mapping[str, Any]) -> list[int]:
    return [int(d) for d in entry["shape"]]


def load(path: str | Path, model: nn.Module | None = None) -> nn.Module:
    """Rebuild the model stored in ``path``.

    Built-in architectures are rebuilt from the file; for any other model pass a skeleton
    (``model=MyNet()``), whose tensors are replaced (and Linear/Conv/BatchNorm resized to
    the stored shapes, so structurally pruned models load), and activation quantizers
    stored by a low-bit method are re-attached; layers replaced by ``decompose`` are
    rebuilt from the file's low-rank record. Never unpickles anything.

    Example:
        >>> model = load("lenet.nnc")  # doctest: +SKIP
    """
    state, info = load_state(path)
    if model is None:
        if not info.arch:
            raise ConfigError(f"{path} holds a user-defined model; pass a skeleton: load(path, model=MyNet())")
        model = build_model(info.arch["name"], **info.arch.get("kwargs", {}))
    if info.removed_blocks:  # residual blocks removed by depth pruning: their shells
        try:
            from nncompress.prune.structured.blocks import restore_block_shells

            restore_block_shells(model, info.removed_blocks)
        except ConfigError as exc:
            raise FormatError(f"{path}: {exc}") from exc
    if info.lowrank:
        from nncompress.decompose.api import apply_lowrank_spec

        max_dim = max((max(v.shape, default=1) for v in state.values()), default=1)
        try:  # decomposed layers: rebuild their module tree
            apply_lowrank_spec(model, info.lowrank, max_dim)
        except ConfigError as exc:
            raise FormatError(f"{path}: {exc}") from exc
    expected = set(model.state_dict())
    if expected != set(state):  # checked before resizing, which assumes the same tensors
        raise FormatError(f"{path} does not match the model: missing {sorted(expected - set(state))},"
                          f" unexpected {sorted(set(state) - expected)} (a model whose layers were replaced,"
                          " e.g. by hash_model, loads into a skeleton of the same kind: load(path, model=...))")
    resize_to_state(model, {k: v.shape for k, v in state.items()})
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FormatError(f"{path} does not match the model: missing {missing}, unexpected {unexpected}")
    if info.activations:
        from nncompress.quantize.api import apply_activation_spec

        apply_activation_spec(model, info.activations)
    model.eval()
    return model
