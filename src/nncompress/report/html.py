"""``report.html``: one self-contained page (inline SVG figures, inline CSS, no script, no
network reference) with the summary, the stage table, every figure and the per-layer
table of a run, drawn from the report dictionary (``report.json``) alone."""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from nncompress.report import plots
from nncompress.report.writer import _pct, stage_bytes_cell, summary_rows

log = logging.getLogger(__name__)

CSS = """
*{box-sizing:border-box}
body{font-family:"DejaVu Sans",system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#222;
     background:#fafafa;line-height:1.45}
main{max-width:1180px;margin:0 auto;padding:18px 22px 40px;background:#fff}
h1{font-size:1.5em;margin:.2em 0 .1em}h2{font-size:1.18em;margin:1.6em 0 .5em;border-bottom:1px solid #ddd;
   padding-bottom:.2em}
p.meta{color:#555;font-size:.88em;margin:.2em 0;overflow-wrap:anywhere}
code{background:#f2f2f2;padding:0 .25em;border-radius:3px;overflow-wrap:anywhere}
nav{font-size:.9em;margin:.8em 0}nav a{margin-right:1em;color:#2a4a7f}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.86em;margin:.4em 0}
th,td{border-bottom:1px solid #e3e3e3;padding:.28em .6em;text-align:right;white-space:nowrap}
th{white-space:normal;vertical-align:bottom}
th{background:#f4f6fa;font-weight:600}td:first-child,th:first-child{text-align:left}
td.text{text-align:left;white-space:normal;min-width:18em;font-size:.92em;color:#444}
table.headline td,table.headline th{font-size:1.05em}
figure{margin:.6em 0 1.2em}figure svg{display:block;height:auto;max-width:100%}
figcaption{font-size:.86em;color:#444;margin-top:.3em}
.note{color:#7a5b00;background:#fff8e1;padding:.4em .7em;border-radius:4px;font-size:.9em}
"""

TABLE_COLUMNS = ("layer", "codec", "#weights", "weights kept", "weight bits P+Q", "weight bits P+Q+H",
                 "index bits P+Q", "index bits P+Q+H", "rate P+Q", "rate P+Q+H", "bytes")


def _e(value: Any) -> str:
    return html.escape(str(value))


