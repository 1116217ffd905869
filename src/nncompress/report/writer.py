"""report.json + report.md of a recipe run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nncompress.analysis.file_table import table_markdown
from nncompress.train.checkpoint import atomic_write_bytes


def write_json(path: str | Path, data: Any) -> Path:
    """Atomically write pretty JSON."""
    atomic_write_bytes(path, (json.dumps(data, indent=2, default=_jsonable) + "\n").encode())
    return Path(path)


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__dict__"):
        return vars(obj)
    return str(obj)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def report_markdown(report: dict[str, Any]) -> str:
    """Human-readable summary: headline, stages, per-layer table."""
    s = report["summary"]
    lines = [
        f"# nncompress report: {report['recipe']}",
        "",
        f"Command: `{report['command']}`",
        "",
        "| | dense baseline | compressed (loaded from file) |",
        "|---|---:|---:|",
        f"| test accuracy | {_pct(s['dense_accuracy'])} | {_pct(s['compressed_accuracy'])} |",
        f"| bytes | {s['dense_fp32_bytes']:,} (fp32) | {s['file_bytes']:,} (.nnc) |",
        f"| ratio | 1x | **{s['ratio']:.1f}x** |",
        f"| parameters / nonzero weights | {s['original_parameters']:,} | {s['nonzero_weights']:,} "
        f"(of {s['weights']:,} weights left) |",
        f"| MACs / sample | {s.get('original_macs', s['macs']):,} | {s['macs']:,} ({s['sparse_macs']:,} "
        "with a nonzero weight) |",
        "",
        "## Stages",
        "",
        "| stage | seconds | test accuracy after |",
        "|---|---:|---:|",
    ]
    for r in report["stages"]:
        lines.append(f"| {r['stage']} | {r['seconds']:.1f} | {_pct(r['accuracy'])} |")
    lines += ["", "## Per-layer compression (Deep Compression table layout)", "",
              table_markdown(report["table"]),
              "Per-layer rates are relative to each layer as stored (after any neurons were "
              "removed); the headline ratio is relative to the original dense model.", "",
              "## Plots", ""]
    for name in report.get("plots", []):
        lines.append(f"![{name}]({name})")
    return "\n".join(lines) + "\n"
