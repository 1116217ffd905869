"""Benchmark (issue 21): the quick start's main job as a new user runs it.

Runs ``nncompress run`` (the default recipe, ``deep-compression-lenet300``) in a fresh
process with the machine's default threads, into a temporary output folder, and records
the wall time of the whole command, the time per stage, the file's bytes, ratio and the
accuracy of the loaded file (from the run's report), and whether ``report.html`` was
written (its size and inline figures).

    python benchmarks/quickstart.py [--recipe deep-compression-lenet300] [--keep DIR] [--screenshot PNG]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default=None, help="recipe name or path (default: the CLI's default)")
    ap.add_argument("--keep", metavar="DIR", help="write the run into DIR (kept) instead of a temporary folder")
    ap.add_argument("--screenshot", metavar="PNG", help="with Chromium: a full-page screenshot of report.html")
    args = ap.parse_args(argv)
    exe = Path(sys.executable).with_name("nncompress")
    with tempfile.TemporaryDirectory() as scratch:
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        out = Path(tmp) / "model.nnc"
        report_dir = Path(tmp) / "report"
        cmd = [str(exe), "run", *([args.recipe] if args.recipe else []), "--out", str(out),
               "--report", str(report_dir), "-q"]
        load_before = os.getloadavg()
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True)
        wall = time.perf_counter() - t0
        load_after = os.getloadavg()
        report = json.loads((report_dir / "report.json").read_text())
        html = report_dir / "report.html"
        html_bytes = html.stat().st_size if html.is_file() else None
        html_figures = html.read_text(encoding="utf-8").count("<svg") if html_bytes else 0
        if args.screenshot and html_bytes:
            from nncompress.report.browser import screenshot

            screenshot(html, args.screenshot)
    s = report["summary"]
    res = {"recipe": report.get("recipe"), "wall_seconds": wall, "file_bytes": s.get("file_bytes"),
           "ratio": s.get("ratio"), "accuracy": s.get("compressed_accuracy"),
           "stages": [{"stage": r["stage"], "seconds": r["seconds"], "accuracy": r["accuracy"]}
                      for r in report["stages"]],
           "report_html_bytes": html_bytes, "report_html_figures": html_figures,
           "cpus": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_after}
    md = [f"# Quick start main job ({res['recipe']})", "",
          f"`nncompress run` in a fresh process, default threads, {res['cpus']} CPUs; load average "
          f"before {load_before[0]:.2f}, after {load_after[0]:.2f}.", "",
          f"**{wall / 60:.1f} min** wall for the whole command; {res['file_bytes']:,} bytes, "
          f"**{res['ratio']:.1f}x**, accuracy of the loaded file **{100 * res['accuracy']:.2f}%**.", "",
          (f"report.html written: {html_bytes:,} bytes, {html_figures} inline figures." if html_bytes
           else "report.html NOT written."), "",
          "| stage | seconds | accuracy |", "|---|---:|---:|"]
    md += [f"| {r['stage']} | {r['seconds']:.1f} | {100 * r['accuracy']:.2f}% |" for r in res["stages"]]
    write_results("quickstart", res, "\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
