"""Where the bytes of a ``.nnc`` file go, per layer: values, indices, codebook, other
(sections a codec does not split), from the codecs' own bit counts in the header, plus
the file's header and container (everything that is not a tensor section)."""

from __future__ import annotations

from typing import Any

from nncompress.format.model_io import FileInfo, TensorEntry

KINDS = ("values", "indices", "codebook", "other")
"""Byte kinds of a tensor, in drawing order."""


def layer_of(tensor_name: str) -> str:
    """The module a tensor belongs to (``fc1.weight`` -> ``fc1``).

    Example:
        >>> layer_of("features.0.weight"), layer_of("scale")
        ('features.0', 'scale')
    """
    return tensor_name.rsplit(".", 1)[0] if "." in tensor_name else tensor_name


def tensor_split(entry: TensorEntry) -> dict[str, int]:
    """Bytes of one stored tensor by kind. A codec's ``meta["bits"]`` names the bits of
    values (``weights``), indices (``index``) and codebook (``other`` of the sparse/deep
    codecs); whatever its bits leave of the tensor's section bytes is ``other``.

    Example:
        >>> from nncompress.format.model_io import TensorEntry
        >>> e = TensorEntry("fc1.weight", "deep", [4, 4], "float32", 10,
        ...                 {"bits": {"weights": 32, "index": 24, "other": 16}})
        >>> tensor_split(e)
        {'values': 4, 'indices': 3, 'codebook': 2, 'other': 1}
    """
    bits = entry.meta.get("bits") if isinstance(entry.meta.get("bits"), dict) else {}
    values = int(bits.get("weights", 8 * entry.nbytes)) // 8
    indices = int(bits.get("index", 0)) // 8
    codebook = int(bits.get("other", 0)) // 8 if entry.codec in ("deep", "sparse") else 0
    if values + indices + codebook > entry.nbytes:  # a codec counting bits it did not store
        values = max(entry.nbytes - indices - codebook, 0)
    other = max(entry.nbytes - values - indices - codebook, 0)
    return {"values": values, "indices": indices, "codebook": codebook, "other": other}


def byte_split(info: FileInfo) -> dict[str, Any]:
    """Per-layer byte split of a file: ``{"layers": [{"layer", "values", "indices",
    "codebook", "other", "bytes"}], "header": n, "file_bytes": n}``; the layers' bytes plus
    ``header`` equal the file's size.

    Example:
        >>> split = byte_split(nncompress.read_info("m.nnc"))  # doctest: +SKIP
        >>> sum(r["bytes"] for r in split["layers"]) + split["header"] == split["file_bytes"]  # doctest: +SKIP
        True
    """
    rows: dict[str, dict[str, Any]] = {}
    for entry in info.tensors:
        row = rows.setdefault(layer_of(entry.name), {"layer": layer_of(entry.name), **dict.fromkeys(KINDS, 0),
                                                     "bytes": 0})
        for kind, n in tensor_split(entry).items():
            row[kind] += n
        row["bytes"] += entry.nbytes
    tensor_bytes = sum(r["bytes"] for r in rows.values())
    return {"layers": list(rows.values()), "header": info.file_bytes - tensor_bytes, "file_bytes": info.file_bytes}
