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

The CRCs catch accidents only: whoever edits a file can recompute them. So the parser
also treats the header as hostile input (:func:`parse_json`: bounded size, nesting depth
and integer length, finite numbers, no duplicate keys) and the section table must tile
the payload area exactly (in order, no gaps, no overlaps, no bytes after the last
section). Authenticity is what signing adds (``nncompress.format.signing``).
"""

from __future__ import annotations

import json
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from nncompress.errors import FormatError

MAGIC = b"NNC1"
VERSION = 1
_FIXED = struct.Struct("<4sHHQI")  # magic, version, reserved, header length, header crc
MAX_HEADER = 16 * 1024 * 1024
"""Largest inflated header (bytes). A real header is a few hundred bytes per tensor."""
MAX_DEPTH = 32
"""Deepest JSON nesting a header may have (a real one nests about 8 levels)."""
MAX_INT_DIGITS = 20
"""Longest integer literal in a header (uint64 fits in 20 digits)."""
_SECTION_KEYS = {"name", "offset", "length", "crc32"}
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


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


def json_depth(text: bytes) -> int:
    """Deepest ``[``/``{`` nesting of a JSON text (strings skipped), in linear time.

    Example:
        >>> json_depth(b'{"a": [1, {"b": "[[["}]}')
        3
    """
    skeleton = _STRING.sub(b"0", text)
    codes = np.frombuffer(skeleton, dtype=np.uint8)
    step = (np.isin(codes, (ord("["), ord("{"))).astype(np.int64)
            - np.isin(codes, (ord("]"), ord("}"))).astype(np.int64))
    return int(np.cumsum(step).max(initial=0))


def _int(literal: str) -> int:
    if len(literal.lstrip("-")) > MAX_INT_DIGITS:
        raise FormatError(f"integer literal of {len(literal)} digits (at most {MAX_INT_DIGITS} allowed)")
    return int(literal)


def _float(literal: str) -> float:
    value = float(literal)
    if not np.isfinite(value):
        raise FormatError(f"number {literal[:40]!r} is not a finite float")
    return value


def _constant(name: str) -> float:
    raise FormatError(f"{name} is not allowed (finite numbers only)")


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"duplicate key {key[:80]!r}")
        out[key] = value
    return out


def parse_json(text: bytes, what: str = "header") -> Any:
    """Parse untrusted JSON with limits: at most ``MAX_DEPTH`` levels of nesting, integer
    literals of at most ``MAX_INT_DIGITS`` digits, finite numbers only (no ``NaN``,
    ``Infinity`` or ``1e400``) and no duplicate keys; anything else raises ``FormatError``.

    Example:
        >>> parse_json(b'{"a": [1, 2.5]}')
        {'a': [1, 2.5]}
    """
    try:
        depth = json_depth(text)
        if depth > MAX_DEPTH:
            raise FormatError(f"JSON nested {depth} levels deep (at most {MAX_DEPTH} allowed)")
        return json.loads(text.decode("utf-8"), object_pairs_hook=_object, parse_int=_int,
                          parse_float=_float, parse_constant=_constant)
    except FormatError as exc:
        raise FormatError(f"{what} is not valid nncompress JSON: {exc}") from None
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"{what} is not valid nncompress JSON ({exc})") from None


def _section_table(table: Any, source: str, data_len: int) -> list[tuple[str, int, int, int]]:
    """Validate the section table: entries ``{name, offset, length, crc32}`` with unique
    names and integer fields that tile ``[0, data_len)`` exactly, in order."""
    if not isinstance(table, list):
        raise FormatError(f"{source}: header field 'sections' must be a list, got {type(table).__name__}")
    out, names, expected = [], set(), 0
    for i, entry in enumerate(table):
        if not isinstance(entry, dict) or set(entry) != _SECTION_KEYS:
            raise FormatError(f"{source}: section entry {i} must have exactly the keys "
                              f"{sorted(_SECTION_KEYS)}, got {str(entry)[:120]}")
        name, off, length, crc = entry["name"], entry["offset"], entry["length"], entry["crc32"]
        if not isinstance(name, str) or not name or len(name) > 256 or name in names:
            raise FormatError(f"{source}: section entry {i} has a bad or repeated name {str(name)[:80]!r}")
        for field, value, top in (("offset", off, 2**63), ("length", length, 2**63),
                                  ("crc32", crc, 2**32 - 1)):
            if type(value) is not int or not 0 <= value <= top:
                raise FormatError(f"{source}: section {name!r} field {field!r} = {str(value)[:40]} "
                                  f"is not an integer in 0..{top}")
        if off + length > data_len:
            raise FormatError(f"{source}: section {name!r} (offset {off}, length {length}) lies "
                              f"outside the file's {data_len} payload bytes")
        if off != expected:
            raise FormatError(f"{source}: section {name!r} starts at {off}, expected {expected} "
                              "(sections must follow each other without gaps or overlaps)")
        expected = off + length
        names.add(name)
        out.append((name, off, length, crc))
    if expected != data_len:
        raise FormatError(f"{source}: {data_len - expected} bytes after the last section "
                          "belong to no section")
    return out


def unpack_container(blob: bytes, source: str = "<bytes>") -> Container:
    """Parse and verify a container; any damage raises ``FormatError`` naming what failed."""
    if len(blob) < _FIXED.size + 4:
        raise FormatError(f"{source}: file too short ({len(blob)} bytes) to be an .nnc file")
    magic, version, reserved, hlen, hcrc = _FIXED.unpack_from(blob, 0)
    if magic != MAGIC:
        raise FormatError(f"{source}: not an .nnc file (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise FormatError(f"{source}: .nnc format version {version} is not supported (this "
                          f"nncompress reads version {VERSION})")
    if reserved != 0:
        raise FormatError(f"{source}: reserved header field is {reserved}, must be 0")
    if hlen > len(blob) - _FIXED.size - 4:
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
        if not decomp.eof or decomp.unused_data:
            raise FormatError(f"{source}: header is not one complete zlib stream")
    except zlib.error as exc:
        raise FormatError(f"{source}: header is not valid zlib data ({exc})") from None
    header = parse_json(text, f"{source}: header")
    if not isinstance(header, dict) or set(header) != {"meta", "sections"}:
        raise FormatError(f"{source}: header must be an object with keys 'meta' and 'sections'")
    meta = header["meta"]
    if not isinstance(meta, dict):
        raise FormatError(f"{source}: header field 'meta' must be an object, got {type(meta).__name__}")
    data_start, data_end = _FIXED.size + hlen, len(blob) - 4
    sections: dict[str, bytes] = {}
    for name, off, length, crc in _section_table(header["sections"], source, data_end - data_start):
        payload = blob[data_start + off:data_start + off + length]
        if zlib.crc32(payload) != crc:
            raise FormatError(f"{source}: section {name!r} checksum mismatch")
        sections[name] = payload
    return Container(meta=meta, sections=sections)
