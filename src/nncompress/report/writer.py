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


def summary_rows(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The summary table (label, dense baseline, compressed), shared by ``report.md`` and
    ``report.html`` so both print the same figures. A figure the report lacks (a page
    rebuilt from a file alone has no dense accuracy) is ``-``.

    Example:
        >>> summary_rows({"file_bytes": 10, "dense_fp32_bytes": 1000, "ratio": 100.0})[1]
        ('bytes', '1,000 (fp32)', '10 (.nnc)')
    """
    s = summary

    def num(key: str) -> str:
        return "-" if s.get(key) is None else f"{s[key]:,}"

    macs = s.get("macs")
    dense_macs = s.get("original_macs", macs)
    return [
        ("test accuracy", _pct(s.get("dense_accuracy")), _pct(s.get("compressed_accuracy"))),
        ("bytes", f"{num('dense_fp32_bytes')} (fp32)", f"{num('file_bytes')} (.nnc)"),
        ("ratio", "1x", "-" if s.get("ratio") is None else f"**{s['ratio']:.1f}x**"),
        ("parameters / nonzero weights", num("original_parameters"),
         f"{num('nonzero_weights')} (of {num('weights')} weights left)"),
        ("MACs / sample", "-" if dense_macs is None else f"{dense_macs:,}",
         f"{num('macs')} ({num('sparse_macs')} with a nonzero weight)"),
    ]


def stage_bytes_cell(record: dict[str, Any]) -> str:
    """The stage table's size cell: bytes of the model as the run's codecs would store
    it after that stage (``-`` when not measured)."""
    return "-" if record.get("bytes") is None else f"{record['bytes']:,}"


def report_markdown(report: dict[str, Any]) -> str:
    """Human-readable summary: headline, stages, per-layer table."""
    lines = [
        f"# nncompress report: {report['recipe']}",
        "",
        f"Command: `{report['command']}`",
        "",
        "| | dense baseline | compressed (loaded from file) |",
        "|---|---:|---:|",
        *[f"| {a} | {b} | {c} |" for a, b, c in summary_rows(report["summary"])],
        "",
        "## Stages",
        "",
        "| stage | seconds | test accuracy after | bytes after (as stored) |",
        "|---|---:|---:|---:|",
    ]
    for r in report["stages"]:
        lines.append(f"| {r['stage']} | {r['seconds']:.1f} | {_pct(r['accuracy'])} | {stage_bytes_cell(r)} |")
    lines += ["", "## Per-layer compression (Deep Compression table layout)", "",
              table_markdown(report["table"]),
              "Per-layer rates are relative to each layer as stored (after any neurons were "
              "removed); the headline ratio is relative to the original dense model.", "",
              "## Plots", ""]
    if report.get("html"):
        lines += [f"The full report with every figure: [{report['html']}]({report['html']}).", ""]
    for name in report.get("plots", []):
        lines.append(f"![{name}]({name})")
    return "\n".join(lines) + "\n"
