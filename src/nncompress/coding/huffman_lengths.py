"""Code lengths of a canonical, length-limited Huffman code (Deep Compression, Q2): optimal
lengths by package-merge (Larmore & Hirschberg 1990), canonical code assignment in
(length, symbol) order, and validation of a length table (0..32 bits, Kraft sum <= 1).
Pure numpy functions; the coder that uses them is ``nncompress.coding.huffman``.
"""

from __future__ import annotations

import numpy as np

from nncompress.coding.bitpack import MAX_BITS, check_bits
from nncompress.errors import NNCompressError

DEFAULT_MAX_LEN = 24
"""Default code length limit: long enough never to bind for realistic weight indices."""

_U64 = np.uint64


def code_lengths(freqs: np.ndarray, max_len: int = DEFAULT_MAX_LEN) -> np.ndarray:
    """Optimal prefix-code lengths for ``freqs`` with no code longer than ``max_len``.

    Returns a uint8 array of the same size: 0 for absent symbols (frequency 0), 1 when
    exactly one symbol is present. The lengths minimise ``sum(freqs * lengths)`` subject
    to ``lengths <= max_len`` (package-merge), so when the Huffman code fits in
    ``max_len`` bits the total equals Huffman's; when it does not, the longest codes are
    shortened and some short codes lengthened at the smallest possible cost. Ties are
    broken deterministically (lower symbol first among equal frequencies).

    Raises ``NNCompressError`` for negative or non-finite frequencies, ``max_len``
    outside 1..32, or more present symbols than ``2**max_len``.

    Example:
        >>> code_lengths(np.array([1, 1, 2, 4])).tolist()
        [3, 3, 2, 1]
        >>> code_lengths(np.array([1, 1, 2, 4]), max_len=2).tolist()
        [2, 2, 2, 2]
    """
    max_len = check_bits(max_len, "max_len")
    f = np.asarray(freqs)
    if f.ndim != 1:
        raise NNCompressError(f"freqs must be 1-D, got shape {f.shape}")
    if f.dtype == np.bool_ or not (np.issubdtype(f.dtype, np.integer)
                                   or np.issubdtype(f.dtype, np.floating)):
        raise NNCompressError(f"freqs must be integer or float, got dtype {f.dtype}")
    if f.size and not np.all(np.isfinite(f)):
        raise NNCompressError("freqs must be finite")
    if f.size and f.min() < 0:
        i = int(np.argmax(f < 0))
        raise NNCompressError(f"freqs must be >= 0; got {f[i]} at index {i}")
    lengths = np.zeros(f.size, dtype=np.uint8)
    present = np.flatnonzero(f > 0)
    n = present.size
    if n == 0:
        return lengths
    if n == 1:
        lengths[present] = 1
        return lengths
    if n > 1 << max_len:
        raise NNCompressError(
            f"{n} present symbols cannot have codes of at most max_len={max_len} bits; "
            f"allowed: at most {1 << max_len} symbols"
        )
    weights = f[present].astype(np.float64 if np.issubdtype(f.dtype, np.floating)
                                else np.int64)
    order = np.argsort(weights, kind="stable")
    lengths[present[order]] = _package_merge(weights[order], min(max_len, n - 1))
    return lengths


def _package_merge(w: np.ndarray, levels: int) -> np.ndarray:
    """Length-limited code lengths for ascending weights ``w`` (n >= 2) by package-merge.

    The list of the deepest level holds the leaves; each level up merges the leaves with
    the pairwise "packages" of the level below. Selecting the 2n-2 cheapest items of the
    top list and following the packages down gives each leaf's length: the number of
    levels in which it is selected (always a prefix of the sorted leaves).
    """
    n = w.size
    leaf_idx = np.arange(n)
    is_leaf_levels = [np.ones(n, dtype=bool)]  # deepest level first
    cur = w
    for _ in range(levels - 1):  # one merge per level, at most 32
        k = cur.size // 2
        pk = cur[0: 2 * k: 2] + cur[1: 2 * k: 2]  # (k,) packages, ascending
        pos_leaf = leaf_idx + np.searchsorted(pk, w, side="left")  # leaves win ties
        pos_pk = np.arange(k) + np.searchsorted(w, pk, side="right")
        cur = np.empty(n + k, dtype=w.dtype)
        cur[pos_leaf] = w
        cur[pos_pk] = pk
        is_leaf = np.zeros(n + k, dtype=bool)
        is_leaf[pos_leaf] = True
        is_leaf_levels.append(is_leaf)
    selected_leaves = []  # per level, top first: how many of the sorted leaves
    c = 2 * n - 2
    for is_leaf in reversed(is_leaf_levels):
        m = int(np.count_nonzero(is_leaf[:c]))
        selected_leaves.append(m)
        c = 2 * (c - m)
    m_sorted = np.sort(np.array(selected_leaves))
    # length of leaf i = number of levels with i < m
    return levels - np.searchsorted(m_sorted, leaf_idx, side="right")


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical codes (uint64) for ``lengths``: symbols sorted by (length, symbol) get
    consecutive codes, each code the previous plus one, shifted left when the length grows.

    Raises ``NNCompressError`` if a length exceeds 32 or the lengths violate the Kraft
    inequality (no prefix code exists).

    Example:
        >>> [bin(c) for c in canonical_codes(np.array([2, 1, 3, 3]))]
        ['0b10', '0b0', '0b110', '0b111']
    """
    lens = check_lengths(lengths, NNCompressError)
    codes = np.zeros(lens.size, dtype=_U64)
    top = int(lens.max()) if lens.size else 0
    if top == 0:
        return codes
    order = np.lexsort((np.arange(lens.size), lens))  # by length, then symbol
    order = order[lens[order] > 0]
    span = np.left_shift(1, top - lens[order])  # (n,) interval of each code at depth top
    left = np.cumsum(span) - span  # left-justified codes, consecutive intervals
    codes[order] = (left >> (top - lens[order])).astype(_U64)
    return codes


def check_lengths(lengths: np.ndarray, error: type[NNCompressError]) -> np.ndarray:
    """Validate code lengths (0..32, Kraft sum <= 1); returns them as int64."""
    arr = np.asarray(lengths)
    if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_):
        raise error(f"code lengths must be a 1-D integer array, got {arr.dtype} {arr.shape}")
    lens = arr.astype(np.int64)
    if lens.size and (lens.min() < 0 or lens.max() > MAX_BITS):
        bad = int(lens[(lens < 0) | (lens > MAX_BITS)][0])
        raise error(f"code length {bad} is out of range; allowed: 0..{MAX_BITS}")
    kraft = int(np.left_shift(1, MAX_BITS - lens[lens > 0]).sum())
    if kraft > 1 << MAX_BITS:
        raise error(
            f"code lengths violate the Kraft inequality (sum of 2**-length = "
            f"{kraft / 2 ** MAX_BITS:.6g} > 1); no prefix code has these lengths"
        )
    return lens
