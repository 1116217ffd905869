"""Lossless packings of quantized weight tensors: the real bits behind each quantizer.

Each format is a pair of pure functions ``encode_x(w, **params) -> Packed`` and
``decode_x(packed, shape) -> float32 tensor``. ``decode(encode(w))`` equals ``w`` exactly
whenever ``w`` holds values the format represents (what a quantizer's ``finalize``
produces); otherwise ``encode`` raises ``ConfigError`` (or, for ``int`` without a given
scale, quantizes). The ``.nnc`` tensor codecs in ``codecs.py`` wrap these functions.

Formats (codes are bit-packed MSB first, or Huffman-coded when ``huffman`` says so):
  binary  1 sign bit per weight + fp32 scale per output channel (or per tensor)
  lut     ceil(log2 K)-bit indices into a fp32 codebook of the K distinct values
          (per tensor or per channel): ternary (K = 3 -> 2 bits), ADMM, DoReFa, BNN
  int     b-bit codes q + fp32 scale s + int32 zero point z: w = (q - z) * s
  pow2    {0, +-2^n : n_min <= n <= n_max}: code 0 = zero, 1 + 2 (n_max - n) + sign
  shift   N codes of B bits (ShiftCNN codewords 0, +-2^-m) + fp32 scale: w = s * sum
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nncompress.coding import bitpack
from nncompress.coding.streams import pack_stream, unpack_stream
from nncompress.errors import ConfigError, FormatError
from nncompress.format.schema import need_bool, need_choice, need_int, need_length, need_sections
from nncompress.quantize.pow2 import shift_codes, shift_scale


@dataclass
class Packed:
    """Byte sections plus JSON metadata (``meta["bits"]`` splits the stored bits)."""

    meta: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, bytes] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(len(v) for v in self.sections.values())


def _f32(t: torch.Tensor) -> bytes:
    return t.detach().float().contiguous().numpy().astype("<f4").tobytes()


def _from_f32(data: bytes, count: int) -> torch.Tensor:
    if len(data) != 4 * count:
        raise FormatError(
            f"expected {count} float32 values ({4 * count} bytes), got {len(data)} bytes"
        )
    return torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32).copy())


def _check_float(w: torch.Tensor, fmt: str) -> torch.Tensor:
    if w.dtype != torch.float32:
        raise ConfigError(f"format {fmt!r} stores float32 tensors, got {w.dtype}")
    if not torch.isfinite(w).all():
        raise ConfigError(f"format {fmt!r} cannot store NaN/inf values")
    return w.detach().cpu()


def _rows(w: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """``(C, n)`` view: one row per output channel, or a single row."""
    return w.reshape(w.shape[0], -1) if per_channel and w.dim() > 1 else w.reshape(1, -1)


def _default_per_channel(w: torch.Tensor, per_channel: bool | None) -> bool:
    return (w.dim() > 1) if per_channel is None else bool(per_channel)


def width_for(alphabet: int) -> int:
    """Bits of a fixed-width code for ``alphabet`` symbols (at least 1).

    Example:
        >>> width_for(3), width_for(17)
        (2, 5)
    """
    return max(1, math.ceil(math.log2(max(alphabet, 2))))


def _bits(codes: bytes, other: int) -> dict[str, int]:
    return {"weights": 8 * len(codes), "index": 0, "other": 8 * other}


# ---- binary: signs + scale ------------------------------------------------------------


def encode_binary(w: torch.Tensor, per_channel: bool | None = None) -> Packed:
    """``w = scale_c * (+-1)``: 1 sign bit per weight + fp32 scale per channel.

    Example:
        >>> p = encode_binary(torch.tensor([[0.5, -0.5], [2.0, 2.0]]))
        >>> len(p.sections["signs"]), decode_binary(p, [2, 2]).tolist()
        (1, [[0.5, -0.5], [2.0, 2.0]])
    """
    w = _check_float(w, "binary")
    pc = _default_per_channel(w, per_channel)
    rows = _rows(w, pc)  # (C, n)
    scale = rows.abs().amax(dim=1)  # (C,)
    if not torch.equal(rows.abs(), scale[:, None].expand_as(rows)):
        raise ConfigError("tensor is not binary (+-scale per channel); quantize it first")
    signs = (rows > 0).reshape(-1).numpy()
    data = bitpack.pack_bits(signs, 1) if signs.size else b""
    meta = {"per_channel": pc, "bits": _bits(data, 4 * scale.numel())}
    return Packed(meta, {"signs": data, "scale": _f32(scale)})


def decode_binary(p: Packed, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`encode_binary`."""
    n = math.prod(shape)
    rows = shape[0] if p.meta["per_channel"] and len(shape) > 1 else 1
    scale = _from_f32(p.sections["scale"], rows)[:, None]  # (C, 1)
    signs = (
        torch.from_numpy(bitpack.unpack_bits(p.sections["signs"], 1, n)).bool()
        if n
        else torch.zeros(0, dtype=torch.bool)
    )
    signs = signs.reshape(rows, -1)
    return torch.where(signs, scale, -scale).reshape(shape)


