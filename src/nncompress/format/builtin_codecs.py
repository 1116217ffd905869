"""Built-in tensor codecs: ``raw`` (any dtype, exact), ``fp16``/``bf16`` (lossy casts),
``int8`` (lossy: int8 codes times a power-of-two scale),
``sparse`` (relative indices + fp32 values), ``deep`` (Deep Compression: relative indices
+ shared-weight codebook indices, each stream Huffman-coded when that is smaller) and
``auto`` (the smallest exact one)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from nncompress.coding.sparse_index import decode_relative, encode_relative
from nncompress.coding.streams import pack_stream, unpack_stream
from nncompress.errors import ConfigError, FormatError
from nncompress.format.codecs import EncodedTensor, TensorCodec, register_codec
from nncompress.format.schema import need_choice, need_int, need_length, need_sections

_DTYPES = {str(d).removeprefix("torch."): d for d in (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.int16, torch.int8, torch.uint8, torch.bool)}


def dtype_from_name(name: str) -> torch.dtype:
    """``'float32'`` -> ``torch.float32`` (only plain numeric dtypes are allowed)."""
    if name not in _DTYPES:
        raise FormatError(f"unsupported dtype {name!r} in file; allowed: {sorted(_DTYPES)}")
    return _DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ConfigError(f"tensors of dtype {dtype} cannot be stored; allowed: {sorted(_DTYPES)}")
    return name


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    """Little-endian bytes of a tensor, any supported dtype."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensor_from_bytes(data: bytes, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`tensor_to_bytes`, with a size check."""
    n = math.prod(shape)
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if len(data) != n * itemsize:
        raise FormatError(f"tensor of shape {shape} and dtype {dtype} needs {n * itemsize} bytes, "
                          f"file has {len(data)}")
    if n == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype).reshape(shape).clone()


class RawCodec(TensorCodec):
    """Stores the tensor's bytes as they are (fp32 weights, int buffers, ...)."""

    name = "raw"

    def encode(self, tensor, **params):
        _no_params(self.name, params)
        data = tensor_to_bytes(tensor)
        return EncodedTensor(self.name, list(tensor.shape), dtype_name(tensor.dtype),
                             {"bits": {"weights": 8 * len(data)}}, {"data": data})

    def check(self, enc):
        need_sections(enc.sections, ["data"], "codec 'raw'")
        itemsize = torch.empty(0, dtype=dtype_from_name(enc.dtype)).element_size()
        need_length(enc.sections["data"], math.prod(enc.shape) * itemsize, "codec 'raw': section 'data'")

    def decode(self, enc):
        return tensor_from_bytes(enc.sections["data"], dtype_from_name(enc.dtype), enc.shape)


class CastCodec(TensorCodec):
    """Stores a float tensor in a 16-bit float type; decodes to the original dtype.
    Lossy unless the values are representable (``save`` reports it)."""

    lossless = False

    def __init__(self, name: str, storage: torch.dtype):
        self.name, self.storage = name, storage

    def encode(self, tensor, **params):
        _no_params(self.name, params)
        if not tensor.is_floating_point():
            raise ConfigError(f"codec {self.name!r} needs a float tensor, got {tensor.dtype}")
        data = tensor_to_bytes(tensor.to(self.storage))
        return EncodedTensor(self.name, list(tensor.shape), dtype_name(tensor.dtype),
                             {"bits": {"weights": 8 * len(data)}}, {"data": data})

    def check(self, enc):
        need_sections(enc.sections, ["data"], f"codec {self.name!r}")
        if not dtype_from_name(enc.dtype).is_floating_point:
            raise FormatError(f"codec {self.name!r}: dtype {enc.dtype!r} is not a float dtype")
        need_length(enc.sections["data"], 2 * math.prod(enc.shape), f"codec {self.name!r}: section 'data'")

    def decode(self, enc):
        t = tensor_from_bytes(enc.sections["data"], self.storage, enc.shape)
        return t.to(dtype_from_name(enc.dtype))


