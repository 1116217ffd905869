"""Storage forms of one tensor in an ONNX graph, and the choice of the smallest.

A compressed weight is stored as small initializers plus a few nodes that rebuild the
float tensor inside the graph (onnxruntime folds such constant subgraphs once, when the
session is created, so inference runs on the dense weight):

* ``dense``: the float32 initializer (always possible).
* ``fp16``: a float16 initializer + ``Cast`` when every value is exactly a float16.
* ``int8``: int8 codes (zero point 0) or uint8 codes with a zero point, + ``DequantizeLinear``
  per tensor or per output channel (axis 0), when ``w = (q - z) * s`` with at most 256 codes
  per channel (``nncompress``'s ``int8``/uniform methods write exactly this); 1-D tensors
  (biases) as ``Cast`` + ``Mul``, which runtimes fold.
  Codes that need fewer than 8 bits (a 4-bit method) are also tried bit-packed.
* ``shared``: at most 256 distinct values (k-means weight sharing, ``deep`` codec): a float
  codebook + one index per element in ``ceil(log2(values))`` bits; ``Gather`` rebuilds it.
* ``pruned``: mostly zeros: the nonzero positions as gaps in the width (1..8 bits) that
  makes the stream smallest (a longer gap is bridged by filler codes that only advance) +
  ``CumSum`` to positions, float32 values, ``ScatterElements`` into zeros.
* ``pruned-shared``: the same positions with codebook indices instead of float values.

Codes of ``b < 8`` bits take ``b`` bits each (:func:`pack_bits`): for 1, 2 and 4 bits,
``8 / b`` codes per byte, code ``i + j*H`` in field ``j`` of byte ``i``; for 3, 5, 6 and 7
bits, the ``b`` bit planes laid end to end as one such 1-bit stream. The graph unpacks
with one broadcast ``Div``, one ``Mod`` and a ``Reshape`` (int32 arithmetic, any opset
>= 13), and for planes a ``Mul`` by powers of two and a ``ReduceSum``. In a gap stream the
top code is a filler (advance, no element) when some gap does not fit; the real entries'
values are spread over all entries with ``CumSum``/``Gather`` (fillers get 0 and land on
distinct zero positions).

Every decoding subgraph has static shapes (no ``Compress``/``NonZero``), so onnxruntime's
constant folding turns it into the dense initializer when the session is created and
inference runs the plain Gemm/Conv kernels. ``DequantizeLinear`` on int8 weights is the
exception: onnxruntime keeps it (for its QDQ handling) and dequantizes on each run.

Each applicable form is built, its serialized bytes measured, the smallest kept, and its
decoding re-done in numpy and compared with the tensor before it is accepted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from nncompress.deploy.graph import GraphBuilder, bytes_of

log = logging.getLogger(__name__)

FORMS = ("dense", "fp16", "int8", "shared", "pruned", "pruned-shared")
"""Storage forms, in the order preferred on equal bytes."""

MIN_ELEMENTS = 16
"""Tensors with fewer elements are always dense (a decoding node costs more)."""

INT_TOLERANCE = 2.0**-20
"""An ``int8`` form may differ from the tensor by at most this times its max |value| (the
scale is recovered from the values; it is usually bit-exact)."""


@dataclass
class Encoded:
    """One candidate: where it lives (``builder``), its output name, bytes and decoder."""

    form: str
    builder: GraphBuilder
    output: str
    detail: str
    decode: Callable[[], np.ndarray]
    exact: bool = True

    @property
    def bytes(self) -> int:
        return bytes_of(self.builder.nodes, self.builder.initializers)


def _onnx():
    from onnx import TensorProto, helper

    return TensorProto, helper


# ----------------------------------------------------------------------------- helpers

def bits_for(count: int) -> int:
    """Bits of a code that takes ``count`` values (at least 1).

    Example:
        >>> bits_for(2), bits_for(33), bits_for(256)
        (1, 6, 8)
    """
    return max(1, int(count - 1).bit_length())


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Pack codes < 2**bits into bytes so that the graph unpacks them with one broadcast
    ``Div`` and ``Mod``. ``bits`` 1, 2, 4: ``8 // bits`` codes per byte, code ``i + j*H`` in
    field ``j`` of byte ``i`` (H = bytes). 3, 5, 6, 7: the ``bits`` bit planes (low first)
    laid end to end as one 1-bit stream of ``bits * n`` bits, packed the same way.

    Example:
        >>> pack_bits(np.array([1, 2, 3], np.uint8), 4).tolist()
        [49, 2]
    """
    v = np.asarray(values, dtype=np.int64).ravel()
    if bits in (3, 5, 6, 7):
        v = np.concatenate([(v >> k) & 1 for k in range(bits)])
        p = 1
    else:
        p = bits
    k = 8 // p
    h = -(-v.size // k)
    padded = np.zeros(k * h, dtype=np.int64)
    padded[: v.size] = v
    return (padded.reshape(k, h) << (np.arange(k) * p)[:, None]).sum(axis=0).astype(np.uint8)


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`, as the graph computes it (int32)."""
    p = 1 if bits in (3, 5, 6, 7) else bits
    x = np.asarray(packed, dtype=np.int32).reshape(1, -1)
    div = (2 ** (np.arange(8 // p) * p)).astype(np.int32).reshape(-1, 1)
    fields = ((x // div) % (2**p)).reshape(-1)
    if p == bits:
        return fields[:n]
    planes = fields[: bits * n].reshape(bits, n)
    return (planes * (2 ** np.arange(bits, dtype=np.int32))[:, None]).sum(axis=0, dtype=np.int32)


def _codes(b: GraphBuilder, codes: np.ndarray, bits: int, hint: str, shape=None) -> str:
    """Store integer ``codes`` (< 2**bits) in ``bits`` bits each (:func:`pack_bits`; uint8
    for 8); return the int32 tensor the graph rebuilds (1-D, or ``shape`` when given)."""
    TensorProto, _ = _onnx()
    codes = np.asarray(codes)
    n = codes.size
    if bits == 8:
        arr = codes.astype(np.uint8).reshape(shape if shape is not None else (-1,))
        return b.node("Cast", [b.const(arr, hint)], to=TensorProto.INT32)
    p = 1 if bits in (3, 5, 6, 7) else bits
    packed = pack_bits(codes, bits).reshape(1, -1)
    x = b.node("Cast", [b.const(packed, hint)], to=TensorProto.INT32)
    div = (2 ** (np.arange(8 // p) * p)).astype(np.int32).reshape(-1, 1)
    y = b.node("Mod", [b.node("Div", [x, b.const(div, f"div{p}")]), b.scalar(2**p, np.int32, f"mod{p}")])
    y = b.node("Reshape", [y, b.int64s([-1], "flat")])
    total = n if p == bits else bits * n
    if packed.size * (8 // p) != total:
        y = b.node("Slice", [y, b.int64s([0], "zero"), b.int64s([total], "n"), b.int64s([0], "zero")])
    if p != bits:
        y = b.node("Reshape", [y, b.int64s([bits, n], "planes")])
        weights = (2 ** np.arange(bits, dtype=np.int32)).reshape(-1, 1)
        y = b.node("Mul", [y, b.const(weights, f"pow{bits}")])
        y = b.node("ReduceSum", [y, b.int64s([0], "zero")], keepdims=0)
    if shape is not None and len(shape) != 1:
        y = b.node("Reshape", [y, b.int64s(list(shape))])
    return y


def decode_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """What the graph of :func:`_codes` rebuilds (reference: pack, then unpack)."""
    codes = np.asarray(codes).ravel()
    if bits == 8:
        return codes.astype(np.uint8).astype(np.int32)
    return unpack_bits(pack_bits(codes, bits), bits, codes.size)


def gap_entries(positions: np.ndarray, bits: int) -> tuple[np.ndarray, bool]:
    """The gap stream of sorted flat ``positions`` (the first gap from 0) in ``bits``-bit
    codes; returns ``(codes, with_fillers)``. When every gap fits (``<= 2**bits - 1``) the
    codes are the gaps. Otherwise the top code ``F = 2**bits - 1`` is a filler (advance F,
    no element) and real gaps are ``0..F-1``: positions = ``cumsum`` over the codes, kept
    where the code is below F.

    Example:
        >>> codes, fill = gap_entries(np.array([2, 40]), 4)
        >>> codes.tolist(), fill
        ([2, 15, 15, 8], True)
    """
    pos = np.asarray(positions, dtype=np.int64)
    d = np.diff(np.concatenate([[0], pos]))
    top = 2**bits - 1
    if d.size == 0 or d.max() <= top:
        return d, False
    k = d // top
    counts = k + 1
    owner = np.repeat(np.arange(pos.size), counts)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    j = np.arange(int(counts.sum())) - starts[owner]
    codes = np.where(j == k[owner], d[owner] - k[owner] * top, top)
    return codes.astype(np.int64), True


def gap_positions(codes: np.ndarray, bits: int, with_fillers: bool) -> np.ndarray:
    """Positions of a :func:`gap_entries` stream (numpy reference of the graph)."""
    c = np.asarray(codes, dtype=np.int64)
    pos = np.cumsum(c)
    return pos[c < 2**bits - 1] if with_fillers else pos


def _entries(pos: np.ndarray, bits: int) -> tuple[int, int]:
    """(codes, real entries) of the gap stream of ``pos`` with ``bits``-bit gaps."""
    d = np.diff(np.concatenate([[0], pos]))
    top = 2**bits - 1
    if d.size == 0 or d.max() <= top:
        return int(pos.size), int(pos.size)
    return int(pos.size + np.sum(d // top)), int(pos.size)


# ----------------------------------------------------------------------------- int codes

def _row_codes(r: np.ndarray) -> tuple[np.ndarray, np.float32, float] | None:
    """Integer codes ``t`` (|t| <= 255) and a float32 scale ``s`` with ``t * s == r``
    (or within INT_TOLERANCE), or None when ``r`` is not on such a lattice."""
    r = r.astype(np.float32, copy=False)
    m = float(np.max(np.abs(r))) if r.size else 0.0
    if m == 0.0:
        return np.zeros(r.shape, np.int64), np.float32(1.0), 0.0
    u = np.unique(r)
    if u.size > 256:
        return None
    g = float(np.min(np.diff(u.astype(np.float64)))) if u.size > 1 else m
    # the true scale s divides every gap; the smallest gap is j*s for a small j. Larger
    # scales (fewer codes) first; 127 is the symmetric 8-bit scale max|w| / 127.
    tried, best = set(), None
    for n in (*(max(1, int(round(m * j / g))) for j in range(1, 9)), 127):
        if n in tried or n > 255:
            continue
        tried.add(n)
        s0 = np.float32(np.float32(m) / np.float32(n))
        for k in range(-3, 4):
            s = s0
            for _ in range(abs(k)):
                s = np.nextafter(s, np.float32(np.inf if k > 0 else -np.inf), dtype=np.float32)
            if not s > 0:
                continue
            t = np.rint(r / s)
            if np.max(np.abs(t)) > 255:
                continue
            err = float(np.max(np.abs(t.astype(np.float32) * s - r)))
            if best is None or err < best[2]:
                best = (t.astype(np.int64), np.float32(s), err)
            if err == 0.0:
                return best
    if best is not None and best[2] <= INT_TOLERANCE * m:
        return best
    return None


def int_codes(w: np.ndarray):
    """``(x, scale, zero_point, axis, max_err)`` with ``w ~ (x - zp) * scale`` (x int8 with
    zero point 0, or uint8 with a zero point), per tensor or per output channel (axis 0);
    None when ``w`` is not made of <= 256 codes times a scale per channel."""
    whole = _row_codes(w.ravel())
    if whole is not None:
        rows = [whole]
        axis = None
    elif w.ndim >= 2:
        rows = []
        for row in w.reshape(w.shape[0], -1):
            rc = _row_codes(row)
            if rc is None:
                return None
            rows.append(rc)
        axis = 0
    else:
        return None
    t = np.stack([rc[0] for rc in rows]).reshape(len(rows), -1)
    scale = np.array([rc[1] for rc in rows], dtype=np.float32)
    err = max(rc[2] for rc in rows)
    if t.min() >= -128 and t.max() <= 127:
        x, zp = t.astype(np.int8), None
    else:
        lo, hi = t.min(axis=1), t.max(axis=1)
        if np.any(lo > 0) or np.any(lo < -255) or np.any(hi - lo > 255):
            return None
        zp = (-lo).astype(np.uint8)
        x = (t - lo[:, None]).astype(np.uint8)
    x = x.reshape(w.shape)
    if axis is None:
        scale = scale.reshape(())
        zp = zp.reshape(()) if zp is not None else None
    return x, scale, zp, axis, err


# ----------------------------------------------------------------------------- candidates

def _dense(b: GraphBuilder, name: str, w: np.ndarray) -> Encoded:
    out = b.const(w.astype(np.float32), name)
    return Encoded("dense", b, out, "float32", lambda: w.astype(np.float32))


def _fp16(b: GraphBuilder, name: str, w: np.ndarray) -> Encoded | None:
    TensorProto, _ = _onnx()
    with np.errstate(over="ignore"):
        h = w.astype(np.float16)
    if not np.array_equal(h.astype(np.float32), w):
        return None
    out = b.node("Cast", [b.const(h, name + ".f16")], hint=name, to=TensorProto.FLOAT)
    return Encoded("fp16", b, out, "float16 + Cast", lambda: h.astype(np.float32))


def _int8(b: GraphBuilder, name: str, w: np.ndarray, found, packed: bool) -> Encoded | None:
    """``found``: :func:`int_codes` of ``w``. ``packed``: codes in their bit width (bit
    planes, rebuilt in the graph) instead of an int8/uint8 initializer.

    Weights (2-D and up) use ``DequantizeLinear``, which runtimes keep as the int8 weight
    (onnxruntime dequantizes it on each run). 1-D tensors (biases, BatchNorm parameters)
    use ``Cast`` + ``Sub`` + ``Mul`` instead, the same arithmetic in float32, which
    runtimes fold at load: a constant bias keeps the Conv/Gemm fusions that need one.
    """
    TensorProto, _ = _onnx()
    x, scale, zp, axis, err = found
    shape = [1] * w.ndim
    if axis is not None:
        shape[0] = w.shape[0]
    zp0 = np.zeros(shape, np.int32) if zp is None else zp.astype(np.int32).reshape(shape)
    if packed:
        lo = np.min(x.astype(np.int32).reshape(len(scale.ravel()), -1), axis=1).reshape(shape)
        u = x.astype(np.int32) - lo  # offsets from each channel's lowest code
        bits = bits_for(int(u.max()) + 1)
        if bits == 8:
            return None
        zp_u = zp0 - lo  # the graph's codes are u: (x - zp) = (u - (zp - lo))
        if zp_u.min() < 0 or zp_u.max() > 255:
            return None
        codes_name = _codes(b, u, bits, name + ".q", shape=w.shape)
        ref_x, ref_zp = decode_codes(u, bits).reshape(w.shape), zp_u
        kind = f"{bits}-bit codes"
    else:
        codes_name = b.const(x, name + ".q")
        ref_x, ref_zp = x.astype(np.int32), zp0
        kind = "int8" if zp is None else "uint8 + zero point"
    if w.ndim >= 2:
        if packed:
            codes_name = b.node("Cast", [codes_name], to=TensorProto.UINT8)
            zp_t = ref_zp.astype(np.uint8).reshape(scale.shape)
        else:
            zp_t = None if zp is None else zp
        inputs = [codes_name, b.const(scale, name + ".scale")]
        if zp_t is not None:
            inputs.append(b.const(zp_t, name + ".zp"))
        out = b.node("DequantizeLinear", inputs, hint=name, axis=axis)
        how = "DequantizeLinear"
    else:
        f = b.node("Cast", [codes_name], to=TensorProto.FLOAT)
        if np.any(ref_zp != 0):
            f = b.node("Sub", [f, b.const(ref_zp.astype(np.float32).reshape(scale.shape), name + ".zp")])
        out = b.node("Mul", [f, b.const(scale, name + ".scale")], hint=name)
        how = "Cast + Mul"

    def decode() -> np.ndarray:
        return (ref_x - ref_zp).astype(np.float32) * scale.reshape(shape)

    where = "per tensor" if axis is None else f"per channel (axis 0, {w.shape[0]} scales)"
    detail = f"{kind} + {how} {where}" + ("" if err == 0 else f", max error {err:.2g}")
    return Encoded("int8", b, out, detail, decode, exact=err == 0)


def _shared(b: GraphBuilder, name: str, w: np.ndarray, values: np.ndarray, inverse: np.ndarray,
            bits: int) -> Encoded:
    cb = b.const(values.astype(np.float32), name + ".codebook")
    idx = _codes(b, inverse, bits, name + ".idx", shape=w.shape)
    out = b.node("Gather", [cb, idx], hint=name, axis=0)
    detail = f"{values.size} values, {bits}-bit indices + Gather"
    return Encoded("shared", b, out, detail,
                   lambda: values.astype(np.float32)[decode_codes(inverse, bits).reshape(w.shape)])


def _pruned(b: GraphBuilder, name: str, w: np.ndarray, gap_bits: int, book: np.ndarray | None) -> Encoded | None:
    """``book`` None: float values (pruned); else the sorted nonzero values, stored as
    indices into ``book`` (pruned-shared)."""
    TensorProto, helper = _onnx()
    flat = w.ravel()
    pos = np.flatnonzero(flat)
    if pos.size == 0:
        return None
    gaps, fillers = gap_entries(pos, gap_bits)
    nz = flat[pos].astype(np.float32)
    if book is None:
        values_name = b.const(nz, name + ".values")
        what = "float32 values"
        ref_values = lambda: nz  # noqa: E731
    else:
        idx_bits = bits_for(book.size)
        idx = np.searchsorted(book, nz)
        cb = b.const(book.astype(np.float32), name + ".codebook")
        values_name = b.node("Gather", [cb, _codes(b, idx, idx_bits, name + ".idx")], axis=0)
        what = f"{book.size} values, {idx_bits}-bit indices"
        ref_values = lambda: book.astype(np.float32)[decode_codes(idx, idx_bits)]  # noqa: E731
    g = _codes(b, gaps, gap_bits, name + ".gaps")
    positions = b.node("CumSum", [g, b.scalar(0, np.int32, "axis0")])
    if fillers:
        # spread the real entries' values over all entries, 0 at fillers (which land on
        # distinct zero positions): value[e] = ([0] + values)[rank(e) * is_real(e)].
        # Only static shapes (no Compress), so runtimes fold it when loading the model.
        real = b.node("Cast", [b.node("Less", [g, b.scalar(2**gap_bits - 1, np.int32, f"top{gap_bits}")])],
                      to=TensorProto.INT32)
        sel = b.node("Mul", [b.node("CumSum", [real, b.scalar(0, np.int32, "axis0")]), real])
        padded = b.node("Concat", [b.const(np.zeros(1, np.float32), "zero_f"), values_name], axis=0)
        values_name = b.node("Gather", [padded, sel], axis=0)
    zeros = b.node("ConstantOfShape", [b.int64s([flat.size], "numel")],
                   value=helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]))
    out = b.node("ScatterElements", [zeros, positions, values_name], hint=name if w.ndim == 1 else None,
                 axis=0)
    if w.ndim != 1:
        out = b.node("Reshape", [out, b.int64s(list(w.shape))], hint=name)
    n_fill = int(gaps.size - pos.size)
    detail = (f"{pos.size:,} nonzero, {gap_bits}-bit gaps ({n_fill:,} fillers), {what}"
              " + CumSum + ScatterElements")

    def decode() -> np.ndarray:
        dense = np.zeros(flat.size, np.float32)
        dense[gap_positions(decode_codes(gaps, gap_bits), gap_bits, fillers)] = ref_values()
        return dense.reshape(w.shape)

    return Encoded("pruned" if book is None else "pruned-shared", b, out, detail, decode)


def _best_gap_bits(pos: np.ndarray, value_bits: int) -> list[int]:
    """Gap widths worth building: the one with the fewest estimated bits, and 8."""
    cost = {}
    for g in range(1, 9):
        codes, real = _entries(pos, g)
        cost[g] = codes * g + real * value_bits
    best = min(cost, key=lambda g: (cost[g], -g))
    return sorted({best, 8})


def candidates(parent: GraphBuilder, name: str, w: np.ndarray, forms: Iterable[str]):
    """Every applicable storage of ``w`` among ``forms``, each in its own child builder."""
    forms = set(forms)
    yield _dense(parent.child(), name, w)
    if w.size < MIN_ELEMENTS or not np.all(np.isfinite(w)):
        return
    if "fp16" in forms:
        c = _fp16(parent.child(), name, w)
        if c is not None:
            yield c
    if "int8" in forms:
        found = int_codes(w)
        if found is not None:
            for packed in (False, True):
                c = _int8(parent.child(), name, w, found, packed)
                if c is not None:
                    yield c
    values, inverse = np.unique(w.ravel(), return_inverse=True)
    if "shared" in forms and values.size <= 256:
        bits = bits_for(values.size)
        for bb in sorted({bits, 8}):
            yield _shared(parent.child(), name, w, values, inverse.ravel(), bb)
    nonzero = int(np.count_nonzero(w))
    if 0 < nonzero <= w.size // 2:
        pos = np.flatnonzero(w.ravel())
        if "pruned" in forms:
            for gb in _best_gap_bits(pos, 32):
                c = _pruned(parent.child(), name, w, gb, None)
                if c is not None:
                    yield c
        book = np.unique(w.ravel()[pos])
        if "pruned-shared" in forms and book.size <= 256:
            for gb in _best_gap_bits(pos, bits_for(book.size)):
                yield _pruned(parent.child(), name, w, gb, book)


def encode_tensor(b: GraphBuilder, name: str, w: np.ndarray, forms: Iterable[str] = FORMS):
    """Add the smallest exact storage of ``w`` to ``b``; return ``(value name, form, bytes,
    detail, nonzero, distinct)``."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    order = {f: i for i, f in enumerate(FORMS)}
    cands = sorted(candidates(b, name, w, forms), key=lambda c: (c.bytes, order[c.form]))
    tol = INT_TOLERANCE * float(np.max(np.abs(w))) if w.size else 0.0
    for c in cands:
        got = c.decode()
        ok = got.shape == w.shape and (np.array_equal(got, w) if c.exact
                                       else float(np.max(np.abs(got - w))) <= tol)
        if ok:
            b.absorb(c.builder)
            nonzero = int(np.count_nonzero(w))
            distinct = int(np.unique(w).size) if w.size else 0
            return c.output, c.form, c.bytes, c.detail, nonzero, distinct
        log.warning("storage %s of %s does not decode to the tensor; trying the next", c.form, name)
    raise AssertionError(f"no storage of {name} decodes to it")  # dense always does
