"""Canonical Huffman coder: optimality, canonical form, round trips and damage detection."""

import heapq
import itertools

import numpy as np
import pytest

from nncompress.coding import huffman
from nncompress.coding.huffman import (
    EncodedStream,
    HuffmanTable,
    canonical_codes,
    code_lengths,
    decode,
    encode,
    from_bytes,
    to_bytes,
)
from nncompress.errors import FormatError, NNCompressError


def reference_huffman_bits(freqs: np.ndarray) -> int:
    """Optimal total bits by plain heap merging: the sum of all merged weights."""
    heap = [int(f) for f in freqs if f > 0]
    if len(heap) == 1:
        return heap[0]
    heapq.heapify(heap)
    total = 0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged
        heapq.heappush(heap, merged)
    return total


def brute_force_limited_bits(freqs: np.ndarray, max_len: int) -> int:
    """Cheapest total bits over all length vectors in 1..max_len satisfying Kraft."""
    best = None
    for lens in itertools.product(range(1, max_len + 1), repeat=len(freqs)):
        if sum(2.0 ** -l for l in lens) <= 1:
            cost = int(np.dot(freqs, lens))
            best = cost if best is None else min(best, cost)
    return best


def kraft(lengths: np.ndarray) -> float:
    lens = lengths[lengths > 0].astype(np.float64)
    return float(np.sum(2.0 ** -lens))


