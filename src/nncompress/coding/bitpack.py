"""Bit packing of unsigned integers, most significant bit first (Deep Compression, Q2).

Fixed-width packing (``pack_bits``/``unpack_bits``) stores k-means cluster indices and
relative sparse indices in exactly ``bits`` bits each. Variable-width packing
(``pack_codes``) concatenates prefix codes for the Huffman coder.

Bit order: the first value fills the high bits of the first byte ("big-endian" bit
order, as in ``np.packbits``); the last byte is padded with zero bits. Everything is
vectorised: values are summed into 32-bit words (64-bit beyond 4 Gbit; the bit fields of
one word never overlap, so a sum is an OR) and each word is written big-endian.
"""

from __future__ import annotations

import numpy as np

from nncompress.errors import FormatError, NNCompressError

MAX_BITS = 32
"""Widest fixed-width value and longest prefix code this module packs."""

_U64 = np.uint64


def check_bits(bits: int, name: str = "bits", high: int = MAX_BITS) -> int:
    """Return ``bits`` as an int, or raise if it is not an integer in ``1..high``.

    Example:
        >>> check_bits(5)
        5
    """
    if isinstance(bits, (bool, np.bool_)) or not isinstance(bits, (int, np.integer)):
        raise NNCompressError(f"{name}={bits!r} must be an integer in 1..{high}")
    if not 1 <= int(bits) <= high:
        raise NNCompressError(f"{name}={int(bits)} is out of range; allowed: 1..{high}")
    return int(bits)


def as_unsigned(values: np.ndarray, name: str = "values") -> np.ndarray:
    """Flatten ``values`` to a 1-D integer array, raising if a value is negative.

    Booleans are accepted as 0/1; floating-point input is rejected (no silent rounding).

    Example:
        >>> as_unsigned(np.array([[1, 2], [3, 4]])).tolist()
        [1, 2, 3, 4]
    """
    arr = np.asarray(values)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise NNCompressError(f"{name} must have an integer dtype, got {arr.dtype}")
    arr = arr.reshape(-1)
    if arr.size and np.issubdtype(arr.dtype, np.signedinteger):
        low = arr.min()
        if low < 0:
            i = int(np.argmax(arr < 0))
            raise NNCompressError(f"{name} must be >= 0; got {int(low)} at index {i}")
    return arr


def packed_size(count: int, bits: int) -> int:
    """Number of bytes that ``count`` values of ``bits`` bits occupy.

    Example:
        >>> packed_size(3, 5)
        2
    """
    return (count * bits + 7) // 8


def pack_bits(values: np.ndarray, bits: int) -> bytes:
    """Pack unsigned integers into ``bits`` bits each (1..32), MSB first.

    Raises ``NNCompressError`` if ``bits`` is out of range or a value does not fit.

    Example:
        >>> pack_bits(np.array([1, 2, 3]), 2).hex()  # 01 10 11 00
        '6c'
    """
    bits = check_bits(bits)
    vals = as_unsigned(values)  # (n,)
    if vals.size == 0:
        return b""
    high = int(vals.max())
    if high >= 1 << bits:
        i = int(np.argmax(vals >= (1 << bits)))
        raise NNCompressError(
            f"value {high} at index {i} does not fit in bits={bits}; "
            f"allowed: 0..{(1 << bits) - 1}"
        )
    word = word_dtype(vals.size * bits)
    width = 8 * np.dtype(word).itemsize
    left = vals.astype(word) << word(width - bits)  # (n,) left-justified values
    starts = np.arange(vals.size, dtype=word) * word(bits)  # (n,) bit offsets
    return pack_left(left, starts, vals.size * bits)


