"""Plug-in helpers for techniques that replace layers by a module of their own (product
quantization, Tensor-Train, Toeplitz, ternary decomposition, local binary convolution,
ternary activations): the model record that stores each replaced layer's constructor
arguments and rebuilds the module on load, and the ``symbols`` tensor codec that stores an
integer-valued tensor (codeword indices, ternary codes) in ``ceil(log2(alphabet))`` bits
per entry or Huffman-coded, whichever is smaller.

A replacement module class implements

* ``spec(self) -> dict``: JSON-able constructor arguments (ints, floats, bools, lists);
and the technique gives a ``from_spec(spec, where) -> nn.Module`` function: validate a
spec from an untrusted file (``ConfigError`` naming ``where`` and the field) and build the
module with placeholder tensors, which ``load`` then overwrites from the file.

``register_layer_record(key, types, from_spec)`` registers a ``format`` model record.

Example:
    >>> register_layer_record("my_layers", (MyLayer,), MyLayer.from_spec)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from nncompress.coding.streams import pack_stream, unpack_stream
from nncompress.errors import ConfigError, FormatError
from nncompress.format.codecs import EncodedTensor, TensorCodec, register_codec
from nncompress.format.records import ModelRecord, RestoreContext, register_record
from nncompress.format.schema import need_choice, need_int
from nncompress.modules import set_submodule

MAX_SIZE = 2**24
"""Largest single size (features, channels, codebook size, rank) a record may declare."""


def spec_int(spec: Mapping[str, Any], key: str, where: str, lo: int = 1, hi: int = MAX_SIZE) -> int:
    """``spec[key]`` as an int in ``[lo, hi]`` (booleans refused), else ``ConfigError``.

    Example:
        >>> spec_int({"in": 4}, "in", "fc1")
        4
    """
    value = spec.get(key) if isinstance(spec, Mapping) else None
    if type(value) is not int or not lo <= value <= hi:
        raise ConfigError(f"{where}: field {key!r} = {str(value)[:40]} is not an integer in {lo}..{hi}")
    return value


def spec_ints(spec: Mapping[str, Any], key: str, where: str, lo: int = 1, hi: int = MAX_SIZE,
              length: int | None = None) -> list[int]:
    """``spec[key]`` as a non-empty list (of ``length``, if given) of ints in ``[lo, hi]``."""
    value = spec.get(key) if isinstance(spec, Mapping) else None
    if (not isinstance(value, list) or not value or len(value) > 16
            or (length is not None and len(value) != length)
            or any(type(v) is not int or not lo <= v <= hi for v in value)):
        raise ConfigError(f"{where}: field {key!r} = {str(value)[:60]} is not a list of "
                          f"{length or '1..16'} integers in {lo}..{hi}")
    return list(value)


def spec_bool(spec: Mapping[str, Any], key: str, where: str) -> bool:
    """``spec[key]`` as a bool, else ``ConfigError``."""
    value = spec.get(key) if isinstance(spec, Mapping) else None
    if type(value) is not bool:
        raise ConfigError(f"{where}: field {key!r} = {str(value)[:40]} is not a bool")
    return value


def spec_float(spec: Mapping[str, Any], key: str, where: str, lo: float = 0.0, hi: float = 1.0) -> float:
    """``spec[key]`` as a finite number in ``[lo, hi]``, else ``ConfigError``."""
    value = spec.get(key) if isinstance(spec, Mapping) else None
    if type(value) not in (int, float) or not math.isfinite(value) or not lo <= value <= hi:
        raise ConfigError(f"{where}: field {key!r} = {str(value)[:40]} is not a number in [{lo}, {hi}]")
    return float(value)


FromSpec = Callable[[Any, str], nn.Module]


def capture_layers(model: nn.Module, types: tuple[type, ...]) -> dict[str, dict[str, Any]] | None:
    """``{module path: spec}`` of every module of ``types`` in ``model`` (None when none)."""
    found = {name: m.spec() for name, m in model.named_modules() if isinstance(m, types)}
    return found or None


def restore_layers(model: nn.Module, value: Any, ctx: RestoreContext | None, from_spec: FromSpec,
                   key: str) -> None:
    """Put a placeholder ``from_spec(spec, where)`` at every recorded path of ``model``: every
    spec validated, all built first on the meta device and counted against the file's
    budget (``ctx.budget``), then built for real in the replaced layer's dtype and device."""
    if not isinstance(value, dict) or len(value) > 4096:
        raise ConfigError(f"{key} record {str(value)[:80]} is not an object of at most 4096 layers")
    with torch.device("meta"):
        total = 0
        for name, spec in value.items():
            mod = from_spec(spec, f"{key} layer {str(name)[:80]!r}")
            total += sum(t.numel() for t in (*mod.parameters(), *mod.buffers()))
    if ctx is not None and total > ctx.budget:
        raise ConfigError(f"{key} record declares {total:,} elements, more than the {ctx.budget:,} allowed")
    for name, spec in value.items():
        try:
            old = model.get_submodule(str(name))
        except AttributeError:
            raise ConfigError(f"{key} record names layer {str(name)[:80]!r}, which the model lacks") from None
        new = from_spec(spec, f"{key} layer {str(name)[:80]!r}")
        p = next(old.parameters(), None)
        if p is not None:
            new = new.to(p.device, p.dtype)
        set_submodule(model, str(name), new)


