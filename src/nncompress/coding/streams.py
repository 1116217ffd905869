"""A symbol stream stored fixed-width or Huffman-coded, whichever the caller asks for
(``auto``: the smaller one). Used by every tensor codec that writes index streams."""

from __future__ import annotations

import numpy as np

from nncompress.coding import bitpack, huffman
from nncompress.errors import ConfigError, FormatError

HUFFMAN_CHOICES = ("auto", "yes", "no")
MIN_SYNC_EVERY = 1024
"""Sync points every >= 1024 symbols: a few more decode steps for small layers, but their
offsets then cost well under 1% of a small layer's bits."""


def pack_stream(symbols: np.ndarray, alphabet: int, width: int, huff: str = "auto") -> tuple[bytes, str]:
    """Symbols as ``width``-bit codes (``"fixed"``) or a Huffman stream (``"huffman"``).

    Example:
        >>> data, kind = pack_stream(np.array([0, 0, 0, 1]), 2, 1, "no")
        >>> kind, unpack_stream(data, kind, 1, 4).tolist()
        ('fixed', [0, 0, 0, 1])
    """
    if huff not in HUFFMAN_CHOICES:
        raise ConfigError(f"huffman={huff!r} not allowed; use one of {HUFFMAN_CHOICES}")
    fixed = bitpack.pack_bits(symbols, width) if symbols.size else b""
    if huff == "no" or symbols.size == 0:
        return fixed, "fixed"
    table = huffman.HuffmanTable.from_symbols(symbols, alphabet_size=alphabet)
    every = max(MIN_SYNC_EVERY, huffman.default_sync_every(symbols.size))
    coded = huffman.to_bytes(huffman.encode(symbols, table, sync_every=every), table)
    if huff == "auto" and len(fixed) <= len(coded):
        return fixed, "fixed"
    return coded, "huffman"


def unpack_stream(data: bytes, kind: str, width: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_stream` (int64 symbols); damage raises ``FormatError``."""
    if kind == "fixed":
        return bitpack.unpack_bits(data, width, count).astype(np.int64)
    if kind == "huffman":
        stream, table = huffman.from_bytes(data)
        if stream.count != count:
            raise FormatError(f"code stream holds {stream.count} symbols, metadata says {count}")
        return huffman.decode(stream, table)
    raise FormatError(f"unknown code stream kind {kind!r}; allowed: 'fixed', 'huffman'")
