"""The per-layer compression table of Deep Compression (Han et al. 2016, Tables 2-3),
computed from the bytes of a ``.nnc`` file."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from nncompress.format.model_io import FileInfo, TensorEntry

FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")


@dataclass
class TableRow:
    """One tensor. Bits are averages per stored entry (nonzeros + filler zeros), as the
    paper prints them; rates are stored bits / (32 bits x #weights)."""

    layer: str
    codec: str
    weights: int
    kept: float
    weight_bits_pq: float | None
    weight_bits_pqh: float | None
    index_bits_pq: float | None
    index_bits_pqh: float | None
    rate_pq: float
    rate_pqh: float
    bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def tensor_row(entry: TensorEntry) -> TableRow:
    """Table row of one stored tensor, from its codec metadata and section bytes."""
    n = max(entry.numel, 1)
    stats = entry.meta.get("stats")
    if stats and entry.meta.get("entries"):
        e = entry.meta["entries"]
        other = entry.meta.get("bits", {}).get("other", 0)
        pq_bits = stats["weight_bits_pq"] + stats["index_bits_pq"] + other
        return TableRow(
            entry.name, entry.codec, entry.numel, entry.meta.get("nnz", e) / n,
            stats["weight_bits_pq"] / e, stats["weight_bits_pqh"] / e,
            stats["index_bits_pq"] / e, stats["index_bits_pqh"] / e,
            pq_bits / (32 * n), 8 * entry.nbytes / (32 * n), entry.nbytes)
    bits = entry.meta.get("bits", {})
    wbits = bits.get("weights", 8 * entry.nbytes) / n
    kept = entry.meta.get("nnz", entry.numel) / n
    return TableRow(entry.name, entry.codec, entry.numel, kept, wbits, wbits, None, None,
                    8 * entry.nbytes / (32 * n), 8 * entry.nbytes / (32 * n), entry.nbytes)


def compression_table(info: FileInfo) -> dict:
    """Rows for every float tensor plus totals: dense fp32 bytes (4 bytes per float value
    in the state dict) vs the file's bytes (header included), and their ratio."""
    rows = [tensor_row(t) for t in info.tensors if t.dtype in FLOAT_DTYPES]
    dense = sum(4 * r.weights for r in rows)
    weights = [r for r in rows if r.layer.endswith("weight")]
    n_w = sum(r.weights for r in weights)
    kept = sum(r.kept * r.weights for r in weights)
    return {
        "rows": [r.to_dict() for r in rows],
        "total": {
            "weights": n_w,
            "kept": kept / max(n_w, 1),
            "tensor_bytes": sum(r.bytes for r in rows),
            "file_bytes": info.file_bytes,
            "dense_fp32_bytes": dense,
            "ratio": dense / max(info.file_bytes, 1),
        },
    }


def _fmt(v, pct=False) -> str:
    if v is None:
        return "-"
    return f"{100 * v:.2f}%" if pct else f"{v:.2f}"


def table_markdown(table: dict) -> str:
    """Markdown rendering in the paper's column order."""
    head = ("| layer | codec | #weights | weights kept | weight bits P+Q | weight bits P+Q+H "
            "| index bits P+Q | index bits P+Q+H | rate P+Q | rate P+Q+H | bytes |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    lines = []
    for r in table["rows"]:
        lines.append(
            f"| {r['layer']} | {r['codec']} | {r['weights']:,} | {_fmt(r['kept'], True)} | "
            f"{_fmt(r['weight_bits_pq'])} | {_fmt(r['weight_bits_pqh'])} | {_fmt(r['index_bits_pq'])} | "
            f"{_fmt(r['index_bits_pqh'])} | {_fmt(r['rate_pq'], True)} | {_fmt(r['rate_pqh'], True)} | "
            f"{r['bytes']:,} |")
    t = table["total"]
    lines.append(
        f"| **total** | | {t['weights']:,} | {_fmt(t['kept'], True)} | | | | | | "
        f"{_fmt(t['file_bytes'] / max(t['dense_fp32_bytes'], 1), True)} | {t['file_bytes']:,} |")
    if "original_fp32_bytes" in t and t["original_fp32_bytes"] != t["dense_fp32_bytes"]:
        tail = (f"\nFile: {t['file_bytes']:,} bytes (header included) vs the original dense fp32 model "
                f"{t['original_fp32_bytes']:,} bytes: **{t['ratio_vs_original']:.1f}x** smaller "
                f"({t['ratio']:.1f}x vs the fp32 size of the layers as stored, "
                f"{t['dense_fp32_bytes']:,} bytes).\n")
    else:
        tail = (f"\nFile: {t['file_bytes']:,} bytes (header included) vs dense fp32 "
                f"{t['dense_fp32_bytes']:,} bytes: **{t['ratio']:.1f}x** smaller.\n")
    return head + "\n".join(lines) + "\n" + tail
