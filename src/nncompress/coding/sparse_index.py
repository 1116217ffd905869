"""Relative indexing of sparse weights with filler zeros (Deep Compression, P6).

Deep Compression (Han et al. 2016, section 2, figure 2) stores the position of each
nonzero weight as the distance to the previous nonzero in ``index_bits`` bits (8 for
conv layers, 5 for fully connected ones). When a distance is larger than the largest
representable one, "filler" entries are inserted: extra entries whose value is zero.

Here an entry stores ``gap = diff - 1`` in ``[0, 2**index_bits - 1]``, where ``diff`` is
the distance to the previous entry (the first one measured from position -1), so an
entry can jump by 1 to ``2**index_bits`` positions. A distance ``diff`` therefore needs
``ceil(diff / 2**index_bits) - 1`` fillers, each jumping the full ``2**index_bits``.

Example:
    >>> r = encode_relative(np.array([1, 3, 20]), index_bits=3)
    >>> r.gaps.tolist(), r.is_filler.tolist()
    ([1, 1, 7, 7, 0], [False, False, True, True, False])
    >>> decode_relative(r.gaps, 3).tolist()  # fillers at 11 and 19
    [1, 3, 11, 19, 20]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nncompress.coding.bitpack import as_unsigned, check_bits
from nncompress.errors import FormatError, NNCompressError


@dataclass(frozen=True, eq=False)
class RelativeIndex:
    """Relative indices of the nonzeros of a flattened tensor, fillers included.

    ``gaps[i]`` (uint32) is the distance from entry ``i - 1`` minus one; ``is_filler[i]``
    marks the inserted entries whose value is zero.
    """

    gaps: np.ndarray  # (entries,) uint32, each in [0, 2**index_bits - 1]
    is_filler: np.ndarray  # (entries,) bool
    index_bits: int

    @property
    def num_entries(self) -> int:
        """Stored entries: nonzeros plus fillers."""
        return int(self.gaps.size)

    @property
    def num_fillers(self) -> int:
        """Inserted filler entries (each stores a zero value)."""
        return int(np.count_nonzero(self.is_filler))

    @property
    def index_storage_bits(self) -> int:
        """Bits of the fixed-width index stream: ``num_entries * index_bits``."""
        return self.num_entries * self.index_bits


def encode_relative(positions: np.ndarray, index_bits: int) -> RelativeIndex:
    """Relative-index the strictly increasing flat ``positions`` of the nonzeros.

    Raises ``NNCompressError`` for ``index_bits`` outside 1..32, negative or not strictly
    increasing positions.

    Example:
        >>> r = encode_relative(np.array([0, 1, 9]), index_bits=2)
        >>> r.gaps.tolist(), r.is_filler.tolist()
        ([0, 0, 3, 3], [False, False, True, False])
    """
    bits = check_bits(index_bits, "index_bits")
    pos = as_unsigned(positions, "positions").astype(np.int64)  # (nnz,)
    diff = np.diff(pos, prepend=-1)  # (nnz,) distance to the previous nonzero
    if diff.size and diff.min() < 1:
        i = int(np.argmax(diff < 1))
        raise NNCompressError(
            f"positions must be strictly increasing; position {int(pos[i])} at index {i} "
            f"follows {int(pos[i - 1])}"
        )
    span = 1 << bits  # largest jump of one entry
    fillers = (diff - 1) // span  # (nnz,) == ceil(diff / span) - 1
    per = fillers + 1  # entries per nonzero
    real = np.cumsum(per) - 1  # (nnz,) entry index of each nonzero
    total = int(real[-1]) + 1 if real.size else 0
    gaps = np.full(total, span - 1, dtype=np.uint32)  # fillers jump the full span
    gaps[real] = diff - fillers * span - 1
    is_filler = np.ones(total, dtype=bool)
    is_filler[real] = False
    return RelativeIndex(gaps, is_filler, bits)


def decode_relative(gaps: np.ndarray, index_bits: int) -> np.ndarray:
    """Flat positions (int64) of all entries, fillers included, from their ``gaps``.

    Raises ``FormatError`` if a gap does not fit in ``index_bits`` (damaged data).

    Example:
        >>> decode_relative(np.array([0, 0, 3, 3]), 2).tolist()
        [0, 1, 5, 9]
    """
    bits = check_bits(index_bits, "index_bits")
    g = np.asarray(gaps)
    if g.ndim != 1 or not np.issubdtype(g.dtype, np.integer):
        raise NNCompressError(f"gaps must be a 1-D integer array, got {g.dtype} {g.shape}")
    g = g.astype(np.int64)
    if g.size and (g.min() < 0 or g.max() >= 1 << bits):
        i = int(np.argmax((g < 0) | (g >= 1 << bits)))
        raise FormatError(
            f"gap {int(g[i])} at index {i} does not fit in index_bits={bits}; "
            f"allowed: 0..{(1 << bits) - 1}"
        )
    return np.cumsum(g + 1) - 1


def decode_relative_nonfiller(gaps: np.ndarray, is_filler: np.ndarray,
                              index_bits: int = 32) -> np.ndarray:
    """Flat positions (int64) of the nonzeros only: :func:`decode_relative` without the
    entries flagged in ``is_filler``.

    Example:
        >>> decode_relative_nonfiller(np.array([0, 0, 3, 3]), np.array([0, 0, 1, 0], bool)).tolist()
        [0, 1, 9]
    """
    positions = decode_relative(gaps, index_bits)
    filler = np.asarray(is_filler)
    if filler.dtype != np.bool_ or filler.shape != positions.shape:
        raise FormatError(
            f"is_filler must be a bool array of shape {positions.shape}, got "
            f"{filler.dtype} {filler.shape}"
        )
    return positions[~filler]
