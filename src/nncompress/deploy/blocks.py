"""Storage forms for weights compressed per block: one codebook per block of rows
(``kmeans_rows``) and a uniform grid per (row, group of columns) (``gptq``).

Neither is a single-codebook or per-channel tensor, so :func:`nncompress.deploy.storage.
encode_tensor` would store them dense. Both become small initializers plus constant
decoding nodes, which onnxruntime folds into the float weight when the session is created:

* ``block-shared``: the ``blocks x K`` codebooks as one flat float table and one
  ``ceil(log2 K)``-bit index per element (bit-packed as in ``storage``); the graph adds the
  block's offset ``block * K`` to each index (a broadcast ``Add`` of a ``[blocks, 1, 1]``
  constant) and ``Gather``\\ s.
* ``grouped-int``: codes ``u`` in ``b`` bits (the width the codes need), one float16 scale
  and one uint8 zero point per (row, group); the graph computes ``(u - z) * s`` with
  ``Cast``/``Sub``/``Mul`` broadcast over ``[rows, groups, group_size]``.

The forms are found from the values (a hint gives the block or group size to try), and
each candidate is decoded in numpy and compared bit for bit before it is accepted.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from nncompress.deploy.graph import GraphBuilder
from nncompress.deploy.storage import Encoded, _codes, bits_for, decode_codes


def _onnx():
    from onnx import TensorProto

    return TensorProto


def block_codebooks(w: np.ndarray, rows_per_block: int, max_k: int = 256):
    """``(codebooks [blocks, K], indices [rows, cols])`` with ``w[r] == codebooks[r //
    rows_per_block][indices[r]]``, or None when some block has more than ``max_k`` values.

    Example:
        >>> w = np.array([[1., 2.], [2., 1.], [5., 5.]], np.float32)
        >>> books, idx = block_codebooks(w, 2)
        >>> books.tolist(), idx.tolist()
        ([[1.0, 2.0], [5.0, 5.0]], [[0, 1], [1, 0], [0, 0]])
    """
    rows = w.shape[0]
    flat = w.reshape(rows, -1)
    blocks = -(-rows // rows_per_block)
    uniques, idx = [], np.empty(flat.shape, np.int64)
    for k in range(blocks):
        part = flat[k * rows_per_block:(k + 1) * rows_per_block]
        u, inv = np.unique(part, return_inverse=True)
        if u.size > max_k:
            return None
        uniques.append(u)
        idx[k * rows_per_block:(k + 1) * rows_per_block] = inv.reshape(part.shape)
    k_max = max(u.size for u in uniques)
    books = np.stack([np.concatenate([u, np.full(k_max - u.size, u[-1], u.dtype)]) for u in uniques])
    return books.astype(np.float32), idx


def _block_shared(b: GraphBuilder, name: str, w: np.ndarray, rows_per_block: int) -> Encoded | None:
    found = block_codebooks(w, rows_per_block)
    if found is None:
        return None
    books, idx = found
    blocks, k = books.shape
    rows = w.shape[0]
    cols = idx.shape[1]
    bits = bits_for(k)
    pad_rows = blocks * rows_per_block
    padded = np.zeros((pad_rows, cols), np.int64)
    padded[:rows] = idx
    codes = _codes(b, padded, bits, name + ".idx", shape=(blocks, rows_per_block, cols))
    offsets = b.const((np.arange(blocks, dtype=np.int32) * k).reshape(blocks, 1, 1), name + ".offsets")
    glob = b.node("Add", [codes, offsets])
    table = b.const(books.ravel(), name + ".codebooks")
    dense = b.node("Gather", [table, glob], axis=0)
    dense = b.node("Reshape", [dense, b.int64s([pad_rows, cols])])
    if pad_rows != rows:
        dense = b.node("Slice", [dense, b.int64s([0], "zero1"), b.int64s([rows], "rows"), b.int64s([0], "zero1")])
    out = b.node("Reshape", [dense, b.int64s(list(w.shape))], hint=name)

    def decode() -> np.ndarray:
        ii = decode_codes(padded, bits).reshape(blocks, rows_per_block, cols) + (np.arange(blocks) * k)[:, None, None]
        return books.ravel()[ii].reshape(pad_rows, cols)[:rows].reshape(w.shape)

    detail = f"{blocks} blocks of {rows_per_block} rows x {k} values, {bits}-bit indices + Gather"
    return Encoded("block-shared", b, out, detail, decode)


def group_grid(w: np.ndarray, group: int, max_bits: int = 8):
    """``(codes u [rows, groups, group], zero [rows, groups, 1] uint8, scale fp16 [rows,
    groups, 1], bits)`` with ``w == (u - zero) * scale`` exactly in float32 (columns padded
    with zeros to whole groups), or None when ``w`` is not on such a grid.

    Example:
        >>> w = np.array([[0.5, -0.5, 0.0, 1.0]], np.float32)
        >>> u, z, s, bits = group_grid(w, 4)
        >>> u.ravel().tolist(), int(z.ravel()[0]), float(s.ravel()[0]), bits
        ([2, 0, 1, 3], 1, 0.5, 2)
    """
    rows = w.shape[0]
    flat = w.reshape(rows, -1).astype(np.float32)
    cols = flat.shape[1]
    groups = -(-cols // group)
    pad = np.zeros((rows, groups * group), np.float32)
    pad[:, :cols] = flat
    g = pad.reshape(rows, groups, group)
    srt = np.sort(g, axis=2)
    diffs = np.diff(srt, axis=2)
    diffs[diffs <= 0] = np.inf
    base = diffs.min(axis=2, keepdims=True)
    single = ~np.isfinite(base)  # one value in the group: the scale is that value / k
    base[single] = np.where(srt[:, :, :1][single] != 0, np.abs(srt[:, :, :1][single]), 1.0)
    # the true scale divides the smallest gap: try gap / k, smaller k first, per group
    scale = np.zeros_like(base, dtype=np.float16)
    todo = np.ones(base.shape, bool)
    for k in range(1, 9):
        with np.errstate(over="ignore"):
            cand = (base / k).astype(np.float16)
        c32 = cand.astype(np.float32)
        ok = np.isfinite(c32) & (c32 > 0)
        safe = np.where(ok, c32, 1.0)
        t = np.rint(g / safe)
        fits = ok & np.all((t * safe) == g, axis=2, keepdims=True) & todo
        scale[fits] = cand[fits]
        todo &= ~fits
        if not todo.any():
            break
    if todo.any():
        return None
    s32 = scale.astype(np.float32)
    t = np.rint(g / s32)
    zero = np.maximum(0.0, -t.min(axis=2, keepdims=True))  # a group above its grid's zero keeps 0
    u = t + zero
    bits = bits_for(int(u.max()) + 1)
    if bits > max_bits or zero.min() < 0 or zero.max() > 255:
        return None
    if not np.array_equal((u - zero).astype(np.float32) * s32, g):
        return None
    return u.astype(np.int64), zero.astype(np.uint8), scale, bits


def _grouped_int(b: GraphBuilder, name: str, w: np.ndarray, group: int) -> Encoded | None:
    found = group_grid(w, group)
    if found is None:
        return None
    u, zero, scale, bits = found
    rows, groups, size = u.shape
    cols = int(np.prod(w.shape[1:])) if w.ndim > 1 else w.size
    TensorProto = _onnx()
    codes = _codes(b, u, bits, name + ".q", shape=u.shape)
    f = b.node("Cast", [codes], to=TensorProto.FLOAT)
    z = b.node("Cast", [b.const(zero, name + ".zp")], to=TensorProto.FLOAT)
    s = b.node("Cast", [b.const(scale, name + ".scale")], to=TensorProto.FLOAT)
    dense = b.node("Mul", [b.node("Sub", [f, z]), s])
    dense = b.node("Reshape", [dense, b.int64s([rows, groups * size])])
    if groups * size != cols:
        dense = b.node("Slice", [dense, b.int64s([0], "zero1"), b.int64s([cols], "cols"), b.int64s([1], "one1")])
    out = b.node("Reshape", [dense, b.int64s(list(w.shape))], hint=name)

    def decode() -> np.ndarray:
        uu = decode_codes(u, bits).reshape(u.shape)
        d = (uu - zero.astype(np.int64)).astype(np.float32) * scale.astype(np.float32)
        return d.reshape(rows, -1)[:, :cols].reshape(w.shape)

    detail = (f"{bits}-bit codes, fp16 scale + uint8 zero per (row, group of {size}) "
              f"({rows * groups:,} groups) + Cast/Sub/Mul")
    return Encoded("grouped-int", b, out, detail, decode)


def block_candidates(parent: GraphBuilder, name: str, w: np.ndarray, rows_per_block: Iterable[int] = (),
                     groups: Iterable[int] = ()):
    """The ``block-shared`` and ``grouped-int`` storages of ``w`` that apply, for each
    block size in ``rows_per_block`` and group size in ``groups``."""
    if w.ndim < 2 or w.size < 16 or not np.all(np.isfinite(w)):
        return
    for r in sorted({int(r) for r in rows_per_block if 0 < int(r) < w.shape[0]}):
        c = _block_shared(parent.child(), name, w, r)
        if c is not None:
            yield c
    cols = w.size // w.shape[0]
    for gsz in sorted({min(int(g), cols) for g in groups if int(g) > 0}):
        c = _grouped_int(parent.child(), name, w, gsz)
        if c is not None:
            yield c
