"""The ``kmeans_tiers`` tensor codec: a dense 2-D table (an embedding) whose rows fall in
tiers, each tier stored as its own ``kmeans_rows`` table (``rowblock_codec``) with its own
codebook size.

Frequency tiers (``nncompress.quantize.row_tiers``) give the rows of tokens the data use a
finer codebook than rows they never use; this codec stores such a table without paying
the finer tier's index width for every row. Section ``tiers`` is the tier of each row (one
symbol per row, Huffman-coded when smaller), then per tier ``t`` the sections
``t{t}_codebooks`` and ``t{t}_indices`` of its rows (in row order) as ``kmeans_rows``
writes them. Metadata: ``tier_count``, ``tier_values`` / ``tier_bits`` (the tier stream's
kind and fixed width) and ``tiers``, one ``{"rows": n, "meta": kmeans_rows metadata}`` per
tier. Lossless on a table whose rows hold at most ``max_codebook`` distinct values per
block of ``rows_per_codebook`` rows of their tier.

Example:
    >>> w = torch.tensor([[0.5, -1.0], [2.0, 2.0], [0.5, 0.5]])
    >>> enc = CODEC.encode(w, tiers=[0, 1, 0])
    >>> [t["rows"] for t in enc.meta["tiers"]], torch.equal(CODEC.decode(enc), w)
    ([2, 1], True)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from nncompress.coding.streams import pack_stream, unpack_stream
from nncompress.errors import ConfigError, FormatError
from nncompress.format.codecs import EncodedTensor, TensorCodec, register_codec
from nncompress.format.schema import need_choice, need_int
from nncompress.quantize.rowblock_codec import CODEC as ROWS

MAX_TIERS = 16
"""Most tiers a table may have."""
_PARAMS = ("tiers", "rows_per_codebook", "huffman", "max_codebook")
_SUB_SECTIONS = ("codebooks", "indices")


def tier_array(tiers: Any, rows: int) -> np.ndarray:
    """``tiers`` (a sequence, array or tensor of one int per row, 0..15) as an int64 array;
    ``ConfigError`` naming what is wrong.

    Example:
        >>> tier_array([0, 1, 1], 3).tolist()
        [0, 1, 1]
    """
    arr = tiers.detach().cpu().numpy() if isinstance(tiers, torch.Tensor) else np.asarray(tiers)
    if arr.ndim != 1 or arr.shape[0] != rows:
        raise ConfigError(f"tiers must give one tier per row ({rows} rows), got shape {list(arr.shape)}")
    if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0 or arr.max() >= MAX_TIERS):
        raise ConfigError(f"tiers must be integers in 0..{MAX_TIERS - 1}, got values "
                          f"{arr.min()}..{arr.max()} of dtype {arr.dtype}")
    return arr.astype(np.int64)


class TierCodec(TensorCodec):
    """Per-row tiers, each a ``kmeans_rows`` table (see the module docstring).

    Params: ``tiers`` (one int per row, required), ``rows_per_codebook`` (rows of a tier per
    codebook; default: the whole tier), ``huffman``, ``max_codebook`` (as ``kmeans_rows``).
    """

    name = "kmeans_tiers"

    def encode(self, tensor: torch.Tensor, **params: Any) -> EncodedTensor:
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise ConfigError(f"codec 'kmeans_tiers' got unknown parameter(s) {unknown}; allowed: {list(_PARAMS)}")
        if tensor.dtype != torch.float32 or tensor.dim() != 2:
            raise ConfigError(f"codec 'kmeans_tiers' stores 2-D float32 tensors, got {tensor.dtype} "
                              f"of shape {list(tensor.shape)}")
        if params.get("tiers") is None:
            raise ConfigError("codec 'kmeans_tiers' needs 'tiers' (one tier per row)")
        rows, cols = tensor.shape
        tiers = tier_array(params["tiers"], rows)
        count = int(tiers.max()) + 1 if tiers.size else 1
        sub_params = {k: params[k] for k in ("rows_per_codebook", "huffman", "max_codebook") if k in params}
        width = max(1, math.ceil(math.log2(max(count, 2))))
        stream, kind = pack_stream(tiers, count, width, params.get("huffman", "auto"))
        sections: dict[str, bytes] = {"tiers": stream}
        meta_tiers, bits_w, bits_o = [], 0, 8 * len(stream)
        for t in range(count):
            idx = np.flatnonzero(tiers == t)
            sub = tensor[torch.from_numpy(idx)] if idx.size else tensor.new_zeros(0, cols)
            enc = ROWS.encode(sub, **sub_params) if idx.size else None
            meta_tiers.append({"rows": int(idx.size), "meta": enc.meta if enc else None})
            for s in _SUB_SECTIONS:
                sections[f"t{t}_{s}"] = enc.sections[s] if enc else b""
            if enc:
                bits_w += enc.meta["bits"]["weights"]
                bits_o += enc.meta["bits"]["other"]
        meta = {"tier_count": count, "tier_values": kind, "tier_bits": width, "tiers": meta_tiers,
                "bits": {"weights": bits_w, "other": bits_o}}
        return EncodedTensor(self.name, [rows, cols], "float32", meta, sections)

    def _parts(self, enc: EncodedTensor) -> tuple[int, list[EncodedTensor | None]]:
        """Validate ``enc`` (untrusted): the tier count and each tier as a ``kmeans_rows`` tensor."""
        where, m = "codec 'kmeans_tiers'", enc.meta
        if enc.dtype != "float32" or len(enc.shape) != 2:
            raise FormatError(f"{where}: dtype {enc.dtype!r} shape {enc.shape}; this codec stores "
                              "2-D float32 tables only")
        count = need_int(m, "tier_count", 1, MAX_TIERS, where)
        need_choice(m, "tier_values", ("fixed", "huffman"), where)
        need_int(m, "tier_bits", max(1, math.ceil(math.log2(max(count, 2)))), 4, where)
        want = {"tiers", *(f"t{t}_{s}" for t in range(count) for s in _SUB_SECTIONS)}
        if set(enc.sections) != want:
            raise FormatError(f"{where}: sections {sorted(enc.sections)} do not match the codec's {sorted(want)}")
        tiers = m.get("tiers")
        if not isinstance(tiers, list) or len(tiers) != count:
            raise FormatError(f"{where}: field 'tiers' must be a list of {count} tier entries")
        rows, cols = enc.shape
        parts: list[EncodedTensor | None] = []
        total = 0
        for t, entry in enumerate(tiers):
            if not isinstance(entry, dict) or set(entry) != {"rows", "meta"}:
                raise FormatError(f"{where}: tier {t} must be an object with keys 'rows' and 'meta'")
            n = need_int(entry, "rows", 0, rows, f"{where} tier {t}")
            total += n
            if n == 0:
                if entry["meta"] is not None or any(enc.sections[f"t{t}_{s}"] for s in _SUB_SECTIONS):
                    raise FormatError(f"{where}: tier {t} has no rows but stores data")
                parts.append(None)
                continue
            if not isinstance(entry["meta"], dict):
                raise FormatError(f"{where}: tier {t} field 'meta' must be an object")
            sub = EncodedTensor(ROWS.name, [n, cols], "float32", entry["meta"],
                                {s: enc.sections[f"t{t}_{s}"] for s in _SUB_SECTIONS})
            ROWS.check(sub)
            parts.append(sub)
        if total != rows:
            raise FormatError(f"{where}: the tiers hold {total} rows, the table has {rows}")
        return count, parts

    def check(self, enc: EncodedTensor) -> None:
        self._parts(enc)

    def decode(self, enc: EncodedTensor) -> torch.Tensor:
        count, parts = self._parts(enc)
        m = enc.meta
        rows, cols = enc.shape
        tiers = unpack_stream(enc.sections["tiers"], m["tier_values"], int(m["tier_bits"]), rows)
        if tiers.size and (tiers.min() < 0 or tiers.max() >= count):
            raise FormatError(f"codec 'kmeans_tiers': tier {int(tiers.max())} out of range; allowed: 0..{count - 1}")
        out = torch.empty(rows, cols, dtype=torch.float32)
        for t, sub in enumerate(parts):
            idx = np.flatnonzero(tiers == t)
            n = 0 if sub is None else sub.shape[0]
            if idx.size != n:
                raise FormatError(f"codec 'kmeans_tiers': {idx.size} rows are of tier {t}, its metadata says {n}")
            if sub is not None:
                out[torch.from_numpy(idx)] = ROWS.decode(sub)
        return out


CODEC = register_codec(TierCodec())