# ---- lut: codebook + indices -----------------------------------------------------------


def encode_lut(
    w: torch.Tensor, per_channel: bool = False, bits: int | None = None, huffman: str = "auto"
) -> Packed:
    """Indices into the sorted codebook of distinct values (per tensor or per channel).

    Example:
        >>> p = encode_lut(torch.tensor([0.5, 0.0, -0.25, 0.5]), huffman="no")
        >>> p.meta["width"], decode_lut(p, [4]).tolist()
        (2, [0.5, 0.0, -0.25, 0.5])
    """
    w = _check_float(w, "lut")
    rows = _rows(w, per_channel)  # (C, n)
    books = [torch.unique(r) for r in rows]  # sorted distinct values per row
    k = max((b.numel() for b in books), default=1)
    width = width_for(k)
    if bits is not None:
        if bits < width:
            raise ConfigError(
                f"tensor has {k} distinct values; bits={bits} holds at most {2**bits}"
            )
        width = int(bits)
    book = torch.stack(
        [
            torch.cat([b, b[-1:].expand(k - b.numel())]) if b.numel() else torch.zeros(k)
            for b in books
        ]
    )  # (C, K)
    codes = torch.searchsorted(book.contiguous(), rows.contiguous())  # (C, n)
    data, kind = pack_stream(codes.reshape(-1).numpy(), k, width, huffman)
    meta = {
        "per_channel": bool(per_channel),
        "k": k,
        "width": width,
        "stream": kind,
        "bits": _bits(data, 4 * book.numel()),
    }
    return Packed(meta, {"codes": data, "codebook": _f32(book.reshape(-1))})


