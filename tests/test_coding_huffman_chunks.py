"""The Huffman decoder's chunked (sync-point) decoding, its prefix table with a fallback
for long codes and the one-symbol shortcut agree with the previous decoder and with the
unchunked stream; old-format streams (no shortcut, any sync interval) still decode."""

from __future__ import annotations

import numpy as np
import pytest

from nncompress.coding import huffman
from nncompress.coding.huffman import (
    EncodedStream,
    HuffmanTable,
    decode,
    decode_stepwise,
    encode,
    from_bytes,
    to_bytes,
)
from nncompress.errors import FormatError


def _random_stream(rng, n: int, alphabet: int) -> np.ndarray:
    weights = rng.exponential(size=alphabet) ** 3  # skewed, some long codes
    return rng.choice(alphabet, size=n, p=weights / weights.sum())


@pytest.mark.parametrize("seed", range(6))
def test_chunked_equals_unchunked_on_random_streams(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30_000))
    x = _random_stream(rng, n, int(rng.integers(1, 300)))
    table = HuffmanTable.from_symbols(x)
    one_chunk = encode(x, table, sync_every=n)  # a single lane: the unchunked stream
    for every in (1, 7, 64, 1024, None):
        chunked = encode(x, table, sync_every=every)
        assert chunked.data == one_chunk.data  # chunk boundaries are only metadata
        stream, t2 = from_bytes(to_bytes(chunked, table))
        assert np.array_equal(decode(stream, t2), x)
        assert np.array_equal(decode_stepwise(stream, t2), x)
    assert np.array_equal(decode(one_chunk, table), x)


def test_long_codes_fall_back_to_binary_search():
    freqs = 2.0 ** -np.arange(22)  # geometric: codes up to 21 bits
    x = np.repeat(np.arange(22), (freqs * 2**21).astype(int) + 1)
    np.random.default_rng(0).shuffle(x)
    table = HuffmanTable.from_symbols(x)
    assert table.max_length > huffman.TABLE_MAX_BITS
    assert table._prefix[0] == huffman.TABLE_MAX_BITS
    stream = encode(x, table)
    assert np.array_equal(decode(stream, table), x)
    assert np.array_equal(decode_stepwise(stream, table), x)


def test_one_symbol_stream_shortcut_and_its_checks():
    x = np.full(5000, 3)
    table = HuffmanTable.from_symbols(x, alphabet_size=8)
    stream = encode(x, table, sync_every=1024)
    assert np.array_equal(decode(stream, table), x)
    bad = EncodedStream(b"\x01" + stream.data[1:], stream.nbits, stream.count, stream.sync, stream.sync_every)
    with pytest.raises(FormatError, match="invalid code"):
        decode(bad, table)
    sync = stream.sync.copy()
    sync[-1] += 1
    with pytest.raises(FormatError, match="sync point 4"):
        decode(EncodedStream(stream.data, stream.nbits, stream.count, sync, stream.sync_every), table)


def test_damaged_chunk_boundary_is_refused():
    rng = np.random.default_rng(1)
    x = _random_stream(rng, 5000, 20)
    table = HuffmanTable.from_symbols(x)
    stream = encode(x, table, sync_every=256)
    sync = stream.sync.copy()
    sync[3] += 1
    with pytest.raises(FormatError, match="chunk 2 ends at bit"):
        decode(EncodedStream(stream.data, stream.nbits, stream.count, sync, stream.sync_every), table)
