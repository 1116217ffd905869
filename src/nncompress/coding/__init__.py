"""Coding layer: bit packing, relative sparse indices, CSR/CSC and canonical Huffman.

Everything here is pure numpy and vectorised (no Python loop per symbol); damaged or
truncated input raises ``FormatError``.
"""

from nncompress.coding.bitpack import pack_bits, pack_codes, unpack_bits
from nncompress.coding.csr import (
    CSCMatrix,
    CSRMatrix,
    csr_storage_numbers,
    from_csc,
    from_csr,
    to_csc,
    to_csr,
    to_torch,
)
from nncompress.coding.huffman import (
    EncodedStream,
    HuffmanTable,
    canonical_codes,
    code_lengths,
    decode,
    encode,
)
from nncompress.coding.huffman import from_bytes as huffman_from_bytes
from nncompress.coding.huffman import to_bytes as huffman_to_bytes
from nncompress.coding.sparse_index import (
    RelativeIndex,
    decode_relative,
    decode_relative_nonfiller,
    encode_relative,
)

__all__ = [
    "CSCMatrix",
    "CSRMatrix",
    "EncodedStream",
    "HuffmanTable",
    "RelativeIndex",
    "canonical_codes",
    "code_lengths",
    "csr_storage_numbers",
    "decode",
    "decode_relative",
    "decode_relative_nonfiller",
    "encode",
    "encode_relative",
    "from_csc",
    "from_csr",
    "huffman_from_bytes",
    "huffman_to_bytes",
    "pack_bits",
    "pack_codes",
    "to_csc",
    "to_csr",
    "to_torch",
    "unpack_bits",
]
