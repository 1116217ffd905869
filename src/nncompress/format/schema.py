"""The ``.nnc`` header schema and the resource limits of ``load``.

A header is untrusted input: :func:`check_header` validates every field ``save`` writes
(types, ranges, required keys, section references) before anything is decoded or built,
and raises ``FormatError`` naming the tensor or record and the field. The field helpers
(:func:`need_int`, :func:`need_choice`, ...) are what codecs and records use to validate
their own metadata.

Resource limits: a file may declare at most :func:`param_budget` elements (stored tensors,
and the parameters and buffers of the model it builds): ``max(2**24, 256 x file bytes)``
unless the caller passes ``max_params``. 256 elements per stored byte is 1/8 bit per
weight, a compression ratio of 1024x over fp32, beyond any genuine file (Deep Compression
reaches 35-50x); a legitimate giant passes ``max_params=`` / ``--max-params``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from nncompress.errors import ConfigError, FormatError

MIN_BUDGET = 2**24
"""Elements any file may declare whatever its size (64 MB of fp32)."""
ELEMENTS_PER_BYTE = 256
"""Declared elements allowed per stored byte beyond ``MIN_BUDGET``."""
MAX_DIMS = 8
MAX_NAME = 512
TOP_KEYS = {"nncompress", "arch", "metadata", "tensors", "input_shape", "signature"}
"""Header fields of the format itself; techniques' records add theirs (``records.py``)."""
TENSOR_KEYS = {"name", "codec", "shape", "dtype", "meta", "sections"}
DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
          "uint8", "bool")


def param_budget(file_bytes: int, max_params: int | None = None) -> int:
    """Elements a file of ``file_bytes`` bytes may declare: ``max_params`` when given,
    else ``max(MIN_BUDGET, ELEMENTS_PER_BYTE * file_bytes)``.

    Example:
        >>> param_budget(1000) == 2**24, param_budget(10**6), param_budget(10, max_params=5)
        (True, 256000000, 5)
    """
    if max_params is not None:
        if isinstance(max_params, bool) or not isinstance(max_params, int) or max_params < 1:
            raise ConfigError(f"max_params={max_params!r} is not allowed; use a positive int")
        return max_params
    return max(MIN_BUDGET, ELEMENTS_PER_BYTE * int(file_bytes))


def need_int(obj: Mapping[str, Any], key: str, lo: int, hi: int, where: str,
             default: int | None = None) -> int:
    """``obj[key]`` as an int in ``[lo, hi]`` (booleans and floats refused), else
    ``FormatError`` naming ``where`` and ``key``; ``default`` when the key is absent and a
    default is given.

    Example:
        >>> need_int({"bits": 4}, "bits", 1, 16, "tensor 'w'")
        4
    """
    if key not in obj:
        if default is not None:
            return default
        raise FormatError(f"{where}: field {key!r} is missing")
    value = obj[key]
    if type(value) is not int or not lo <= value <= hi:
        raise FormatError(f"{where}: field {key!r} = {_short(value)} is not an integer in {lo}..{hi}")
    return value


def need_float(obj: Mapping[str, Any], key: str, where: str, optional: bool = False) -> float | None:
    """``obj[key]`` as a finite number (ints allowed), or None when optional and absent/null."""
    value = obj.get(key)
    if value is None and optional:
        return None
    if type(value) not in (int, float) or not math.isfinite(value) or abs(value) > 1e38:
        raise FormatError(f"{where}: field {key!r} = {_short(value)} is not a finite number")
    return float(value)


def need_bool(obj: Mapping[str, Any], key: str, where: str, default: bool | None = None) -> bool:
    """``obj[key]`` as a JSON boolean."""
    if key not in obj and default is not None:
        return default
    value = obj.get(key)
    if type(value) is not bool:
        raise FormatError(f"{where}: field {key!r} = {_short(value)} is not true or false")
    return value


def need_choice(obj: Mapping[str, Any], key: str, choices: Iterable[Any], where: str,
                default: Any = None) -> Any:
    """``obj[key]`` if it is one of ``choices`` (compared with type: ``1`` is not ``True``)."""
    choices = tuple(choices)
    if key not in obj and default is not None:
        return default
    value = obj.get(key)
    if not any(type(value) is type(c) and value == c for c in choices):
        raise FormatError(f"{where}: field {key!r} = {_short(value)} is not one of {list(choices)}")
    return value


