"""Look at a report page the way a person would: headless Chromium loads it (no network:
the page is a local file and every fetch is switched off), an inline probe writes what the
browser laid out into the DOM (figures, tables, page width against the window), and a
full-page screenshot is taken at the page's measured height. Used by the report tests and
to make ``docs/report.png``; nothing in the library calls it during a run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from nncompress.errors import NNCompressError

CHROMIUM = "/usr/bin/chromium"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--hide-scrollbars", "--mute-audio")
PROBE = """<script>
window.addEventListener("load", function () {
  var d = document.documentElement, out = {
    scrollWidth: d.scrollWidth, innerWidth: window.innerWidth, scrollHeight: d.scrollHeight,
    svgs: Array.prototype.map.call(document.querySelectorAll("figure svg"), function (s) {
      var r = s.getBoundingClientRect(); return {width: r.width, height: r.height}; }),
    figures: Array.prototype.map.call(document.querySelectorAll("figure[data-figure]"),
      function (f) { return f.getAttribute("data-figure"); }),
    tables: document.querySelectorAll("table").length,
    sections: Array.prototype.map.call(document.querySelectorAll("section[id]"), function (s) { return s.id; }),
    overflowing: Array.prototype.filter.call(document.querySelectorAll("main *"), function (e) {
      return e.getBoundingClientRect().right > window.innerWidth + 0.5 && !e.closest(".scroll"); }).length
  };
  var p = document.createElement("pre"); p.id = "nnc-probe"; p.textContent = JSON.stringify(out);
  document.body.appendChild(p);
});
</script>"""


def chromium() -> str | None:
    """The Chromium executable, or None when it is not installed."""
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


def _run(args: list[str], profile: Path, timeout: float) -> subprocess.CompletedProcess:
    exe = chromium()
    if exe is None:
        raise NNCompressError(f"Chromium is not installed ({CHROMIUM}); apt-get install chromium")
    cmd = [exe, *FLAGS, f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def measure(page: str | Path, width: int = 1280, height: int = 900, timeout: float = 120) -> dict[str, Any]:
    """Load a copy of ``page`` with the probe in a ``width`` x ``height`` window and return
    what the browser laid out: ``scrollWidth``, ``innerWidth``, ``scrollHeight``, the
    ``figures`` (ids) and their ``svgs`` boxes, ``tables``, ``sections``, and the count of
    elements reaching past the window's right edge outside a scrolling table
    (``overflowing``).

    Example:
        >>> m = measure("report/report.html")  # doctest: +SKIP
        >>> m["scrollWidth"] <= m["innerWidth"]  # doctest: +SKIP
        True
    """
    text = Path(page).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        probe_page = Path(tmp) / "page.html"
        probe_page.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
        res = _run([f"--window-size={width},{height}", "--virtual-time-budget=5000", "--dump-dom",
                    probe_page.as_uri()], Path(tmp) / "profile", timeout)
    found = re.search(r'<pre id="nnc-probe">(.*?)</pre>', res.stdout, flags=re.S)
    if found is None:
        raise NNCompressError(f"Chromium did not lay the page out (exit {res.returncode}): {res.stderr[-500:]}")
    import html

    return json.loads(html.unescape(found.group(1)))


def screenshot(page: str | Path, png: str | Path, width: int = 1280, timeout: float = 120) -> Path:
    """A PNG of the whole page (the window as tall as the page) at ``width`` pixels.

    Example:
        >>> screenshot("report/report.html", "docs/report.png")  # doctest: +SKIP
    """
    height = int(measure(page, width, 900, timeout)["scrollHeight"])
    png = Path(png).resolve()
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        res = _run([f"--window-size={width},{height}", f"--screenshot={png}", Path(page).resolve().as_uri()],
                   Path(tmp) / "profile", timeout)
    if not png.exists():
        raise NNCompressError(f"Chromium wrote no screenshot (exit {res.returncode}): {res.stderr[-500:]}")
    return png