def register_layer_record(key: str, types: tuple[type, ...], from_spec: FromSpec, order: int = 20) -> ModelRecord:
    """Register the ``format`` record ``key`` storing every module of ``types`` and
    rebuilding it with ``from_spec`` (a ``structure`` record: it runs before the stored
    tensors are copied in)."""
    return register_record(ModelRecord(
        key, capture=lambda m: capture_layers(m, types),
        restore=lambda m, v, ctx: restore_layers(m, v, ctx, from_spec, key),
        phase="structure", order=order, kind=dict))


# ---- the "symbols" codec: integer-valued tensors in few bits -------------------------------------

SYMBOL_DTYPES = ("float32", "int64", "int32", "int16", "int8", "uint8")
MAX_ALPHABET = 2**16


class SymbolsCodec(TensorCodec):
    """Integer-valued tensor (of a dtype in ``SYMBOL_DTYPES``) stored as ``value - low`` in
    ``width = ceil(log2(alphabet))`` bits each, or Huffman-coded when smaller (``huffman``:
    ``"auto"`` | ``"yes"`` | ``"no"``). Lossless.

    Example:
        >>> enc = SymbolsCodec().encode(torch.tensor([-1., 0., 1., 1.]))
        >>> enc.meta["low"], enc.meta["alphabet"], SymbolsCodec().decode(enc).tolist()
        (-1, 3, [-1.0, 0.0, 1.0, 1.0])
    """

    name = "symbols"
    lossless = True

    def encode(self, tensor: torch.Tensor, huffman: str = "auto", **_: Any) -> EncodedTensor:
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in SYMBOL_DTYPES:
            raise ConfigError(f"symbols codec: dtype {dtype!r} not allowed; use one of {SYMBOL_DTYPES}")
        t = tensor.detach().cpu().reshape(-1)
        if t.numel() and not torch.equal(t, t.round()):
            raise ConfigError("symbols codec: the tensor holds non-integer values")
        v = t.to(torch.int64).numpy()
        low = int(v.min()) if v.size else 0
        alphabet = int(v.max()) - low + 1 if v.size else 1
        if alphabet > MAX_ALPHABET:
            raise ConfigError(f"symbols codec: {alphabet} distinct levels, more than {MAX_ALPHABET}")
        width = max(1, math.ceil(math.log2(max(alphabet, 2))))
        data, kind = pack_stream((v - low).astype(np.int64), max(alphabet, 2), width, huffman)
        meta = {"low": low, "alphabet": alphabet, "width": width, "stream": kind,
                "bits": {"weights": 8 * len(data), "index": 0, "other": 0}}
        return EncodedTensor(self.name, list(tensor.shape), dtype, meta, {"codes": data})

    def check(self, enc: EncodedTensor) -> None:
        where = "symbols codec"
        if enc.dtype not in SYMBOL_DTYPES:
            raise FormatError(f"{where}: dtype {enc.dtype!r} not allowed; use one of {SYMBOL_DTYPES}")
        need_int(enc.meta, "low", -(2**31), 2**31, where)
        alphabet = need_int(enc.meta, "alphabet", 1, MAX_ALPHABET, where)
        width = need_int(enc.meta, "width", 1, 16, where)
        if width != max(1, math.ceil(math.log2(max(alphabet, 2)))):
            raise FormatError(f"{where}: width {width} does not fit alphabet {alphabet}")
        kind = need_choice(enc.meta, "stream", ("fixed", "huffman"), where)
        if set(enc.sections) != {"codes"}:
            raise FormatError(f"{where}: sections {sorted(enc.sections)} must be exactly ['codes']")
        count = math.prod(enc.shape)
        if kind == "fixed" and len(enc.sections["codes"]) != (count * width + 7) // 8:
            raise FormatError(f"{where}: codes hold {len(enc.sections['codes'])} bytes, "
                              f"{(count * width + 7) // 8} expected")

    def decode(self, enc: EncodedTensor) -> torch.Tensor:
        count = math.prod(enc.shape)
        sym = unpack_stream(enc.sections["codes"], enc.meta["stream"], enc.meta["width"], count)
        if sym.size != count or (sym.size and int(sym.max()) >= enc.meta["alphabet"]):
            raise FormatError("symbols codec: a code lies outside the alphabet")
        values = torch.from_numpy(sym.astype(np.int64) + enc.meta["low"])
        return values.to(getattr(torch, enc.dtype)).reshape(enc.shape)


SYMBOLS = register_codec(SymbolsCodec())