def _md(text: str) -> str:
    """A cell of the shared summary rows: ``**x**`` becomes bold."""
    return re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", _e(text))


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "", raw: bool = False,
           wrap_last: bool = False) -> str:
    cells = (lambda v: v) if raw else _e
    out = [f'<div class="scroll"><table class="{cls}"><thead><tr>'
           + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        tds = [f"<td>{cells(c)}</td>" for c in r]
        if wrap_last and tds:
            tds[-1] = f'<td class="text">{cells(r[-1])}</td>'
        out.append("<tr>" + "".join(tds) + "</tr>")
    return "".join(out) + "</tbody></table></div>"


def _num(v: Any, fmt: str = "{:.2f}") -> str:
    return "-" if v is None else fmt.format(v)


def layer_table_rows(table: Mapping[str, Any]) -> list[list[str]]:
    """The per-layer table (Deep Compression layout) as text cells, totals last.

    Example:
        >>> layer_table_rows({"rows": [], "total": {"weights": 0, "kept": 1.0, "file_bytes": 9,
        ...                   "dense_fp32_bytes": 90}})[-1][-1]
        '9'
    """
    rows = []
    for r in table.get("rows", []):
        rows.append([r["layer"], r["codec"], f"{r['weights']:,}", _pct(r["kept"]), _num(r["weight_bits_pq"]),
                     _num(r["weight_bits_pqh"]), _num(r["index_bits_pq"]), _num(r["index_bits_pqh"]),
                     _pct(r["rate_pq"]), _pct(r["rate_pqh"]), f"{r['bytes']:,}"])
    t = table.get("total") or {}
    if t:
        rows.append(["total", "", f"{t['weights']:,}", _pct(t["kept"]), "", "", "", "", "",
                     _pct(t["file_bytes"] / max(t["dense_fp32_bytes"], 1)), f"{t['file_bytes']:,}"])
    return rows


def scope_ids(svg: str, prefix: str) -> str:
    """Prefix every ``id`` of an SVG and every in-document reference to one, so that
    several figures inlined in one page cannot resolve each other's clip paths or markers.

    Example:
        >>> scope_ids('<clipPath id="p1"/><g clip-path="url(#p1)"><use xlink:href="#m2"/></g>', "f")
        '<clipPath id="f-p1"/><g clip-path="url(#f-p1)"><use xlink:href="#f-m2"/></g>'
    """
    svg = re.sub(r'\bid="([^"]+)"', rf'id="{prefix}-\1"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", rf"url(#{prefix}-\1)", svg)
    return re.sub(r'href="#([^"]+)"', rf'href="#{prefix}-\1"', svg)


def _figure(fid: str, title: str, draw: Callable[[], Any], caption: str) -> str:
    """One titled figure as inline SVG; a figure that cannot be drawn becomes a note."""
    try:
        svg = scope_ids(plots.figure_svg(draw()), fid)
    except Exception as exc:  # noqa: BLE001 - one broken figure must not lose the page
        log.warning("figure %r not drawn: %s", fid, exc)
        return (f'<section id="{fid}"><h2>{_e(title)}</h2><p class="note">Not drawn: '
                f"{_e(type(exc).__name__)}: {_e(exc)}</p></section>")
    return (f'<section id="{fid}"><h2>{_e(title)}</h2><figure data-figure="{fid}">{svg}'
            f"<figcaption>{caption}</figcaption></figure></section>")


def _note(fid: str, title: str, text: str) -> str:
    return f'<section id="{fid}"><h2>{_e(title)}</h2><p class="note">{_e(text)}</p></section>'


def _references_table(summary: Mapping[str, Any], refs: Sequence[Mapping[str, Any]]) -> str:
    dense = summary.get("dense_fp32_bytes")
    rows = []
    if dense:
        rows.append(["dense fp32 model (this run)", f"{dense:,}", "1x", _pct(summary.get("dense_accuracy")),
                     "this run"])
    if summary.get("file_bytes"):
        rows.append(["this run (.nnc)", f"{summary['file_bytes']:,}",
                     f"{dense / summary['file_bytes']:.1f}x" if dense else "-",
                     _pct(summary.get("compressed_accuracy")), "this run"])
    for r in refs:
        b = r.get("bytes")
        ratio = r.get("ratio") or (dense / b if dense and b else None)
        rows.append([r["label"], "-" if b is None else f"{b:,}", "-" if ratio is None else f"{ratio:.1f}x",
                     _pct(r.get("accuracy")), r.get("source", "")])
    return _table(["point", "bytes", "ratio", "test accuracy", "source"], rows, wrap_last=True)


def report_html(report: Mapping[str, Any]) -> str:
    """The whole page for a report dictionary (as ``run_recipe`` returns and ``report.json``
    holds): summary, trade-off against the recipe's references, accuracy and size per
    stage, training curves, weight distributions, per-layer density/bits/bytes and the
    per-layer table. Missing parts (no curves, no snapshots, a page rebuilt from a file
    alone) are stated as notes, never silently dropped.

    Example:
        >>> page = report_html(json.load(open("runs/x/report/report.json")))  # doctest: +SKIP
        >>> page.count("<svg")  # doctest: +SKIP
        5
    """
    s = report.get("summary") or {}
    stages = list(report.get("stages") or [])
    refs = list(report.get("references") or [])
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>nncompress report: {_e(report.get('recipe', ''))}</title><style>{CSS}</style></head>"
             "<body><main>",
             f"<h1>nncompress report: {_e(report.get('recipe', ''))}</h1>"]
    if report.get("command"):
        parts.append(f'<p class="meta">Command: <code>{_e(report["command"])}</code></p>')
    meta = [f"{k} {report[k]}" for k in ("nncompress", "torch") if report.get(k)]
    if report.get("file"):
        meta.append(f"file {report['file']}")
    if report.get("device"):
        meta.append(f"device {report['device']}")
    if meta:
        parts.append(f'<p class="meta">{_e(" · ".join(meta))}</p>')
    if report.get("source_note"):
        parts.append(f'<p class="note">{_e(report["source_note"])}</p>')
    parts.append('<nav><a href="#summary">summary</a><a href="#tradeoff">accuracy vs size</a>'
                 '<a href="#stages">stages</a><a href="#curves">training curves</a>'
                 '<a href="#weights">weight distributions</a><a href="#layers">per layer</a>'
                 '<a href="#table">per-layer table</a></nav>')
    parts.append('<section id="summary"><h2>Summary</h2>'
                 + _table(["", "dense baseline", "compressed (loaded from file)"],
                          [[_e(a), _md(b), _md(c)] for a, b, c in summary_rows(s)], "headline", raw=True)
                 + "</section>")
    if s.get("file_bytes") and s.get("dense_fp32_bytes") and s.get("compressed_accuracy") is not None:
        parts.append(_figure(
            "tradeoff", "Accuracy against size", lambda: plots.tradeoff_figure(s, refs),
            "Test accuracy against file size (log scale; top axis: compression ratio) of this run, the dense "
            "model and the reference points the recipe names. A reference given only as a ratio (a paper's "
            "figure, measured on another set-up) is a dotted line at the size that ratio gives this dense model."))
        parts.append(_references_table(s, refs))
    else:
        parts.append(_note("tradeoff", "Accuracy against size",
                           "Needs the file's accuracy and the dense model's size (not in this report)."))
    if stages:
        parts.append(_figure(
            "stages", "Accuracy and size per stage",
            lambda: plots.stages_figure(stages, s.get("dense_fp32_bytes")),
            "Red line: test accuracy after each stage (left axis; its range is printed on the axis, every value "
            "labelled). Bars: bytes of the model as the run's codecs would store it after that stage (tensor "
            "sections, log scale); save+load is the file itself, header included."))
        parts.append(_table(["stage", "seconds", "test accuracy after", "bytes after (as stored)"],
                            [[r["stage"], f"{r.get('seconds', 0):.1f}", _pct(r.get("accuracy")),
                              stage_bytes_cell(r)] for r in stages]))
    else:
        parts.append(_note("stages", "Accuracy and size per stage",
                           "No stage records (a page rebuilt from a file without its report.json)."))
    curves = [c for c in report.get("curves") or [] if c.get("epochs")]
    if curves:
        parts.append(_figure("curves", "Training and retraining curves", lambda: plots.curves_figure(curves),
                             f"{len(curves)} fits in the order the run did them (training, retraining rounds, "
                             "final retraining, fine-tuning), one colour per recipe stage."))
    else:
        parts.append(_note("curves", "Training and retraining curves",
                           "No per-epoch records in this report (the run recorded none, or the page was "
                           "rebuilt from a file without its report.json)."))
    dists = report.get("distributions") or {}
    if dists:
        from nncompress.report.plots import drawn_series

        series = next(iter(dists.values()))["series"]
        labels = [x["label"].replace("_", " ") for x in drawn_series(series)]
        kept = [x["label"] for x in series]
        parts.append(_figure(
            "weights", "Weight distributions per stage", lambda: plots.distributions_figure(dists),
            "Nonzero weights of each layer (" + _e(", ".join(labels)) + "), count on a log axis so the few "
            "weights left after pruning show under the dense peak. Grey: the trained weights; lines: after "
            "pruning; red stems: weights per codebook centroid (count per value, not per bin), triangles: the "
            "centroids. report.json keeps every snapshot (" + _e(", ".join(kept)) + ")."))
    else:
        parts.append(_note("weights", "Weight distributions per stage", "No weight snapshots in this report."))
    table = report.get("table") or {}
    if table.get("rows"):
        parts.append(_figure(
            "layers", "Per layer: density, bits per weight, bytes",
            lambda: plots.layers_figure(table["rows"], report.get("byte_split")),
            "Left: weights kept. Middle: bits per stored weight after Huffman coding (value bits + relative "
            "index bits, as in the table below). Right: bytes of each layer in the file by kind (values, "
            "relative indices, codebook, other sections) and the file's header; together they are the file."))
        total = table.get("total") or {}
        tail = ""
        if total.get("original_fp32_bytes"):
            tail = (f"<p>File: {total['file_bytes']:,} bytes (header included) vs the original dense fp32 model "
                    f"{total['original_fp32_bytes']:,} bytes: <strong>{total['ratio_vs_original']:.1f}x</strong> "
                    "smaller.</p>")
        parts.append('<section id="table"><h2>Per-layer compression (Deep Compression table layout)</h2>'
                     + _table(TABLE_COLUMNS, layer_table_rows(table)) + tail
                     + "<p class=\"meta\">Per-layer rates are relative to each layer as stored (after any neurons "
                     "were removed); the headline ratio is relative to the original dense model.</p></section>")
    parts.append("</main></body></html>\n")
    return "".join(parts)
