"""Canonical, length-limited Huffman coding, vectorised (Deep Compression, Q2).

Deep Compression (Han et al. 2016, arXiv 1510.00149, section 4) Huffman-codes the
quantized weight indices and the sparse relative indices. This module does it in numpy
with no Python loop per symbol:

* ``code_lengths`` (``huffman_lengths``): optimal code lengths under a length limit by package-merge
  (Larmore & Hirschberg 1990), which equals plain Huffman when the limit does not bind.
* ``canonical_codes``: codes assigned in (length, symbol) order, so the table is fully
  described by the lengths (one uint8 per symbol).
* ``encode``: look up (code, length) per symbol -- per pair, triple or quadruple of
  symbols for small alphabets, from a joint table of at most 2**16 entries -- take
  cumulative bit offsets and sum the codes into 32-bit words (``bitpack``). The bit
  offset of every ``sync_every``-th symbol is recorded as a sync point.
* ``decode``: the sync points split the stream into chunks that are decoded in parallel
  lanes, one symbol of every lane per step; a step is a vectorised gather of a
  ``max_length``-bit window and a lookup in a ``2**max_length`` table (or a binary
  search of the canonical code intervals when ``max_length > 16``).

Example:
    >>> x = np.array([0, 0, 0, 1, 2, 0, 1])
    >>> table = HuffmanTable.from_symbols(x)
    >>> stream = encode(x, table)
    >>> stream.nbits, decode(stream, table).tolist()
    (10, [0, 0, 0, 1, 2, 0, 1])
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from nncompress.coding.bitpack import (
    MAX_BITS,
    as_unsigned,
    byte_windows,
    check_padding,
    pack_bits,
    pack_left,
    unpack_bits,
    word_dtype,
)
from nncompress.coding.huffman_lengths import (
    DEFAULT_MAX_LEN,
    canonical_codes,
    check_lengths,
    code_lengths,
)
from nncompress.errors import FormatError, NNCompressError

TABLE_MAX_BITS = 16
"""Longest code length decoded by a single lookup table (2**16 entries); longer codes
are decoded by a binary search over the canonical code intervals."""

GROUP_MIN_SYMBOLS = 4096
"""Inputs at least this long are encoded with joint lookups of several symbols."""

_MAGIC = b"NNHF"
_STREAM_HEADER = struct.Struct("<4sQQIQB")  # magic, count, nbits, sync_every, sync base/width
_TABLE_HEADER = struct.Struct("<I")  # alphabet_size
_CRC = struct.Struct("<I")
_U64 = np.uint64


@dataclass(frozen=True, eq=False)
class HuffmanTable:
    """A canonical Huffman code, fully described by one length per symbol.

    ``lengths[s]`` is the code length of symbol ``s`` (0: the symbol has no code).

    Example:
        >>> t = HuffmanTable.from_frequencies(np.array([5, 0, 1, 1]))
        >>> t.lengths.tolist(), t.codes.tolist()
        ([1, 0, 2, 2], [0, 0, 2, 3])
    """

    lengths: np.ndarray  # (alphabet_size,) uint8

    def __post_init__(self) -> None:
        lens = check_lengths(self.lengths, NNCompressError).astype(np.uint8)
        lens.flags.writeable = False
        object.__setattr__(self, "lengths", lens)

    @classmethod
    def from_frequencies(cls, freqs: np.ndarray,
                         max_len: int = DEFAULT_MAX_LEN) -> HuffmanTable:
        """Table with the optimal lengths for ``freqs`` (see :func:`code_lengths`).

        Example:
            >>> HuffmanTable.from_frequencies(np.array([3, 1])).lengths.tolist()
            [1, 1]
        """
        return cls(code_lengths(freqs, max_len))

    @classmethod
    def from_symbols(cls, symbols: np.ndarray, alphabet_size: int | None = None,
                     max_len: int = DEFAULT_MAX_LEN) -> HuffmanTable:
        """Table built from the symbol counts of ``symbols`` (non-negative integers).

        ``alphabet_size`` defaults to ``max(symbols) + 1``.

        Example:
            >>> HuffmanTable.from_symbols(np.array([2, 2, 0]), alphabet_size=4).lengths.tolist()
            [1, 0, 1, 0]
        """
        sym = as_unsigned(symbols, "symbols")
        if alphabet_size is None:
            alphabet_size = int(sym.max()) + 1 if sym.size else 0
        if isinstance(alphabet_size, bool) or not isinstance(alphabet_size, (int, np.integer)) \
                or alphabet_size < 0:
            raise NNCompressError(f"alphabet_size={alphabet_size!r} must be an integer >= 0")
        if sym.size and int(sym.max()) >= alphabet_size:
            raise NNCompressError(
                f"symbol {int(sym.max())} is outside the alphabet; allowed: "
                f"0..{int(alphabet_size) - 1}"
            )
        return cls.from_frequencies(np.bincount(sym, minlength=int(alphabet_size)), max_len)

    @property
    def alphabet_size(self) -> int:
        """Number of symbols the table covers (present or not)."""
        return int(self.lengths.size)

    @property
    def max_length(self) -> int:
        """Longest code length (0 for an empty table)."""
        return int(self.lengths.max()) if self.lengths.size else 0

    @property
    def overhead_bits(self) -> int:
        """Bits :func:`to_bytes` spends on the table: alphabet size + one byte per symbol."""
        return 8 * (_TABLE_HEADER.size + self.alphabet_size)

    @cached_property
    def codes(self) -> np.ndarray:
        """Canonical code of every symbol (uint64, 0 for absent symbols)."""
        codes = canonical_codes(self.lengths)
        codes.flags.writeable = False
        return codes

    def payload_bits(self, freqs: np.ndarray) -> int:
        """Exact payload bits for symbol counts ``freqs``: ``sum(freqs * lengths)``.

        Example:
            >>> HuffmanTable(np.array([1, 2, 2])).payload_bits(np.array([4, 1, 1]))
            8
        """
        f = np.asarray(freqs, dtype=np.int64)
        if f.shape != self.lengths.shape:
            raise NNCompressError(
                f"freqs has shape {f.shape}; allowed: ({self.alphabet_size},)"
            )
        return int(np.dot(f, self.lengths.astype(np.int64)))

    @cached_property
    def _encoder(self) -> tuple[np.ndarray, np.ndarray]:
        """(length, code left-justified in 32 bits) per symbol, uint32 (alphabet_size,)."""
        return _left_justify(self.codes, self.lengths.astype(_U64), self.lengths > 0)

    @cached_property
    def _grouped(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(g, length, left-justified code) of every g-tuple of symbols, indexed by the
        tuple read as a base-``alphabet_size`` number (length 0 if a symbol is absent).

        ``g`` is the most symbols (up to 4) whose joint table has at most 2**16 entries
        and whose joint code fits in 32 bits; joint lookups halve (or better) the work
        of the encoder on small alphabets such as k-means indices.
        """
        a, top = self.alphabet_size, self.max_length
        g = 1
        while g < 4 and a ** (g + 1) <= 1 << 16 and (g + 1) * top <= MAX_BITS:
            g += 1
        lens = self.lengths.astype(_U64)
        codes, total, valid = self.codes, lens, lens > 0
        for _ in range(g - 1):  # append one more symbol to every tuple
            codes = ((codes[:, None] << lens[None, :]) | self.codes[None, :]).reshape(-1)
            total = (total[:, None] + lens[None, :]).reshape(-1)
            valid = (valid[:, None] & (lens > 0)[None, :]).reshape(-1)
        return (g, *_left_justify(codes, total, valid))

    @cached_property
    def _decoder(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(symbol by index, length by index, sorted interval ends or None).

        With a lookup table (``max_length <= TABLE_MAX_BITS``) the index is the
        ``max_length``-bit window itself; otherwise it is the rank of the code in
        canonical order, found by binary search over the interval ends. The last entry of
        both arrays (index = size) is reserved for invalid windows: symbol -1, length 0.
        """
        lens = self.lengths.astype(np.int64)
        top = self.max_length
        order = np.lexsort((np.arange(lens.size), lens))
        order = order[lens[order] > 0]  # (n,) symbols in canonical order
        span = np.left_shift(1, top - lens[order])  # (n,)
        if top <= TABLE_MAX_BITS:
            size = 1 << top
            sym = np.full(size + 1, -1, dtype=np.int64)
            ln = np.zeros(size + 1, dtype=_U64)
            used = int(span.sum())
            sym[:used] = np.repeat(order, span)
            ln[:used] = np.repeat(lens[order], span)
            return sym, ln, None
        sym = np.append(order, -1).astype(np.int64)
        ln = np.append(lens[order], 0).astype(_U64)
        ends = np.cumsum(span).astype(_U64)
        return sym, ln, ends

    @cached_property
    def _prefix(self) -> tuple[int, np.ndarray, np.ndarray]:
        """(P, symbol, length) of every P-bit prefix, ``P = min(max_length, TABLE_MAX_BITS)``:
        the code a window starting with that prefix begins with; length 0 (symbol -1) when
        the prefix is invalid or begins a code longer than P bits."""
        sym, ln, ends = self._decoder
        if ends is None:  # the decoder's own table covers every code
            return self.max_length, sym, ln.astype(np.uint8)
        p = TABLE_MAX_BITS
        lens = self.lengths.astype(np.int64)
        order = np.lexsort((np.arange(lens.size), lens))
        order = order[(lens[order] > 0) & (lens[order] <= p)]  # short codes, canonical order
        span = np.left_shift(1, p - lens[order])
        used = int(span.sum())
        sym = np.full(1 << p, -1, dtype=np.int64)
        ln = np.zeros(1 << p, dtype=np.uint8)
        sym[:used] = np.repeat(order, span)
        ln[:used] = np.repeat(lens[order], span)
        return p, sym, ln


@dataclass(frozen=True, eq=False)
class EncodedStream:
    """A Huffman-coded symbol stream.

    ``data`` holds ``ceil(nbits / 8)`` bytes; ``nbits`` is exactly the sum of the code
    lengths; ``sync[j]`` is the bit offset of symbol ``j * sync_every`` (int64,
    ``ceil(count / sync_every)`` entries), which lets the decoder work on all chunks at
    once.
    """

    data: bytes
    nbits: int
    count: int
    sync: np.ndarray  # (ceil(count / sync_every),) int64 bit offsets
    sync_every: int

    @property
    def sync_base(self) -> int:
        """Smallest chunk size in bits; serialized sync deltas are stored minus this."""
        return int(np.diff(self.sync).min()) if self.sync.size > 1 else 0

    @property
    def sync_width(self) -> int:
        """Bits per serialized sync delta: enough for the widest chunk minus ``sync_base``."""
        if self.sync.size < 2:
            return 1
        return max(1, (int(np.diff(self.sync).max()) - self.sync_base).bit_length())

    @property
    def overhead_bits(self) -> int:
        """Bits :func:`to_bytes` spends on this stream beyond the payload ``nbits``:
        header, sync deltas, checksum and the zero padding of the last payload byte
        (the table's own bits are ``HuffmanTable.overhead_bits``)."""
        sync_bits = 8 * ((max(self.sync.size - 1, 0) * self.sync_width + 7) // 8)
        pad = 8 * len(self.data) - self.nbits
        return 8 * (_STREAM_HEADER.size + _CRC.size) + sync_bits + pad


def _left_justify(codes: np.ndarray, lengths: np.ndarray,
                  valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(length, code shifted to the top of 32 bits), uint32; both 0 where not ``valid``."""
    lens = np.where(valid, lengths, _U64(0))
    left = np.where(valid, codes << ((_U64(32) - lens) & _U64(63)), _U64(0))
    return lens.astype(np.uint32), left.astype(np.uint32)


def default_sync_every(count: int) -> int:
    """Sync interval used by :func:`encode`: the power of two nearest ``sqrt(count)``,
    clamped to 64..256. The decoder runs one vectorised step per symbol of a chunk, so a
    stream costs ``sync_every`` steps whatever its length: a cap of 256 keeps a
    transformer's 40 tensors of ~0.1-12M symbols at ~10k steps in all, while the sync
    points (a few bits per 256 symbols) cost about 1% of a 4-bit payload.

    Example:
        >>> default_sync_every(1_000_000), default_sync_every(10_000)
        (256, 128)
    """
    if count <= 1:
        return 64
    return int(np.clip(1 << round(np.log2(count) / 2), 64, 256))


def encode(symbols: np.ndarray, table: HuffmanTable,
           sync_every: int | None = None) -> EncodedStream:
    """Huffman-code ``symbols`` (non-negative integers, any shape, flattened) with ``table``.

    Raises ``NNCompressError`` for a negative symbol, a symbol outside the alphabet or
    one with no code in the table.

    Example:
        >>> t = HuffmanTable(np.array([1, 2, 2]))
        >>> s = encode(np.array([0, 2, 1]), t)
        >>> s.nbits, s.data.hex()
        (5, '70')
    """
    sym = as_unsigned(symbols, "symbols")  # (n,)
    n = sym.size
    if sync_every is None:
        sync_every = default_sync_every(n)
    if isinstance(sync_every, bool) or not isinstance(sync_every, (int, np.integer)) \
            or not 1 <= sync_every < 1 << 32:
        raise NNCompressError(f"sync_every={sync_every!r} must be an integer in 1..2**32-1")
    if n == 0:
        return EncodedStream(b"", 0, 0, np.zeros(0, dtype=np.int64), int(sync_every))
    if int(sym.max()) >= table.alphabet_size:
        i = int(np.argmax(sym >= table.alphabet_size))
        raise NNCompressError(
            f"symbol {int(sym[i])} at index {i} is outside the table's alphabet; "
            f"allowed: 0..{table.alphabet_size - 1}"
        )
    len_of, left_of = table._encoder
    g, group_len, group_left = table._grouped if n >= GROUP_MIN_SYMBOLS else (1, len_of, left_of)
    m = n // g  # whole groups of g symbols, coded by one joint lookup
    if g == 1:
        idx = sym
    else:
        idx = sym[0: m * g: g].astype(np.intp)  # (m,) the group as a base-alphabet number
        for k in range(1, g):
            idx *= table.alphabet_size
            np.add(idx, sym[k: m * g: g], out=idx, casting="unsafe")
    lens, left = group_len[idx], group_left[idx]  # (m,) uint32 each
    if m * g < n:  # the last n % g symbols, one by one
        lens = np.concatenate([lens, len_of[sym[m * g:]]])
        left = np.concatenate([left, left_of[sym[m * g:]]])
    if lens.min() == 0:
        i = int(np.argmin(len_of[sym]))
        raise NNCompressError(
            f"symbol {int(sym[i])} at index {i} has no code in the table "
            f"(it had frequency 0 when the table was built)"
        )
    word = word_dtype(n * table.max_length)  # an upper bound of nbits
    if word is _U64:
        lens = lens.astype(_U64)
        left = left.astype(_U64) << _U64(32)
    starts = np.cumsum(lens, dtype=word)  # (m + n % g,) ends, made starts in place
    nbits = int(starts[-1])
    starts -= lens
    data = pack_left(left, starts, nbits)
    # bit offset of symbol s = start of its group + lengths of the symbols before it there
    s = np.arange(0, n, int(sync_every))  # (lanes,)
    grouped = s < m * g
    sync = starts[np.where(grouped, s // g, s - m * g + m)].astype(np.int64)
    q = np.where(grouped, s % g, 0)  # position of s inside its group
    for t in range(1, g):
        sel = q >= t
        sync[sel] += len_of[sym[s[sel] - q[sel] + t - 1]].astype(np.int64)
    return EncodedStream(data, nbits, int(n), sync, int(sync_every))


def decode(stream: EncodedStream, table: HuffmanTable) -> np.ndarray:
    """Decode ``stream`` with ``table``; returns int64 symbols, ``stream.count`` of them.

    The chunks between sync points are decoded in parallel lanes, one symbol of every lane
    per step. A step looks the next ``min(max_length, 16)`` bits of every lane up in a
    prefix table; only lanes whose prefix begins a longer code (rare: long codes are
    rare) fall back to a binary search. A stream whose table has a single code (the
    relative indices of a dense layer) is checked and filled without stepping.

    Raises ``FormatError`` when the stream is inconsistent (sizes, sync points), holds an
    invalid code, or its chunks do not end exactly where the next one starts.

    Example:
        >>> t = HuffmanTable(np.array([1, 2, 2]))
        >>> decode(encode(np.array([0, 2, 1]), t), t).tolist()
        [0, 2, 1]
    """
    count, nbits = stream.count, stream.nbits
    sync = _check_stream(stream)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    top = table.max_length
    if top == 0:
        raise FormatError(f"the stream holds {count} symbols but the table has no codes")
    if top == 1 and int(np.count_nonzero(table.lengths)) == 1:
        return _decode_single(stream, table, sync)
    lanes, last, steps, word, windows = _lane_layout(stream, sync, top)
    sym_of_long = table._decoder[0].__getitem__
    bits, sym_of, len_of = table._prefix
    len_of = len_of.astype(word)
    _, long_len, ends = table._decoder
    if bits < top:
        ends, long_len = ends.astype(word), long_len.astype(word)
    pos = sync.astype(word)  # (lanes,) bit offset of the next symbol of every lane
    # window (lookup table) or canonical rank (binary search), per step and lane
    out = np.empty((steps, lanes), dtype=np.uint16)  # prefix per step and lane
    idx, win, sh, ln = (np.empty(lanes, dtype=word) for _ in range(4))
    at = _index_view(idx)
    three, seven = word(3), word(7)
    drop = word(8 * np.dtype(word).itemsize - bits)
    long_drop = word(8 * np.dtype(word).itemsize - top)
    longs: list[tuple[int, np.ndarray, np.ndarray]] = []  # (step, lanes, symbols)
    last_end = 0
    for step in range(steps):  # one symbol of every lane per step
        np.right_shift(pos, three, out=idx)
        np.take(windows, at, out=win)
        np.bitwise_and(pos, seven, out=sh)
        np.left_shift(win, sh, out=win)
        row = out[step]
        np.right_shift(win, drop, out=row, casting="unsafe")  # the next bits index the table
        np.take(len_of, row, out=ln)
        if bits < top and not ln.all():  # a longer code (or an invalid one)
            lane = np.flatnonzero(ln == 0)
            rank = np.searchsorted(ends, win[lane] >> long_drop, side="right")
            ln[lane] = long_len[rank]
            longs.append((step, lane, sym_of_long(rank)))
        pos += ln
        if step == last - 1:
            last_end = int(pos[-1])
    pos = pos.astype(np.int64)
    # lane by lane: transpose the 2-byte prefixes, then one sequential gather to int64
    result = sym_of[out.T.reshape(-1)[:count]]  # (count,)
    for step, lane, sym in longs:
        flat = lane.astype(np.int64) * steps + step
        keep = flat < count
        result[flat[keep]] = sym[keep]
    return _checked(result, pos, sync, last_end, nbits)



def _index_view(idx: np.ndarray) -> np.ndarray:
    """``idx`` (same memory) as indices ``np.take`` accepts: numpy < 2 refuses to cast
    uint64 indices to intp, so a uint64 buffer is viewed as int64 (byte offsets are far
    below 2**63)."""
    return idx.view(np.int64) if idx.dtype == np.uint64 else idx


def decode_stepwise(stream: EncodedStream, table: HuffmanTable) -> np.ndarray:
    """The previous decoder, kept to measure against and to test :func:`decode` with:
    same result and checks, but a binary search per step when codes exceed 16 bits and
    no shortcut for one-symbol streams.

    Raises ``FormatError`` when the stream is inconsistent (sizes, sync points), holds an
    invalid code, or its chunks do not end exactly where the next one starts.

    Example:
        >>> t = HuffmanTable(np.array([1, 2, 2]))
        >>> decode_stepwise(encode(np.array([0, 2, 1]), t), t).tolist()
        [0, 2, 1]
    """
    count, nbits = stream.count, stream.nbits
    sync = _check_stream(stream)
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    top = table.max_length
    if top == 0:
        raise FormatError(f"the stream holds {count} symbols but the table has no codes")
    lanes, last, steps, word, windows = _lane_layout(stream, sync, top)
    sym_of, len_of, ends = table._decoder
    len_of = len_of.astype(word)
    if ends is not None:
        ends = ends.astype(word)
    pos = sync.astype(word)  # (lanes,) bit offset of the next symbol of every lane
    # window (lookup table) or canonical rank (binary search), per step and lane
    out = np.empty((steps, lanes), dtype=np.uint16 if ends is None else np.int64)
    idx, win, sh, ln = (np.empty(lanes, dtype=word) for _ in range(4))
    at = _index_view(idx)
    three, seven = word(3), word(7)
    drop = word(8 * np.dtype(word).itemsize - top)
    last_end = 0
    for step in range(steps):  # one symbol of every lane per step
        np.right_shift(pos, three, out=idx)
        np.take(windows, at, out=win)
        np.bitwise_and(pos, seven, out=sh)
        np.left_shift(win, sh, out=win)
        row = out[step]
        if ends is None:  # the next top bits of every lane index the table
            np.right_shift(win, drop, out=row, casting="unsafe")
        else:
            np.right_shift(win, drop, out=win)
            row[:] = np.searchsorted(ends, win, side="right")
        np.take(len_of, row, out=ln)
        pos += ln
        if step == last - 1:
            last_end = int(pos[-1])
    pos = pos.astype(np.int64)
    result = sym_of[out.T.reshape(-1)[:count]]  # (count,) lane by lane
    return _checked(result, pos, sync, last_end, nbits)


def _lane_layout(stream: EncodedStream, sync: np.ndarray, top: int):
    """(lanes, symbols in the last chunk, steps, word dtype, byte windows) of a stream
    decoded one symbol of every lane per step."""
    lanes = sync.size
    last = stream.count - (lanes - 1) * stream.sync_every  # symbols in the last chunk, 1..every
    steps = stream.sync_every if lanes > 1 else last
    pad = (steps * top + 7) // 8  # lanes may read up to steps * top bits past the end
    # 32-bit arithmetic is about twice as fast; a window needs top + 7 valid bits
    word = np.uint32 if top <= 25 and 8 * (len(stream.data) + pad) < 1 << 32 else _U64
    return lanes, last, steps, word, byte_windows(stream.data, pad, word)  # (bytes + pad,)


def _checked(result: np.ndarray, pos: np.ndarray, sync: np.ndarray, last_end: int,
             nbits: int) -> np.ndarray:
    """``result`` after the end-of-decoding checks: every chunk ends at the next sync
    point, the last at the payload's end, and no invalid code was met."""
    if sync.size > 1 and not np.array_equal(pos[:-1], sync[1:]):
        j = int(np.argmax(pos[:-1] != sync[1:]))
        raise FormatError(
            f"chunk {j} ends at bit {int(pos[j])} but the next sync point is "
            f"{int(sync[j + 1])}; the stream or table is damaged"
        )
    if last_end != nbits:
        raise FormatError(
            f"decoding ended at bit {last_end} but the stream has {nbits} payload bits; "
            f"the stream or table is damaged"
        )
    if result.size and result.min() < 0:
        i = int(np.argmax(result < 0))
        raise FormatError(f"invalid code at symbol {i}; the stream or table is damaged")
    return result


def _decode_single(stream: EncodedStream, table: HuffmanTable, sync: np.ndarray) -> np.ndarray:
    """A table with one code (length 1, code 0): every symbol is it; the payload must be
    ``count`` zero bits and the sync points ``j * sync_every``."""
    count, every = stream.count, stream.sync_every
    if stream.nbits != count:
        raise FormatError(f"a one-symbol stream of {count} symbols must have {count} payload "
                          f"bits, not {stream.nbits}; the stream or table is damaged")
    if np.frombuffer(stream.data, dtype=np.uint8).any():
        raise FormatError("invalid code in a one-symbol stream; the stream or table is damaged")
    expected = np.arange(sync.size, dtype=np.int64) * every
    if not np.array_equal(sync, expected):
        j = int(np.argmax(sync != expected))
        raise FormatError(f"sync point {j} is {int(sync[j])}, expected {int(expected[j])}; "
                          "the stream is damaged")
    return np.full(count, int(np.flatnonzero(table.lengths)[0]), dtype=np.int64)


def _check_stream(stream: EncodedStream) -> np.ndarray:
    """Validate the sizes of ``stream``; returns its sync offsets as int64."""
    count, nbits, every = stream.count, stream.nbits, stream.sync_every
    if count < 0 or nbits < 0 or every < 1:
        raise FormatError(
            f"invalid stream sizes count={count}, nbits={nbits}, sync_every={every}"
        )
    if len(stream.data) != (nbits + 7) // 8:
        raise FormatError(
            f"stream data has {len(stream.data)} bytes; {nbits} bits need exactly "
            f"{(nbits + 7) // 8} (truncated or damaged)"
        )
    check_padding(stream.data, nbits)
    sync = np.asarray(stream.sync, dtype=np.int64).reshape(-1)
    lanes = -(-count // every)
    if sync.size != lanes:
        raise FormatError(
            f"stream has {sync.size} sync points; {count} symbols with sync_every={every} "
            f"need {lanes}"
        )
    if count == 0:
        if nbits:
            raise FormatError(f"an empty stream must have 0 payload bits, not {nbits}")
        return sync
    if count > nbits:
        raise FormatError(f"{count} symbols cannot fit in {nbits} bits (codes are >= 1 bit)")
    if sync[0] != 0 or np.any(np.diff(sync) < every) or sync[-1] >= nbits:
        raise FormatError(
            "sync points must start at 0, grow by at least sync_every bits and stay below "
            f"nbits={nbits}; the stream is damaged"
        )
    return sync


def to_bytes(stream: EncodedStream, table: HuffmanTable) -> bytes:
    """Serialize ``stream`` with its ``table`` into a self-checking byte string.

    Layout (little-endian): magic ``NNHF``, count (u64), nbits (u64), sync_every (u32),
    sync_base (u64), sync_width (u8), alphabet_size (u32), one uint8 length per symbol,
    the sync deltas minus ``sync_base`` bit-packed in ``sync_width`` bits each (the first
    offset, 0, is implied), the payload, then a CRC-32 of everything before it. Its size
    in bits is exactly ``stream.nbits + stream.overhead_bits + table.overhead_bits``.

    Example:
        >>> t = HuffmanTable(np.array([1, 1]))
        >>> len(to_bytes(encode(np.array([0, 1, 1]), t), t))
        44
    """
    base, width = stream.sync_base, stream.sync_width
    deltas = np.diff(np.asarray(stream.sync, dtype=np.int64)) - base  # (lanes - 1,)
    body = b"".join([
        _STREAM_HEADER.pack(_MAGIC, stream.count, stream.nbits, stream.sync_every, base,
                            width),
        _TABLE_HEADER.pack(table.alphabet_size),
        table.lengths.tobytes(),
        pack_bits(deltas, width),
        stream.data,
    ])
    return body + _CRC.pack(zlib.crc32(body))


def from_bytes(buf: bytes) -> tuple[EncodedStream, HuffmanTable]:
    """Inverse of :func:`to_bytes`; raises ``FormatError`` on any damage or truncation.

    Example:
        >>> t = HuffmanTable(np.array([1, 1]))
        >>> s, t2 = from_bytes(to_bytes(encode(np.array([0, 1, 1]), t), t))
        >>> decode(s, t2).tolist()
        [0, 1, 1]
    """
    buf = bytes(buf)
    fixed = _STREAM_HEADER.size + _TABLE_HEADER.size + _CRC.size
    if len(buf) < fixed:
        raise FormatError(f"Huffman stream of {len(buf)} bytes is truncated; at least "
                          f"{fixed} are needed")
    if buf[:4] != _MAGIC:
        raise FormatError(f"bad Huffman stream magic {buf[:4]!r}; expected {_MAGIC!r}")
    body, crc = buf[:-_CRC.size], _CRC.unpack(buf[-_CRC.size:])[0]
    if zlib.crc32(body) != crc:
        raise FormatError("Huffman stream checksum mismatch; the data is damaged")
    _, count, nbits, every, base, width = _STREAM_HEADER.unpack_from(body, 0)
    (alphabet,) = _TABLE_HEADER.unpack_from(body, _STREAM_HEADER.size)
    if every < 1 or not 1 <= width <= MAX_BITS:
        raise FormatError(f"invalid sync_every={every} or sync_width={width}")
    lanes = -(-count // every)
    sync_bytes = ((max(lanes - 1, 0)) * width + 7) // 8
    off = _STREAM_HEADER.size + _TABLE_HEADER.size
    need = off + alphabet + sync_bytes + (nbits + 7) // 8
    if len(body) != need:
        raise FormatError(f"Huffman stream body has {len(body)} bytes; its header "
                          f"implies {need} (truncated or damaged)")
    lengths = np.frombuffer(body, dtype=np.uint8, count=alphabet, offset=off)
    table = HuffmanTable(check_lengths(lengths, FormatError).astype(np.uint8))
    off += alphabet
    deltas = unpack_bits(body[off: off + sync_bytes], width, max(lanes - 1, 0))
    if base > nbits:
        raise FormatError(f"sync_base={base} exceeds nbits={nbits}; the stream is damaged")
    sync = np.concatenate(([0], np.cumsum(deltas + base))).astype(np.int64)[:lanes]
    stream = EncodedStream(body[off + sync_bytes:], nbits, count, sync, every)
    _check_stream(stream)
    return stream, table
