"""The ``kmeans_rows`` tensor codec: a dense 2-D table (an embedding) whose rows are split
into blocks of ``rows_per_codebook`` rows, each block with its own small codebook.

Every element is stored as an index into its block's codebook; the indices of the whole
table form one symbol stream, Huffman-coded when that is smaller than fixed-width
(``nncompress.coding.streams``). Unlike ``deep`` it stores no positions (the table is
dense), which saves the 1 bit per weight ``deep`` spends on relative indices of a table
without zeros. One block (``rows_per_codebook`` >= rows) is one codebook per table.

Layout: section ``codebooks`` holds ``blocks x K`` centroids (fp16 when every centroid
survives the round trip, else fp32; blocks with fewer than K distinct values repeat their
largest one), section ``indices`` the index stream. Metadata: ``rows_per_codebook``,
``codebook_size`` (K), ``value_bits`` (fixed width), ``values`` (stream kind),
``codebook_dtype``. Lossless on a table with at most ``max_codebook`` distinct values
per block (the result of k-means sharing, ``SharingConfig(bits_emb=...)``).

Example:
    >>> w = torch.tensor([[0.5, -1.0], [0.5, 0.5], [2.0, 3.0]])
    >>> enc = CODEC.encode(w, rows_per_codebook=2)
    >>> enc.meta["codebook_size"], torch.equal(CODEC.decode(enc), w)
    (2, True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from nncompress.coding.streams import pack_stream, unpack_stream
from nncompress.errors import ConfigError, FormatError
from nncompress.format.codecs import EncodedTensor, TensorCodec, register_codec
from nncompress.format.schema import need_choice, need_int, need_length, need_sections

MAX_CODEBOOK = 65536
_PARAMS = ("rows_per_codebook", "huffman", "max_codebook")


def block_count(rows: int, rows_per_codebook: int) -> int:
    """Number of row blocks: ``ceil(rows / rows_per_codebook)`` (at least 1).

    Example:
        >>> block_count(30522, 1024)
        30
    """
    return max(1, -(-rows // rows_per_codebook))


class RowBlockCodec(TensorCodec):
    """Per-block-of-rows codebooks + one index stream (see the module docstring).

    Params: ``rows_per_codebook`` (>= 1, default: all rows), ``huffman`` ('auto', 'yes',
    'no'), ``max_codebook`` (largest K allowed, default 65536).
    """

    name = "kmeans_rows"

    def encode(self, tensor: torch.Tensor, **params: Any) -> EncodedTensor:
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise ConfigError(f"codec 'kmeans_rows' got unknown parameter(s) {unknown}; allowed: {list(_PARAMS)}")
        if tensor.dtype != torch.float32 or tensor.dim() != 2:
            raise ConfigError(f"codec 'kmeans_rows' stores 2-D float32 tensors, got {tensor.dtype} "
                              f"of shape {list(tensor.shape)}")
        rows, cols = tensor.shape
        rpc = params.get("rows_per_codebook")
        rpc = max(rows, 1) if rpc is None else rpc
        if isinstance(rpc, bool) or not isinstance(rpc, int) or rpc < 1:
            raise ConfigError(f"rows_per_codebook={rpc!r} not allowed; allowed: an integer >= 1")
        huff = params.get("huffman", "auto")
        max_cb = params.get("max_codebook", MAX_CODEBOOK)
        w = tensor.detach().cpu().numpy()
        if not np.isfinite(w).all():
            raise ConfigError("codec 'kmeans_rows' cannot store NaN/inf values")
        nblocks = block_count(rows, rpc)
        books = [np.unique(w[b * rpc:(b + 1) * rpc]) for b in range(nblocks)]
        k = max((cb.size for cb in books), default=1) or 1
        if k > max_cb:
            raise ConfigError(f"a block of {rpc} rows has {k} distinct values; codec 'kmeans_rows' "
                              f"allows at most max_codebook={max_cb}: share the weights (k-means) first")
        table = np.empty((nblocks, k), dtype=np.float32)  # (blocks, K)
        symbols = np.empty((rows, cols), dtype=np.int64)
        for b, cb in enumerate(books):
            if cb.size == 0:
                table[b] = 0.0
                continue
            table[b, :cb.size], table[b, cb.size:] = cb, cb[-1]
            symbols[b * rpc:(b + 1) * rpc] = np.searchsorted(cb, w[b * rpc:(b + 1) * rpc])
        width = max(1, math.ceil(math.log2(max(k, 2))))
        data, kind = pack_stream(symbols.reshape(-1), k, width, huff)
        half = table.astype(np.float16)
        exact = bool(np.array_equal(half.astype(np.float32), table))
        cb_bytes = (half if exact else table).tobytes()
        meta = {"rows_per_codebook": int(min(rpc, max(rows, 1))), "codebook_size": int(k), "value_bits": width,
                "values": kind, "codebook_dtype": "float16" if exact else "float32",
                "bits": {"weights": 8 * len(data), "other": 8 * len(cb_bytes)}}
        return EncodedTensor(self.name, [rows, cols], "float32", meta,
                             {"codebooks": cb_bytes, "indices": data})

    def check(self, enc: EncodedTensor) -> None:
        where, m = "codec 'kmeans_rows'", enc.meta
        if enc.dtype != "float32" or len(enc.shape) != 2:
            raise FormatError(f"{where}: dtype {enc.dtype!r} shape {enc.shape}; this codec stores "
                              "2-D float32 tables only")
        need_sections(enc.sections, ["codebooks", "indices"], where)
        rows = enc.shape[0]
        rpc = need_int(m, "rows_per_codebook", 1, max(rows, 1), where)
        k = need_int(m, "codebook_size", 1, MAX_CODEBOOK, where)
        need_int(m, "value_bits", max(1, math.ceil(math.log2(max(k, 2)))), 17, where)
        need_choice(m, "values", ("fixed", "huffman"), where)
        cb = need_choice(m, "codebook_dtype", ("float32", "float16"), where)
        size = block_count(rows, rpc) * k * (2 if cb == "float16" else 4)
        need_length(enc.sections["codebooks"], size, f"{where}: section 'codebooks'")

    def decode(self, enc: EncodedTensor) -> torch.Tensor:
        self.check(enc)
        m = enc.meta
        rows, cols = enc.shape
        rpc, k = int(m["rows_per_codebook"]), int(m["codebook_size"])
        table = np.frombuffer(enc.sections["codebooks"], dtype=m["codebook_dtype"])
        table = table.astype(np.float32)  # (blocks * K,)
        n = rows * cols
        idx = unpack_stream(enc.sections["indices"], m["values"], int(m["value_bits"]), n)
        if idx.size and idx.max() >= k:
            raise FormatError(f"codec 'kmeans_rows': codebook index {int(idx.max())} out of range; "
                              f"allowed: 0..{k - 1}")
        idx = idx.reshape(rows, cols)
        idx += (np.arange(rows, dtype=np.int64) // rpc * k)[:, None]  # global centroid index
        return torch.from_numpy(table[idx])


CODEC = register_codec(RowBlockCodec())
