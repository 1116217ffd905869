"""The ``.nnc`` container: a versioned header, JSON metadata and checksummed binary
sections. Pure bytes in, bytes out; nothing here executes code from a file.

Layout (little-endian)::

    offset  size  field
    0       4     magic b"NNC1"
    4       2     format version (uint16)
    6       2     reserved, 0
    8       8     header length H (uint64)
    16      4     CRC-32 of the header bytes
    20      H     header: zlib-deflated UTF-8 JSON
                  {"meta": {...}, "sections": [{"name", "offset", "length", "crc32"}]}
    20+H    ...   section payloads, back to back (offsets relative to 20+H)
    end-4   4     CRC-32 of everything before it
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from nncompress.errors import FormatError

MAGIC = b"NNC1"
VERSION = 1
_FIXED = struct.Struct("<4sHHQI")  # magic, version, reserved, header length, header crc
MAX_HEADER = 64 * 1024 * 1024


@dataclass(frozen=True)
class Container:
    """Decoded container: JSON metadata and named binary sections."""

    meta: dict[str, Any]
    sections: dict[str, bytes]


def pack_container(meta: Mapping[str, Any], sections: Mapping[str, bytes]) -> bytes:
    """Serialise metadata and sections into one ``.nnc`` byte string.

    Example:
        >>> blob = pack_container({"a": 1}, {"w": b"xyz"})
        >>> unpack_container(blob).sections["w"]
        b'xyz'
    """
    table, offset = [], 0
    for name, payload in sections.items():
        if not isinstance(payload, (bytes, bytearray)):
            raise TypeError(f"section {name!r} must be bytes, got {type(payload).__name__}")
        table.append({"name": name, "offset": offset, "length": len(payload),
                      "crc32": zlib.crc32(payload)})
        offset += len(payload)
    header = json.dumps({"meta": meta, "sections": table}, separators=(",", ":"),
                        allow_nan=False).encode("utf-8")
    header = zlib.compress(header, 9)
    body = b"".join([_FIXED.pack(MAGIC, VERSION, 0, len(header), zlib.crc32(header)), header,
                     *sections.values()])
    return body + struct.pack("<I", zlib.crc32(body))


def unpack_container(blob: bytes, source: str = "<bytes>") -> Container:
    """Parse and verify a container; any damage raises ``FormatError`` naming what failed."""
    if len(blob) < _FIXED.size + 4:
        raise FormatError(f"{source}: file too short ({len(blob)} bytes) to be an .nnc file")
    magic, version, _, hlen, hcrc = _FIXED.unpack_from(blob, 0)
    if magic != MAGIC:
        raise FormatError(f"{source}: not an .nnc file (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise FormatError(f"{source}: .nnc format version {version} is not supported (this "
                          f"nncompress reads version {VERSION})")
    if hlen > min(MAX_HEADER, len(blob) - _FIXED.size - 4):
        raise FormatError(f"{source}: header length {hlen} exceeds the file (truncated or damaged)")
    (file_crc,) = struct.unpack_from("<I", blob, len(blob) - 4)
    if zlib.crc32(blob[:-4]) != file_crc:
        raise FormatError(f"{source}: file checksum mismatch (truncated or damaged)")
    header_bytes = blob[_FIXED.size:_FIXED.size + hlen]
    if zlib.crc32(header_bytes) != hcrc:
        raise FormatError(f"{source}: header checksum mismatch")
    try:
        decomp = zlib.decompressobj()
        text = decomp.decompress(header_bytes, MAX_HEADER)
        if decomp.unconsumed_tail:
            raise FormatError(f"{source}: header inflates beyond {MAX_HEADER} bytes")
        header = json.loads(text.decode("utf-8"))
        meta, table = header["meta"], header["sections"]
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise FormatError(f"{source}: header is not valid nncompress JSON ({exc})") from exc
    data_start, data_end = _FIXED.size + hlen, len(blob) - 4
    sections: dict[str, bytes] = {}
    for entry in table:
        try:
            name, off, length, crc = entry["name"], int(entry["offset"]), int(entry["length"]), int(entry["crc32"])
        except (KeyError, TypeError, ValueError) as exc:
            raise FormatError(f"{source}: bad section entry {entry!r}") from exc
        if off < 0 or length < 0 or data_start + off + length > data_end:
            raise FormatError(f"{source}: section {name!r} lies outside the file")
        payload = blob[data_start + off:data_start + off + length]
        if zlib.crc32(payload) != crc:
            raise FormatError(f"{source}: section {name!r} checksum mismatch")
        sections[name] = payload
    return Container(meta=meta, sections=sections)