class Int8Codec(TensorCodec):
    """Stores a float tensor as int8 codes times a power-of-two scale ``2^exponent``, the
    smallest with every ``|t| / scale <= 127`` (biases, BatchNorm: 1 byte per value). Lossy,
    but idempotent: a decoded tensor encodes to the same codes and exponent, so a model
    rounded through it (the encode stage's ``other: int8``) is stored exactly."""

    name = "int8"
    lossless = False

    def encode(self, tensor, **params):
        _no_params(self.name, params)
        if not tensor.is_floating_point():
            raise ConfigError(f"codec {self.name!r} needs a float tensor, got {tensor.dtype}")
        t = tensor.detach().cpu().to(torch.float64)
        if not torch.isfinite(t).all():
            raise ConfigError(f"codec {self.name!r} cannot store NaN/inf values")
        peak = float(t.abs().max()) if t.numel() else 0.0
        exponent = math.ceil(math.log2(peak / 127)) if peak > 0 else 0
        codes = torch.round(t * 2.0**-exponent).clamp(-127, 127).to(torch.int8)
        data = tensor_to_bytes(codes)
        return EncodedTensor(self.name, list(tensor.shape), dtype_name(tensor.dtype),
                             {"exponent": exponent, "bits": {"weights": 8 * len(data)}}, {"data": data})

    def check(self, enc):
        need_sections(enc.sections, ["data"], "codec 'int8'")
        if not dtype_from_name(enc.dtype).is_floating_point:
            raise FormatError(f"codec 'int8': dtype {enc.dtype!r} is not a float dtype")
        need_int(enc.meta, "exponent", -160, 121, "codec 'int8'")
        need_length(enc.sections["data"], math.prod(enc.shape), "codec 'int8': section 'data'")

    def decode(self, enc):
        exponent = need_int(enc.meta, "exponent", -160, 121, "codec 'int8'")
        codes = tensor_from_bytes(enc.sections["data"], torch.int8, enc.shape)
        return (codes.to(torch.float64) * 2.0**exponent).to(dtype_from_name(enc.dtype))


def _no_params(name: str, params: dict[str, Any]) -> None:
    if params:
        raise ConfigError(f"codec {name!r} takes no parameters, got {sorted(params)}")


def default_index_bits(shape: list[int]) -> int:
    """Deep Compression's relative-index width: 5 bits for FC (2-D), 8 for conv."""
    return 5 if len(shape) <= 2 else 8


def _stream_section(symbols: np.ndarray, alphabet: int, width: int, huff: str) -> tuple[bytes, str, int]:
    """``pack_stream`` plus the stored bits."""
    data, kind = pack_stream(symbols, alphabet, width, huff)
    return data, kind, 8 * len(data)


