"""``nncompress report``: draw the HTML report of a .nnc file again (with its run's
report.json when there is one)."""

from __future__ import annotations

import argparse
from pathlib import Path

from nncompress.cli._common import (
    _add_format_options,
    _check_format_options,
    _input_file,
    _output_file,
    _read_nnc,
)


def _default_json(nnc: Path) -> Path | None:
    """The run's report.json where ``nncompress run`` puts it (``report/`` beside the file)."""
    candidate = nnc.parent / "report" / "report.json"
    return candidate if candidate.is_file() else None


def _cmd_report(args: argparse.Namespace) -> int:
    from nncompress.report.from_file import read_report_json, report_from_file
    from nncompress.report.html import report_html
    from nncompress.train.checkpoint import atomic_write_bytes

    nnc = _input_file(args.file, ".nnc file")
    given = args.report_json is not None
    json_path = _input_file(args.report_json, "--report-json file") if given else _default_json(nnc)
    out = _output_file(args.out if args.out is not None else str(nnc.with_suffix(".html")), "--out",
                       not_same_as=(nnc, *([json_path] if json_path else [])))
    _check_format_options(args)
    if json_path is not None and not given:
        try:  # found beside the file: use it only when it describes this file
            run = read_report_json(json_path)
            if run["summary"]["file_bytes"] != nnc.stat().st_size:
                json_path = None
        except Exception:  # noqa: BLE001 - not ours to judge: draw from the file alone
            json_path = None
    report = _read_nnc(lambda f, **kw: report_from_file(f, json_path, **kw), args)
    atomic_write_bytes(out, report_html(report).encode())
    used = f" and {json_path}" if json_path is not None else " (no report.json: the file alone)"
    print(f"report of {args.file}{used} -> {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the 'report' subcommand."""
    p = sub.add_parser("report", help="write the HTML report of a .nnc file (and its run's report.json)",
                       description="Write the one-file HTML report of a .nnc file: per-layer table, bytes "
                                   "by kind, the stored weights' distributions, sizes and MACs (built-in architectures); with the run's "
                                   "report.json (default: report/report.json beside the file, when it describes "
                                   "this file) also the stages, training curves and reference points.")
    p.add_argument("file", help="the .nnc file")
    p.add_argument("--report-json", metavar="FILE", help="the run's report.json (default: report/report.json "
                   "beside the file when it describes this file)")
    p.add_argument("--out", metavar="FILE.html", help="the page to write (default: the file's name with .html)")
    _add_format_options(p)
    p.set_defaults(fn=_cmd_report)
