"""Reader for the IDX file format used by MNIST and Fashion-MNIST (raw or gzip)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from nncompress.errors import FormatError

_DTYPES = {
    0x08: np.uint8,
    0x09: np.int8,
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def parse_idx(raw: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode an IDX blob into an array.

    The header is two zero bytes, a type code, the number of dimensions, then one
    big-endian uint32 per dimension.

    Example:
        >>> parse_idx(bytes([0, 0, 8, 1, 0, 0, 0, 2, 7, 9])).tolist()
        [7, 9]
    """
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise FormatError(f"{source}: not an IDX file (bad magic {raw[:4]!r})")
    code, ndim = raw[2], raw[3]
    if code not in _DTYPES:
        raise FormatError(f"{source}: unknown IDX type code 0x{code:02x}; allowed {sorted(_DTYPES)}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise FormatError(f"{source}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    dtype = np.dtype(_DTYPES[code])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise FormatError(
            f"{source}: IDX payload is {len(raw) - header} bytes, shape {shape} needs {expected}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) from disk into a numpy array."""
    path = Path(path)
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise FormatError(f"{path}: damaged gzip stream ({exc})") from exc
    return parse_idx(data, str(path))