class SparseCodec(TensorCodec):
    """Nonzeros as relative indices (``index_bits`` bits each, filler entries where a gap
    exceeds 2^index_bits) plus their values: fp32 (``sparse``) or indices into a codebook
    of the distinct nonzero values (``deep``, after k-means weight sharing).

    Params: ``index_bits`` (1..16, default 5 FC / 8 conv, or ``"auto"``: try 2..10 and
    keep the smallest encoding; with Huffman-coded gaps a wider field costs little while
    every filler entry also costs a value symbol), ``huffman`` ('auto', 'yes', 'no'), and
    for ``deep`` ``max_codebook`` (default 65536).
    """

    def __init__(self, name: str, shared: bool):
        self.name, self.shared = name, shared

    def encode(self, tensor, index_bits=None, huffman="auto", max_codebook=65536, **params):
        _no_params(self.name, params)
        if tensor.dtype != torch.float32:
            raise ConfigError(f"codec {self.name!r} stores float32 tensors, got {tensor.dtype}")
        if huffman not in ("auto", "yes", "no"):
            raise ConfigError(f"huffman={huffman!r} not allowed; use 'auto', 'yes' or 'no'")
        shape = list(tensor.shape)
        if index_bits == "auto":
            return min((self.encode(tensor, b, huffman, max_codebook) for b in range(2, 11)),
                       key=lambda e: e.nbytes)
        if isinstance(index_bits, str):
            raise ConfigError(f"index_bits={index_bits!r} not allowed; use 1..16 or 'auto'")
        index_bits = default_index_bits(shape) if index_bits is None else int(index_bits)
        if not 1 <= index_bits <= 16:
            raise ConfigError(f"index_bits={index_bits} is out of range; allowed: 1..16")
        flat = tensor.detach().cpu().reshape(-1).numpy()
        if not np.isfinite(flat).all():
            raise ConfigError(f"codec {self.name!r} cannot store NaN/inf values")
        pos = np.flatnonzero(flat)  # (nnz,)
        rel = encode_relative(pos, index_bits)
        entries = int(rel.gaps.size)
        values = flat[pos]
        sections: dict[str, bytes] = {}
        meta: dict[str, Any] = {"index_bits": index_bits, "entries": entries, "nnz": int(pos.size)}
        gap_bytes, gap_kind, gap_bits = _stream_section(rel.gaps, 1 << index_bits, index_bits, huffman)
        sections["gaps"] = gap_bytes
        meta["gaps"] = gap_kind
        if self.shared:
            codebook = np.unique(values).astype(np.float32)  # sorted distinct nonzeros
            if codebook.size > max_codebook:
                raise ConfigError(
                    f"tensor has {codebook.size} distinct nonzero values; codec 'deep' allows "
                    f"at most max_codebook={max_codebook}: share weights (k-means) first")
            symbols = np.full(entries, codebook.size, dtype=np.int64)  # filler symbol = K
            symbols[~rel.is_filler] = np.searchsorted(codebook, values)
            alphabet = codebook.size + int(rel.is_filler.any())
            value_width = max(1, math.ceil(math.log2(max(alphabet, 2))))
            val_bytes, val_kind, val_bits = _stream_section(symbols, alphabet, value_width, huffman)
            half = codebook.astype(np.float16)  # half the bytes when that is lossless
            exact = bool(np.array_equal(half.astype(np.float32), codebook))
            sections["codebook"] = (half if exact else codebook).tobytes()
            meta.update(values=val_kind, value_bits=value_width, codebook_size=int(codebook.size),
                        alphabet=alphabet, codebook_dtype="float16" if exact else "float32")
            pq_weight_bits = entries * value_width
        else:
            full = np.zeros(entries, dtype=np.float32)
            full[~rel.is_filler] = values
            val_bytes, val_bits = full.tobytes(), 32 * entries
            meta["values"] = "fp32"
            pq_weight_bits = 32 * entries
        sections["values"] = val_bytes
        meta["bits"] = {"weights": val_bits, "index": gap_bits,
                        "other": 8 * len(sections.get("codebook", b""))}
        meta["stats"] = {"weight_bits_pq": pq_weight_bits, "index_bits_pq": entries * index_bits,
                         "weight_bits_pqh": val_bits, "index_bits_pqh": gap_bits}
        return EncodedTensor(self.name, shape, "float32", meta, sections)

    def check(self, enc):
        m, s, where = enc.meta, enc.sections, f"codec {self.name!r}"
        if enc.dtype != "float32":
            raise FormatError(f"{where}: dtype {enc.dtype!r}; this codec stores float32 only")
        n = math.prod(enc.shape)
        index_bits = need_int(m, "index_bits", 1, 16, where)
        entries = need_int(m, "entries", 0, n + n // (1 << index_bits) + 1, where)
        need_int(m, "nnz", 0, min(n, entries), where, default=0)
        need_choice(m, "gaps", ("fixed", "huffman"), where)
        if self.shared:
            need_sections(s, ["gaps", "values", "codebook"], where)
            size = need_int(m, "codebook_size", 0, 65536, where)
            alphabet = need_int(m, "alphabet", size, size + 1, where)
            need_int(m, "value_bits", max(1, math.ceil(math.log2(max(alphabet, 2)))), 17, where)
            need_choice(m, "values", ("fixed", "huffman"), where)
            cb = need_choice(m, "codebook_dtype", ("float32", "float16"), where, default="float32")
            need_length(s["codebook"], size * (2 if cb == "float16" else 4), f"{where}: section 'codebook'")
        else:
            need_sections(s, ["gaps", "values"], where)
            need_choice(m, "values", ("fp32",), where)
            need_length(s["values"], 4 * entries, f"{where}: section 'values'")

    def decode(self, enc):
        m, s = enc.meta, enc.sections
        self.check(enc)
        entries, index_bits = int(m["entries"]), int(m["index_bits"])
        n = math.prod(enc.shape)
        gaps = unpack_stream(s["gaps"], m["gaps"], index_bits, entries)
        if gaps.size and (gaps.min() < 0 or gaps.max() >= 1 << index_bits):
            raise FormatError("relative index out of range")
        positions = decode_relative(gaps, index_bits)
        if positions.size and positions[-1] >= n:
            raise FormatError(f"sparse index {int(positions[-1])} is outside a tensor of {n} values")
        out = np.zeros(n, dtype=np.float32)
        if self.shared:
            cb_dtype = m.get("codebook_dtype", "float32")
            if cb_dtype not in ("float32", "float16"):
                raise FormatError(f"codebook dtype {cb_dtype!r} is not float32 or float16")
            raw = s["codebook"]
            if len(raw) % np.dtype(cb_dtype).itemsize:
                raise FormatError(f"codebook section of {len(raw)} bytes is not a whole number of {cb_dtype}")
            codebook = np.frombuffer(raw, dtype=cb_dtype).astype(np.float32)
            if codebook.size != int(m["codebook_size"]):
                raise FormatError("codebook size does not match its metadata")
            symbols = unpack_stream(s["values"], m["values"], int(m["value_bits"]), entries)
            if symbols.size and symbols.max() > codebook.size:
                raise FormatError("codebook index out of range")
            real = symbols < codebook.size
            out[positions[real]] = codebook[symbols[real]]
        else:
            vals = np.frombuffer(s["values"], dtype=np.float32)
            if vals.size != entries:
                raise FormatError(f"{vals.size} values stored for {entries} entries")
            out[positions] = vals
        return torch.from_numpy(out).reshape(enc.shape)


class AutoCodec(TensorCodec):
    """Encodes with each exact candidate (``raw``, ``sparse``, ``deep`` when the tensor has
    at most ``max_codebook`` distinct nonzeros) and keeps the smallest. The result carries
    the winner's codec name, so decoding never passes through ``auto``."""

    name = "auto"

    def encode(self, tensor, index_bits=None, huffman="auto", max_codebook=4096, **params):
        _no_params(self.name, params)
        candidates = [RAW.encode(tensor)]
        if tensor.dtype == torch.float32 and tensor.numel() > 0:
            candidates.append(SPARSE.encode(tensor, index_bits=index_bits, huffman=huffman))
            distinct = torch.unique(tensor[tensor != 0]).numel()
            if distinct <= max_codebook:
                candidates.append(DEEP.encode(tensor, index_bits=index_bits, huffman=huffman))
        return min(candidates, key=lambda e: e.nbytes)

    def decode(self, enc):  # pragma: no cover - auto never appears in a file
        raise FormatError("'auto' is not a stored codec")


RAW = register_codec(RawCodec())
SPARSE = register_codec(SparseCodec("sparse", shared=False))
DEEP = register_codec(SparseCodec("deep", shared=True))
register_codec(CastCodec("fp16", torch.float16))
register_codec(CastCodec("bf16", torch.bfloat16))
register_codec(Int8Codec())
register_codec(AutoCodec())