def need_type(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    """``value`` if it is a ``kind`` (``bool`` is not accepted for ``int``)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if type(value) not in kinds:
        names = " or ".join(k.__name__ for k in kinds)
        raise FormatError(f"{where} must be {names}, got {_short(value)}")
    return value


def need_sections(sections: Mapping[str, bytes], names: Iterable[str], where: str) -> None:
    """Exactly the byte sections ``names`` (a codec's own layout)."""
    want = set(names)
    if set(sections) != want:
        raise FormatError(f"{where}: sections {sorted(sections)} do not match the codec's "
                          f"{sorted(want)}")


def need_length(data: bytes, expected: int, where: str) -> None:
    """A section of exactly ``expected`` bytes."""
    if len(data) != expected:
        raise FormatError(f"{where}: {len(data)} bytes stored, {expected} expected")


def check_shape(shape: Any, where: str, max_elements: int) -> list[int]:
    """A tensor shape: a list of at most ``MAX_DIMS`` non-negative ints whose product is at
    most ``max_elements``."""
    if type(shape) is not list or len(shape) > MAX_DIMS:
        raise FormatError(f"{where}: shape {_short(shape)} is not a list of at most {MAX_DIMS} ints")
    for d in shape:
        if type(d) is not int or not 0 <= d <= max_elements:
            raise FormatError(f"{where}: shape {_short(shape)} has a bad dimension {_short(d)}")
    if math.prod(shape) > max_elements:
        raise FormatError(f"{where}: shape {shape} declares {math.prod(shape):,} elements, more "
                          f"than the {max_elements:,} this file may declare (pass max_params= "
                          "/ --max-params to load a larger model)")
    return shape


def _accounting(meta: Mapping[str, Any], where: str) -> None:
    """The codec-independent accounting fields ``nncompress info`` reads."""
    for key in ("bits", "stats"):
        if key in meta:
            table = need_type(meta[key], dict, f"{where}: field {key!r}")
            for k, v in table.items():
                if type(v) is not int or not 0 <= v <= 2**62:
                    raise FormatError(f"{where}: field {key}.{k} = {_short(v)} is not a count")
    for key in ("entries", "nnz"):
        if key in meta:
            need_int(meta, key, 0, 2**62, where)


def check_header(meta: Any, sections: Mapping[str, bytes], source: str, budget: int,
                 record_kinds: Mapping[str, type] | None = None) -> None:
    """Validate a header against the schema ``save`` writes: the top-level keys, every
    tensor entry (name, codec, shape, dtype, metadata types, section references: each
    section used by exactly one tensor) and the JSON type of each technique record
    (``record_kinds``: header field -> ``dict`` or ``list``). The total
    of declared tensor elements must fit ``budget``. Codec- and record-specific fields are
    checked by their owners before they decode or build."""
    if not isinstance(meta, dict):
        raise FormatError(f"{source}: header meta is not an object")
    record_kinds = dict(record_kinds or {})
    unknown = sorted(set(meta) - TOP_KEYS - set(record_kinds))
    if unknown:
        raise FormatError(f"{source}: unknown header field(s) {[_short(k) for k in unknown]}; "
                          f"allowed: {sorted(TOP_KEYS | set(record_kinds))}")
    if "nncompress" in meta and (type(meta["nncompress"]) is not str or len(meta["nncompress"]) > 64):
        raise FormatError(f"{source}: field 'nncompress' (writer version) is not a short string")
    for key, kind in (("metadata", dict), *record_kinds.items()):
        if key in meta:
            need_type(meta[key], kind, f"{source}: field {key!r}")
    if meta.get("arch") is not None:
        arch = need_type(meta["arch"], dict, f"{source}: field 'arch'")
        if set(arch) - {"name", "kwargs"} or type(arch.get("name")) is not str:
            raise FormatError(f"{source}: architecture record {_short(arch)} must be "
                              "{'name': str, 'kwargs': {...}}")
        need_type(arch.get("kwargs", {}), dict, f"{source}: architecture kwargs")
    if "input_shape" in meta:
        shape = meta["input_shape"]
        if type(shape) is not list or not 1 <= len(shape) <= 5 or any(type(d) is not int or not 1 <= d <= 2**16
                                                                      for d in shape):
            raise FormatError(f"{source}: input_shape {_short(shape)} is not a list of 1..5 ints in 1..65536")
        if math.prod(shape) > 2**24:
            raise FormatError(f"{source}: input_shape {shape} has more than 2**24 values")
    tensors = need_type(meta.get("tensors"), list, f"{source}: field 'tensors'")
    names: set[str] = set()
    used: set[str] = set()
    total = 0
    for i, t in enumerate(tensors):
        if not isinstance(t, dict) or set(t) != TENSOR_KEYS:
            raise FormatError(f"{source}: tensor entry {i} must have exactly the keys {sorted(TENSOR_KEYS)}")
        name = t["name"]
        if type(name) is not str or not 0 < len(name) <= MAX_NAME or name in names:
            raise FormatError(f"{source}: tensor entry {i} has a bad or repeated name {_short(name)}")
        names.add(name)
        where = f"{source}: tensor {name!r}"
        need_type(t["codec"], str, f"{where}: field 'codec'")
        if t["dtype"] not in DTYPES or type(t["dtype"]) is not str:
            raise FormatError(f"{where}: dtype {_short(t['dtype'])} is not one of {list(DTYPES)}")
        total += math.prod(check_shape(t["shape"], where, budget))
        if total > budget:
            raise FormatError(f"{source}: the tensors declare more than {budget:,} elements in all "
                              "(pass max_params= / --max-params to load a larger model)")
        need_type(t["meta"], dict, f"{where}: field 'meta'")
        _accounting(t["meta"], where)
        refs = need_type(t["sections"], dict, f"{where}: field 'sections'")
        for key, ref in refs.items():
            if type(ref) is not str or ref not in sections:
                raise FormatError(f"{where}: section {key!r} refers to {_short(ref)}, which the file lacks")
            if ref in used:
                raise FormatError(f"{where}: section {ref!r} is used by two tensors")
            used.add(ref)
    orphans = sorted(set(sections) - used)
    if orphans:
        raise FormatError(f"{source}: sections {[_short(o) for o in orphans[:5]]} belong to no tensor")


def _short(value: Any, limit: int = 60) -> str:
    """``repr`` cut to ``limit`` characters (a hostile value can be megabytes long)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."
