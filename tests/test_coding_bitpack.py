"""Fixed- and variable-width bit packing: exact layout, round trips, errors."""

import numpy as np
import pytest

from nncompress.coding.bitpack import (
    pack_bits,
    pack_codes,
    pack_left,
    packed_size,
    unpack_bits,
)
from nncompress.errors import FormatError, NNCompressError


def reference_pack(codes, lengths) -> bytes:
    """MSB-first concatenation through an explicit bit string."""
    bitstring = "".join(format(int(c), f"0{int(l)}b") for c, l in zip(codes, lengths))
    bitstring += "0" * (-len(bitstring) % 8)
    return bytes(int(bitstring[i: i + 8], 2) for i in range(0, len(bitstring), 8))


@pytest.mark.parametrize("bits", list(range(1, 33)))
def test_pack_matches_reference_and_round_trips(bits):
    rng = np.random.default_rng(bits)
    for count in (0, 1, 7, 8, 9, 130):
        values = rng.integers(0, 1 << bits, count, dtype=np.uint64)
        data = pack_bits(values, bits)
        assert len(data) == packed_size(count, bits)
        assert data == reference_pack(values, [bits] * count)
        out = unpack_bits(data, bits, count)
        assert out.dtype == np.int64 and np.array_equal(out, values.astype(np.int64))


def test_pack_extremes_and_layout():
    assert pack_bits(np.array([1, 2, 3]), 2) == bytes([0b01101100])
    top = np.array([2**32 - 1, 0, 2**32 - 1], dtype=np.uint64)
    assert np.array_equal(unpack_bits(pack_bits(top, 32), 32, 3), top.astype(np.int64))
    ones = np.ones(1000, dtype=bool)
    assert pack_bits(ones, 1) == b"\xff" * 125


def test_pack_codes_matches_reference():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 33, 500)
    codes = rng.integers(0, 2**32, 500, dtype=np.uint64) >> (32 - lengths).astype(np.uint64)
    data, nbits = pack_codes(codes, lengths)
    assert nbits == lengths.sum()
    assert data == reference_pack(codes, lengths)
    assert pack_codes(np.zeros(0, np.int64), np.zeros(0, np.int64)) == (b"", 0)


def test_pack_left_same_bytes_with_32_and_64_bit_words():
    rng = np.random.default_rng(1)
    lengths = rng.integers(1, 33, 3000).astype(np.uint64)
    codes = rng.integers(0, 2**32, 3000, dtype=np.uint64) >> (np.uint64(32) - lengths)
    starts = np.cumsum(lengths) - lengths
    nbits = int(lengths.sum())
    wide = pack_left(codes << (np.uint64(64) - lengths), starts, nbits)
    narrow = pack_left((codes << (np.uint64(32) - lengths)).astype(np.uint32),
                       starts.astype(np.uint32), nbits)
    assert wide == narrow == reference_pack(codes, lengths)


@pytest.mark.parametrize("bits", [0, 33, -1, True, 2.5, "8"])
def test_bits_out_of_range_names_value(bits):
    with pytest.raises(NNCompressError, match=f"bits={bits!r}|bits={bits}"):
        pack_bits(np.array([0]), bits)
    with pytest.raises(NNCompressError, match="bits="):
        unpack_bits(b"", bits, 0)


def test_pack_rejects_values_that_do_not_fit():
    with pytest.raises(NNCompressError, match="value 8 at index 1 does not fit in bits=3"):
        pack_bits(np.array([1, 8, 2]), 3)
    with pytest.raises(NNCompressError, match="-4 at index 2"):
        pack_bits(np.array([1, 2, -4]), 3)
    with pytest.raises(NNCompressError, match="integer dtype"):
        pack_bits(np.array([1.0]), 3)
    with pytest.raises(NNCompressError, match="code 4 at index 0 does not fit in its length 2"):
        pack_codes(np.array([4]), np.array([2]))
    with pytest.raises(NNCompressError, match="code length 33"):
        pack_codes(np.array([1]), np.array([33]))
    with pytest.raises(NNCompressError, match="code length 0"):
        pack_codes(np.array([0]), np.array([0]))


def test_unpack_rejects_truncated_or_damaged_data():
    data = pack_bits(np.arange(10), 5)  # 50 bits -> 7 bytes, 6 padding bits
    with pytest.raises(FormatError, match="6 bytes.*need exactly 7"):
        unpack_bits(data[:-1], 5, 10)
    with pytest.raises(FormatError, match="8 bytes"):
        unpack_bits(data + b"\0", 5, 10)
    with pytest.raises(FormatError, match="padding"):
        unpack_bits(data[:-1] + bytes([data[-1] | 1]), 5, 10)
    with pytest.raises(NNCompressError, match="count=-1"):
        unpack_bits(data, 5, -1)