def skewed(n: int, alphabet: int, seed: int) -> np.ndarray:
    """Quantized Gaussian over ``alphabet`` levels, like k-means weight indices."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(0, alphabet / 8, n)) + alphabet // 2
    return np.clip(x, 0, alphabet - 1).astype(np.int64)


def fibonacci(n: int) -> np.ndarray:
    f = [1, 1]
    while len(f) < n:
        f.append(f[-1] + f[-2])
    return np.array(f[:n], dtype=np.int64)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alphabet", [2, 3, 17, 256])
def test_code_lengths_optimal_and_complete(seed, alphabet):
    rng = np.random.default_rng(seed)
    freqs = rng.integers(0, 1000, alphabet) * (rng.random(alphabet) < 0.8)
    freqs[rng.integers(alphabet)] += 1  # at least one present symbol
    freqs[rng.integers(alphabet)] += 1
    lengths = code_lengths(freqs)
    assert lengths.dtype == np.uint8
    assert np.array_equal(lengths > 0, freqs > 0)
    assert int(np.dot(freqs, lengths.astype(np.int64))) == reference_huffman_bits(freqs)
    if np.count_nonzero(freqs) > 1:
        assert kraft(lengths) == pytest.approx(1.0)  # optimal codes are complete


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_len", [3, 4])
def test_length_limited_matches_brute_force(seed, max_len):
    freqs = np.random.default_rng(seed).integers(1, 200, 6) ** 2
    freqs[0] = 1
    lengths = code_lengths(freqs, max_len=max_len)
    assert lengths.max() <= max_len and kraft(lengths) <= 1
    assert int(np.dot(freqs, lengths)) == brute_force_limited_bits(freqs, max_len)


def test_length_limit_binds_on_fibonacci_frequencies():
    freqs = fibonacci(30)
    free = code_lengths(freqs, max_len=32)
    assert free.max() == 29  # the optimal code is as deep as it can be
    limited = code_lengths(freqs, max_len=12)
    assert limited.max() == 12 and kraft(limited) <= 1
    assert np.dot(freqs, limited.astype(np.int64)) >= np.dot(freqs, free.astype(np.int64))


def test_code_lengths_edge_cases():
    assert code_lengths(np.zeros(0, dtype=np.int64)).size == 0
    assert code_lengths(np.zeros(5, dtype=np.int64)).tolist() == [0] * 5
    assert code_lengths(np.array([0, 7, 0])).tolist() == [0, 1, 0]
    assert code_lengths(np.array([3, 5])).tolist() == [1, 1]
    assert code_lengths(np.array([0.5, 0.25, 0.25])).tolist() == [1, 2, 2]


@pytest.mark.parametrize(
    "freqs, max_len, words",
    [
        (np.array([1, -2]), 24, "-2"),
        (np.array([1, 2]), 0, "max_len=0"),
        (np.array([1, 2]), 33, "max_len=33"),
        (np.ones(5), 2, "5 present symbols"),
        (np.array([1.0, np.nan]), 24, "finite"),
        (np.ones((2, 2)), 24, "1-D"),
    ],
)
def test_code_lengths_rejects_bad_input(freqs, max_len, words):
    with pytest.raises(NNCompressError, match=words):
        code_lengths(freqs, max_len=max_len)


def test_canonical_codes_are_prefix_free_and_ordered():
    rng = np.random.default_rng(0)
    lengths = code_lengths(rng.integers(0, 50, 40))
    codes = canonical_codes(lengths)
    present = np.flatnonzero(lengths)
    for a in present:
        for b in present:
            if a != b and lengths[a] <= lengths[b]:
                assert codes[b] >> np.uint64(lengths[b] - lengths[a]) != codes[a]
    order = np.lexsort((present, lengths[present]))  # by (length, symbol)
    top = int(lengths.max())
    left = [int(codes[s]) << (top - int(lengths[s])) for s in present[order]]
    assert left == sorted(left) and len(set(left)) == len(left)
    assert int(codes[present[order][0]]) == 0


def test_canonical_codes_rejects_kraft_violation():
    with pytest.raises(NNCompressError, match="Kraft"):
        canonical_codes(np.array([1, 1, 1]))
    with pytest.raises(NNCompressError, match="33"):
        canonical_codes(np.array([33, 1]))


@pytest.mark.parametrize("n", [1, 2, 63, 64, 65, 1000, 100_000])
@pytest.mark.parametrize("sync_every", [None, 1, 7, 64])
def test_round_trip_skewed(n, sync_every):
    x = skewed(n, 32, seed=n)
    table = HuffmanTable.from_symbols(x)
    stream = encode(x, table, sync_every=sync_every)
    assert stream.nbits == table.payload_bits(np.bincount(x, minlength=table.alphabet_size))
    assert len(stream.data) == (stream.nbits + 7) // 8
    assert stream.sync.size == -(-n // stream.sync_every)
    out = decode(stream, table)
    assert out.dtype == np.int64 and np.array_equal(out, x)


@pytest.mark.parametrize("alphabet, group", [(2, 4), (4, 4), (16, 3), (32, 2), (300, 1)])
@pytest.mark.parametrize("n", [huffman.GROUP_MIN_SYMBOLS + 1, 10_003])
@pytest.mark.parametrize("sync_every", [3, 64])
def test_joint_lookup_encoder_matches_one_by_one(monkeypatch, alphabet, group, n, sync_every):
    x = skewed(n, alphabet, seed=alphabet)
    table = HuffmanTable.from_symbols(x, alphabet_size=alphabet)
    assert table._grouped[0] == group
    joint = encode(x, table, sync_every=sync_every)
    monkeypatch.setattr(huffman, "GROUP_MIN_SYMBOLS", 10**12)
    single = encode(x, table, sync_every=sync_every)
    assert joint.data == single.data and joint.nbits == single.nbits
    assert np.array_equal(joint.sync, single.sync)
    assert np.array_equal(decode(joint, table), x)


def test_64_bit_word_encoder_matches(monkeypatch):
    x = skewed(10_001, 32, seed=7)
    table = HuffmanTable.from_symbols(x)
    narrow = encode(x, table, sync_every=100)
    monkeypatch.setattr(huffman, "word_dtype", lambda nbits: np.uint64)  # as for > 4 Gbit
    wide = encode(x, table, sync_every=100)
    assert wide.data == narrow.data and np.array_equal(wide.sync, narrow.sync)


def test_joint_lookup_encoder_rejects_absent_symbol():
    x = np.zeros(huffman.GROUP_MIN_SYMBOLS * 2, dtype=np.uint8)
    x[::3] = 1
    table = HuffmanTable.from_symbols(x, alphabet_size=4)
    x[5001] = 2
    with pytest.raises(NNCompressError, match="symbol 2 at index 5001 has no code"):
        encode(x, table)


def test_round_trip_empty_and_single_symbol():
    table = HuffmanTable.from_symbols(np.zeros(0, dtype=np.int64))
    stream = encode(np.zeros(0, dtype=np.int64), table)
    assert (stream.data, stream.nbits, stream.count) == (b"", 0, 0)
    assert decode(stream, table).size == 0
    x = np.full(1001, 5)
    table = HuffmanTable.from_symbols(x)
    stream = encode(x, table)
    assert stream.nbits == 1001 and table.lengths[5] == 1
    assert np.array_equal(decode(stream, table), x)


def test_round_trip_large_alphabet_long_codes():
    rng = np.random.default_rng(1)
    x = np.minimum(rng.zipf(1.3, 200_000), 70_000) - 1  # alphabet > 65536, long tail
    table = HuffmanTable.from_symbols(x, alphabet_size=70_000)
    assert table.max_length > huffman.TABLE_MAX_BITS  # binary-search decoder
    stream = encode(x, table)
    assert np.array_equal(decode(stream, table), x)
    stream2, table2 = from_bytes(to_bytes(stream, table))
    assert np.array_equal(decode(stream2, table2), x)


@pytest.mark.parametrize("max_len", [16, 24, 32])
def test_round_trip_deep_codes(max_len):
    table = HuffmanTable.from_frequencies(fibonacci(34), max_len=max_len)
    assert table.max_length == max_len  # 64-bit windows once codes exceed 25 bits
    x = np.random.default_rng(2).integers(0, 34, 5000)
    assert np.array_equal(decode(encode(x, table), table), x)


def test_table_and_binary_search_decoders_agree(monkeypatch):
    x = skewed(20_000, 32, seed=3)
    fast = HuffmanTable.from_symbols(x)
    assert fast._decoder[2] is None  # lookup table, built (and cached) now
    monkeypatch.setattr(huffman, "TABLE_MAX_BITS", 4)
    slow = HuffmanTable.from_symbols(x)
    assert slow._decoder[2] is not None  # binary search
    stream = encode(x, fast)
    assert np.array_equal(decode(stream, slow), decode(stream, fast))


def test_length_limited_table_round_trips():
    x = np.repeat(np.arange(30), fibonacci(30) // 1000 + 1)
    table = HuffmanTable.from_symbols(x, max_len=8)
    assert table.max_length == 8
    assert np.array_equal(decode(encode(x, table), table), x)


def test_encode_rejects_bad_symbols():
    table = HuffmanTable.from_symbols(np.array([0, 1, 1, 3]))
    with pytest.raises(NNCompressError, match="symbol 2 at index 1 has no code"):
        encode(np.array([0, 2]), table)
    with pytest.raises(NNCompressError, match="symbol 9 at index 0 is outside"):
        encode(np.array([9]), table)
    with pytest.raises(NNCompressError, match="-1 at index 1"):
        encode(np.array([0, -1]), table)
    with pytest.raises(NNCompressError, match="integer dtype"):
        encode(np.array([0.0]), table)
    with pytest.raises(NNCompressError, match="sync_every=0"):
        encode(np.array([0]), table, sync_every=0)
    with pytest.raises(NNCompressError, match="symbol 4 is outside"):
        HuffmanTable.from_symbols(np.array([4]), alphabet_size=3)


def test_to_bytes_size_is_payload_plus_overhead():
    x = skewed(50_000, 32, seed=4)
    table = HuffmanTable.from_symbols(x)
    stream = encode(x, table)
    buf = to_bytes(stream, table)
    assert 8 * len(buf) == stream.nbits + stream.overhead_bits + table.overhead_bits
    assert stream.overhead_bits < 0.01 * stream.nbits
    stream2, table2 = from_bytes(buf)
    assert np.array_equal(table2.lengths, table.lengths)
    assert np.array_equal(stream2.sync, stream.sync)
    assert np.array_equal(decode(stream2, table2), x)


def test_from_bytes_detects_every_damage():
    x = skewed(3000, 32, seed=5)
    table = HuffmanTable.from_symbols(x)
    buf = to_bytes(encode(x, table, sync_every=100), table)
    for cut in (0, 10, len(buf) // 2, len(buf) - 1):
        with pytest.raises(FormatError):
            from_bytes(buf[:cut])
    rng = np.random.default_rng(0)
    for i in rng.integers(0, len(buf), 30):
        damaged = bytearray(buf)
        damaged[i] ^= 1 << int(rng.integers(8))
        with pytest.raises(FormatError):
            from_bytes(bytes(damaged))


def replace(stream: EncodedStream, **changes) -> EncodedStream:
    fields = dict(data=stream.data, nbits=stream.nbits, count=stream.count,
                  sync=stream.sync, sync_every=stream.sync_every)
    fields.update(changes)
    return EncodedStream(**fields)


def test_decode_detects_inconsistent_streams():
    x = skewed(5000, 32, seed=6)
    table = HuffmanTable.from_symbols(x)
    stream = encode(x, table, sync_every=256)
    with pytest.raises(FormatError, match="bytes"):
        decode(replace(stream, data=stream.data[:-1]), table)
    with pytest.raises(FormatError, match="sync points"):
        decode(replace(stream, sync=stream.sync[:-1]), table)
    with pytest.raises(FormatError):
        decode(replace(stream, sync=stream.sync + 1), table)
    shifted = stream.sync.copy()
    shifted[3] += 1
    with pytest.raises(FormatError, match="chunk 2 ends"):
        decode(replace(stream, sync=shifted), table)
    with pytest.raises(FormatError):
        decode(replace(stream, count=stream.count - 1, sync=stream.sync), table)
    other = HuffmanTable.from_symbols(np.arange(32))  # wrong table: 5-bit codes
    with pytest.raises(FormatError):
        decode(stream, other)


def test_decode_detects_invalid_code():
    table = HuffmanTable.from_symbols(np.array([3, 3]))  # one code: "0"
    stream = encode(np.array([3, 3, 3, 3]), table)
    with pytest.raises(FormatError, match="invalid code|damaged"):
        decode(replace(stream, data=bytes([0b01000000])), table)