def decode_lut(p: Packed, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`encode_lut`."""
    n, k = math.prod(shape), int(p.meta["k"])
    rows = shape[0] if p.meta["per_channel"] and len(shape) > 1 else 1
    book = _from_f32(p.sections["codebook"], rows * k).reshape(rows, k)
    codes = torch.from_numpy(
        unpack_stream(p.sections["codes"], p.meta["stream"], p.meta["width"], n)
    )
    if codes.numel() and int(codes.max()) >= k:
        raise FormatError(f"lut code {int(codes.max())} exceeds the codebook size {k}")
    return torch.gather(book, 1, codes.reshape(rows, -1)).reshape(shape)


# ---- int: affine codes -----------------------------------------------------------------


def encode_int(
    w: torch.Tensor,
    bits: int = 8,
    symmetric: bool = True,
    per_channel: bool | None = None,
    scale: list[float] | None = None,
    zero_point: list[float] | None = None,
    huffman: str = "no",
) -> Packed:
    """``w = (q - z) * s``: b-bit codes, fp32 scales, int32 zero points.

    With ``scale``/``zero_point`` given (what ``finalize`` passes) the codes of an already
    quantized tensor are recovered exactly; without them min/max parameters are chosen
    (a lossy post-training quantization).

    Example:
        >>> p = encode_int(torch.tensor([[1.0, -0.5]]), bits=8, scale=[0.5], zero_point=[128])
        >>> decode_int(p, [1, 2]).tolist()
        [[1.0, -0.5]]
    """
    from nncompress.quantize.affine import choose_qparams, code_range, quantize_affine

    w = _check_float(w, "int")
    if not 2 <= int(bits) <= 16:
        raise ConfigError(f"int bits={bits} is out of range; allowed: 2..16")
    pc = _default_per_channel(w, per_channel)
    rows = _rows(w, pc)  # (C, n)
    if scale is None:
        s, z = choose_qparams(rows, bits, symmetric, axis=0)
    else:
        s = torch.tensor(scale, dtype=torch.float32).reshape(-1, 1)
        z = torch.tensor(
            zero_point if zero_point is not None else [0.0] * len(scale), dtype=torch.float32
        ).reshape(-1, 1)
        if s.shape[0] != rows.shape[0] or z.shape[0] != rows.shape[0]:
            raise ConfigError(
                f"int codec got {s.shape[0]} scales / {z.shape[0]} zero points "
                f"for {rows.shape[0]} channels"
            )
    q = quantize_affine(rows, s, z, bits, symmetric)  # (C, n) float codes
    lo, hi = code_range(bits, symmetric)
    data, kind = pack_stream(q.reshape(-1).to(torch.int64).numpy(), 2**bits, bits, huffman)
    meta = {
        "per_channel": pc,
        "width": int(bits),
        "symmetric": bool(symmetric),
        "stream": kind,
        "range": [lo, hi],
        "bits": _bits(data, 8 * s.numel()),
    }
    z_bytes = z.reshape(-1).to(torch.int32).numpy().astype("<i4").tobytes()
    return Packed(meta, {"codes": data, "scale": _f32(s.reshape(-1)), "zero_point": z_bytes})


def decode_int(p: Packed, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`encode_int`: ``(q - z) * s`` in float32."""
    from nncompress.quantize.affine import dequantize_affine

    n = math.prod(shape)
    rows = shape[0] if p.meta["per_channel"] and len(shape) > 1 else 1
    s = _from_f32(p.sections["scale"], rows).reshape(rows, 1)
    zb = p.sections["zero_point"]
    if len(zb) != 4 * rows:
        raise FormatError(f"expected {rows} int32 zero points, got {len(zb)} bytes")
    z = torch.from_numpy(np.frombuffer(zb, dtype="<i4").astype(np.float32).copy()).reshape(rows, 1)
    q = torch.from_numpy(unpack_stream(p.sections["codes"], p.meta["stream"], p.meta["width"], n))
    return dequantize_affine(q.float().reshape(rows, -1), s, z).reshape(shape)


# ---- pow2: exponents -------------------------------------------------------------------


def encode_pow2(
    w: torch.Tensor,
    n_max: int | None = None,
    n_min: int | None = None,
    bits: int | None = None,
    huffman: str = "auto",
) -> Packed:
    """Values in ``{0, +-2^n}``: one code per weight, 0 = zero, ``1 + 2 (n_max - n) + neg``.

    Example:
        >>> p = encode_pow2(torch.tensor([0.5, -0.125, 0.0]), huffman="no")
        >>> p.meta["n_max"], p.meta["n_min"], decode_pow2(p, [3]).tolist()
        (-1, -3, [0.5, -0.125, 0.0])
    """
    w = _check_float(w, "pow2")
    flat = w.reshape(-1)
    nz = flat != 0
    mant, expo = torch.frexp(flat)  # flat = mant * 2^expo, |mant| in [0.5, 1)
    if not bool((mant[nz].abs() == 0.5).all()):
        raise ConfigError("tensor holds values that are not 0 or +-2^n; quantize it first")
    n = (expo - 1).to(torch.int64)
    used_max = int(n[nz].max()) if nz.any() else 0
    used_min = int(n[nz].min()) if nz.any() else 0
    n_max = used_max if n_max is None else int(n_max)
    n_min = used_min if n_min is None else int(n_min)
    if nz.any() and (used_max > n_max or used_min < n_min):
        raise ConfigError(
            f"exponents {used_min}..{used_max} fall outside n_min..n_max = {n_min}..{n_max}"
        )
    alphabet = 2 * (n_max - n_min + 1) + 1
    width = width_for(alphabet) if bits is None else int(bits)
    if width < width_for(alphabet):
        raise ConfigError(
            f"bits={bits} cannot hold {alphabet} pow2 codes; need {width_for(alphabet)}"
        )
    codes = torch.where(nz, 1 + 2 * (n_max - n) + (flat < 0).to(torch.int64), torch.zeros_like(n))
    data, kind = pack_stream(codes.numpy(), alphabet, width, huffman)
    meta = {"n_max": n_max, "n_min": n_min, "width": width, "stream": kind, "bits": _bits(data, 0)}
    return Packed(meta, {"codes": data})


def decode_pow2(p: Packed, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`encode_pow2`."""
    n_max, n_min = int(p.meta["n_max"]), int(p.meta["n_min"])
    codes = torch.from_numpy(
        unpack_stream(p.sections["codes"], p.meta["stream"], p.meta["width"], math.prod(shape))
    )
    if codes.numel() and int(codes.max()) > 2 * (n_max - n_min + 1):
        raise FormatError(
            f"pow2 code {int(codes.max())} is outside the exponent range {n_min}..{n_max}"
        )
    k = (codes - 1).clamp_min(0)
    mag = torch.ldexp(torch.ones(codes.shape), (n_max - k // 2).to(torch.int32))
    val = torch.where(k % 2 == 1, -mag, mag)
    return torch.where(codes == 0, torch.zeros_like(val), val).reshape(shape)


# ---- shift: ShiftCNN codeword sums -----------------------------------------------------


def shift_symbols(c: torch.Tensor, bits: int) -> torch.Tensor:
    """Codeword ``0, +-2^-m`` -> symbol ``0, 1 + 2m + neg`` (B bits).

    Example:
        >>> shift_symbols(torch.tensor([0.0, 1.0, -0.25]), 3).tolist()
        [0, 1, 6]
    """
    _, expo = torch.frexp(c)
    m = (1 - expo).to(torch.int64)  # c = +-2^-m
    return torch.where(c != 0, 1 + 2 * m + (c < 0).to(torch.int64), torch.zeros_like(m))


def shift_values(sym: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`shift_symbols`.

    Example:
        >>> shift_values(torch.tensor([0, 1, 6])).tolist()
        [0.0, 1.0, -0.25]
    """
    k = (sym - 1).clamp_min(0)
    mag = torch.ldexp(torch.ones(sym.shape), (-(k // 2)).to(torch.int32))
    return torch.where(sym == 0, 0.0, torch.where(k % 2 == 1, -mag, mag))


def encode_shift(
    w: torch.Tensor,
    n: int = 2,
    bits: int = 4,
    per_channel: bool = False,
    scale: list[float] | None = None,
    huffman: str = "auto",
) -> Packed:
    """ShiftCNN: ``w = s * sum_i c_i`` with N codewords of B bits per weight.

    ``s`` defaults to ``max|w|`` (the finalized weights keep it: their largest entry is
    exactly ``s * 1``). Raises ``ConfigError`` when ``w`` is not such a sum.

    Example:
        >>> p = encode_shift(torch.tensor([4.0, 3.0, -1.0]), n=2, bits=3, huffman="no")
        >>> decode_shift(p, [3]).tolist()
        [4.0, 3.0, -1.0]
    """
    w = _check_float(w, "shift")
    s = (
        shift_scale(w, per_channel)
        if scale is None
        else torch.tensor(scale, dtype=torch.float32).reshape([-1] + [1] * (w.dim() - 1))
    )
    cs = shift_codes(w / s, n, bits)  # (N, *shape)
    if not torch.equal(s * cs.sum(dim=0), w):
        raise ConfigError(
            f"tensor is not a ShiftCNN weight with N={n}, B={bits}; quantize it first"
        )
    sym = shift_symbols(cs, bits).reshape(-1)
    data, kind = pack_stream(sym.numpy(), 2**bits - 1, bits, huffman)
    meta = {
        "n": int(n),
        "width": int(bits),
        "per_channel": bool(per_channel),
        "stream": kind,
        "bits": _bits(data, 4 * s.numel()),
    }
    return Packed(meta, {"codes": data, "scale": _f32(s.reshape(-1))})


def decode_shift(p: Packed, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`encode_shift`: ``s * sum_i c_i`` in float32."""
    n, count = int(p.meta["n"]), math.prod(shape)
    rows = shape[0] if p.meta["per_channel"] and len(shape) > 1 else 1
    s = _from_f32(p.sections["scale"], rows).reshape([rows] + [1] * (len(shape) - 1))
    sym = torch.from_numpy(
        unpack_stream(p.sections["codes"], p.meta["stream"], p.meta["width"], n * count)
    )
    cs = shift_values(sym).reshape([n] + list(shape))
    return s * cs.sum(dim=0)


# ---- validation of stored metadata (untrusted files) --------------------------------


def _rows_of(meta: dict[str, Any], shape: list[int], where: str) -> int:
    pc = need_bool(meta, "per_channel", where)
    return shape[0] if pc and len(shape) > 1 else 1


def _stream(meta: dict[str, Any], where: str, lo: int, hi: int) -> int:
    need_choice(meta, "stream", ("fixed", "huffman"), where)
    return need_int(meta, "width", lo, hi, where)


def _check_codes(p: Packed, count: int, width: int, where: str) -> None:
    if p.meta["stream"] == "fixed":
        need_length(p.sections["codes"], bitpack.packed_size(count, width), f"{where}: section 'codes'")


def check_binary(p: Packed, shape: list[int]) -> None:
    """Validate a stored ``binary`` packing before decoding (``FormatError`` names the field)."""
    where = "format 'binary'"
    need_sections(p.sections, ["signs", "scale"], where)
    rows = _rows_of(p.meta, shape, where)
    need_length(p.sections["signs"], bitpack.packed_size(math.prod(shape), 1), f"{where}: section 'signs'")
    need_length(p.sections["scale"], 4 * rows, f"{where}: section 'scale'")


def check_lut(p: Packed, shape: list[int]) -> None:
    """Validate a stored ``lut`` packing before decoding."""
    where = "format 'lut'"
    need_sections(p.sections, ["codes", "codebook"], where)
    rows = _rows_of(p.meta, shape, where)
    k = need_int(p.meta, "k", 1, 65536, where)
    width = _stream(p.meta, where, width_for(k), 16)
    need_length(p.sections["codebook"], 4 * rows * k, f"{where}: section 'codebook'")
    _check_codes(p, math.prod(shape), width, where)


def check_int(p: Packed, shape: list[int]) -> None:
    """Validate a stored ``int`` packing before decoding."""
    where = "format 'int'"
    need_sections(p.sections, ["codes", "scale", "zero_point"], where)
    rows = _rows_of(p.meta, shape, where)
    width = _stream(p.meta, where, 2, 16)
    need_bool(p.meta, "symmetric", where, default=False)
    need_length(p.sections["scale"], 4 * rows, f"{where}: section 'scale'")
    need_length(p.sections["zero_point"], 4 * rows, f"{where}: section 'zero_point'")
    _check_codes(p, math.prod(shape), width, where)


def check_pow2(p: Packed, shape: list[int]) -> None:
    """Validate a stored ``pow2`` packing before decoding (exponents within float32's)."""
    where = "format 'pow2'"
    need_sections(p.sections, ["codes"], where)
    n_max = need_int(p.meta, "n_max", -149, 127, where)
    n_min = need_int(p.meta, "n_min", -149, n_max, where)
    width = _stream(p.meta, where, width_for(2 * (n_max - n_min + 1) + 1), 16)
    _check_codes(p, math.prod(shape), width, where)


def check_shift(p: Packed, shape: list[int]) -> None:
    """Validate a stored ``shift`` packing before decoding."""
    where = "format 'shift'"
    need_sections(p.sections, ["codes", "scale"], where)
    rows = _rows_of(p.meta, shape, where)
    n = need_int(p.meta, "n", 1, 8, where)
    width = _stream(p.meta, where, 2, 8)
    need_length(p.sections["scale"], 4 * rows, f"{where}: section 'scale'")
    _check_codes(p, n * math.prod(shape), width, where)


CHECKS = {"binary": check_binary, "lut": check_lut, "int": check_int, "pow2": check_pow2,
          "shift": check_shift}
"""Format name -> validation of a stored packing (run before its decoder)."""


FORMATS = {
    "binary": (encode_binary, decode_binary),
    "lut": (encode_lut, decode_lut),
    "int": (encode_int, decode_int),
    "pow2": (encode_pow2, decode_pow2),
    "shift": (encode_shift, decode_shift),
}
"""Format name -> (encode, decode)."""


def roundtrip(fmt: str, w: torch.Tensor, params: dict[str, Any]) -> tuple[torch.Tensor, Packed]:
    """``decode(encode(w))`` and the packing: what a loaded file will hold.

    Example:
        >>> roundtrip("pow2", torch.tensor([0.5]), {})[0].tolist()
        [0.5]
    """
    if fmt not in FORMATS:
        raise ConfigError(f"unknown packing {fmt!r}; allowed: {sorted(FORMATS)}")
    enc, dec = FORMATS[fmt]
    packed = enc(w.detach().float().cpu().contiguous(), **params)
    return dec(packed, list(w.shape)), packed