def unpack_bits(data: bytes, bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: read ``count`` values of ``bits`` bits (int64).

    ``data`` must be exactly ``ceil(count * bits / 8)`` bytes with zero padding bits;
    anything else raises ``FormatError`` (truncated or damaged data).

    Example:
        >>> unpack_bits(bytes.fromhex("6c"), 2, 3).tolist()
        [1, 2, 3]
    """
    bits = check_bits(bits)
    if isinstance(count, (bool, np.bool_)) or not isinstance(count, (int, np.integer)) \
            or count < 0:
        raise NNCompressError(f"count={count!r} must be an integer >= 0")
    count = int(count)
    need = packed_size(count, bits)
    if len(data) != need:
        raise FormatError(
            f"bit-packed data has {len(data)} bytes; {count} values of {bits} bits "
            f"need exactly {need}"
        )
    check_padding(data, count * bits)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    windows = byte_windows(data, 0)
    pos = np.arange(count, dtype=_U64) * _U64(bits)  # (n,) bit offsets
    return read_bits(windows, pos, bits).astype(np.int64)


def pack_codes(codes: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Concatenate variable-length codes; ``codes[i]`` holds ``lengths[i]`` (1..32) bits.

    Returns ``(data, nbits)``: ``nbits`` is the exact number of payload bits and
    ``data`` holds ``ceil(nbits / 8)`` bytes.

    Example:
        >>> pack_codes(np.array([0b1, 0b01]), np.array([1, 2]))
        (b'\\xa0', 3)
    """
    codes = as_unsigned(codes, "codes").astype(_U64)
    lens = as_unsigned(lengths, "lengths").astype(_U64)
    if codes.shape != lens.shape:
        raise NNCompressError(
            f"codes and lengths must have the same size; got {codes.size} and {lens.size}"
        )
    if lens.size and (lens.min() < 1 or lens.max() > MAX_BITS):
        bad = int(lens[(lens < 1) | (lens > MAX_BITS)][0])
        raise NNCompressError(f"code length {bad} is out of range; allowed: 1..{MAX_BITS}")
    if lens.size and np.any(codes >> lens):
        i = int(np.argmax(codes >> lens))
        raise NNCompressError(
            f"code {int(codes[i])} at index {i} does not fit in its length {int(lens[i])}"
        )
    ends = np.cumsum(lens)  # (n,)
    nbits = int(ends[-1]) if ends.size else 0
    word = word_dtype(nbits)
    width = word(8 * np.dtype(word).itemsize)
    codes, lens, ends = codes.astype(word), lens.astype(word), ends.astype(word)
    return pack_left(codes << (width - lens), ends - lens, nbits), nbits


def word_dtype(nbits: int) -> type:
    """Word type for :func:`pack_left`: uint32 (less memory, faster) unless the bit
    offsets of a ``nbits``-bit stream need 64 bits."""
    return np.uint32 if nbits < 1 << 32 else _U64


def pack_left(left: np.ndarray, starts: np.ndarray, nbits: int) -> bytes:
    """Write codes at bit offsets: the low-level writer behind the packers.

    Works on B-bit words, B = 32 or 64, the dtype of ``left`` and ``starts`` (see
    :func:`word_dtype`): ``left`` (n,) holds each code left-justified (its first bit is
    bit B-1), ``starts`` (n,) the increasing bit offset of each code, ``nbits`` the total.
    Codes are 1..32 bits long and must not overlap. Returns ``ceil(nbits / 8)`` bytes.
    """
    nbytes = (nbits + 7) // 8
    n = left.size
    if n == 0:
        return b""
    word = left.dtype.type
    width = 8 * left.dtype.itemsize
    offset = starts & word(width - 1)  # (n,) first bit of each code inside its word
    index = starts >> word(width.bit_length() - 1)  # (n,) the word of each code's first bit
    # the last code starting in each word; every word up to the last code's has one,
    # because codes are at most 32 bits long
    last = np.append(np.flatnonzero(index[1:] != index[:-1]), n - 1)  # (W,)
    # only the last code of a word can spill into the next word
    spill = (left[last] << word(1)) << (word(width - 1) - offset[last])  # (W,)
    first = np.right_shift(left, offset, out=offset)  # (n,) part inside the first word
    running = np.cumsum(first, out=first)  # wraps modulo 2**B, which is exact here
    words = np.zeros((nbits + width - 1) // width + 1, dtype=word)
    # per word, the sum of its disjoint bit fields (== their OR)
    words[: last.size] = np.diff(running[last], prepend=word(0))
    words[1: last.size + 1] |= spill
    return words.astype(words.dtype.newbyteorder(">")).tobytes()[:nbytes]


def byte_windows(data: bytes, pad: int, dtype: type = np.uint64) -> np.ndarray:
    """``w[i]`` = the bytes of ``data`` starting at byte ``i``, as one big-endian word of
    ``dtype`` (uint32: 4 bytes, uint64: 8 bytes).

    ``data`` is extended with zero bytes so that reads past its end see zeros; the result
    has ``len(data) + pad`` entries. A window at bit offset ``p`` is then
    ``w[p >> 3] << (p & 7)``, of which the top ``word bits - 7`` bits are valid.
    """
    width = np.dtype(dtype).itemsize
    raw = np.frombuffer(bytes(data), dtype=np.uint8)
    m = raw.size + pad
    buf = np.zeros(m + width, dtype=np.uint8)
    buf[: raw.size] = raw
    windows = np.zeros(m, dtype=dtype)  # (m,)
    for k in range(width):  # one pass per byte of the word, not a loop over values
        windows |= buf[k: k + m].astype(dtype) << dtype(8 * (width - 1 - k))
    return windows


def read_bits(windows: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """Read ``width`` (1..57) bits at each bit offset ``pos`` (uint64) from ``windows``
    as built by :func:`byte_windows`; returns uint64."""
    win = windows[pos >> _U64(3)] << (pos & _U64(7))
    return win >> _U64(64 - width)


def check_padding(data: bytes, nbits: int) -> None:
    """Raise ``FormatError`` unless the bits after ``nbits`` in the last byte are zero."""
    spare = 8 * len(data) - nbits
    if 0 < spare < 8 and data[-1] & ((1 << spare) - 1):
        raise FormatError(
            f"padding bits after bit {nbits} are not zero; the data is damaged"
        )
