"""Report figures (matplotlib, Agg backend), drawn from the JSON-able numbers of a report
(``report.json``), so a page can be drawn again without the run. Each ``*_figure``
function returns a matplotlib ``Figure``; ``figure_svg`` renders it as inline SVG text
for the HTML page and ``save_png`` writes it as a PNG for ``report.md``.

Figures: weight distributions per layer and stage (log counts, codebook stems),
per-layer density / bits per weight / bytes, accuracy and size per stage, training
curves, and accuracy against size beside the recipe's reference points.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from nncompress.errors import ConfigError

MAX_PANELS = 18
"""Weight-distribution panels drawn at most (the largest layers first beyond that)."""
STYLE = {"svg.fonttype": "none", "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
         "legend.fontsize": 8, "xtick.labelsize": 8, "ytick.labelsize": 8,
         "font.family": ["DejaVu Sans", "sans-serif"], "axes.spines.top": False, "axes.spines.right": False}
BYTE_COLOURS = {"values": "#4c72b0", "indices": "#dd8452", "codebook": "#55a868", "other": "#8172b3",
                "header": "#937860"}
SERIES_STYLES = [("#1f77b4", "-"), ("#ff7f0e", "--"), ("#9467bd", "-."), ("#8c564b", ":")]


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - matplotlib is a dependency; say which
        raise ConfigError("the report's plots need matplotlib: pip install matplotlib") from exc
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def figure_svg(fig) -> str:
    """The figure as an ``<svg>`` element (text kept as text, no external references) and
    the figure closed.

    Example:
        >>> figure_svg(stages_figure([{"stage": "train", "accuracy": 0.9}])).startswith("<svg")
        True
    """
    plt = _pyplot()
    buf = io.StringIO()
    with plt.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text[text.index("<svg"):], flags=re.S)
    return re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", text, count=4)  # inline in HTML: no namespaces needed


def save_png(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write the figure as a PNG atomically and close it.

    Example:
        >>> save_png(stages_figure([{"stage": "train", "accuracy": 0.9}]), "accuracy.png")  # doctest: +SKIP
    """
    from nncompress.train.checkpoint import atomic_write_bytes

    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def human_bytes(n: float) -> str:
    """``12,867 B`` / ``1.07 MB`` style sizes (decimal units, as file managers print them).

    Example:
        >>> human_bytes(12867), human_bytes(1066440), human_bytes(512)
        ('12.9 kB', '1.07 MB', '512 B')
    """
    if n < 1000:
        return f"{n:,.0f} B"
    for unit, scale in (("kB", 1e3), ("MB", 1e6), ("GB", 1e9)):
        if n < 1000 * scale or unit == "GB":
            v = n / scale
            return f"{v:.3g} {unit}" if v < 100 else f"{v:,.0f} {unit}"
    return f"{n:,.0f} B"  # pragma: no cover


def accuracy_floor(values: Sequence[float]) -> tuple[float, float]:
    """A y range (in %) for accuracies that is not zoomed onto noise: from 5 points below
    the lowest value rounded down to a multiple of 5 (at least 0), to 4 points above the
    highest rounded up to a multiple of 5 (at most 100).

    Example:
        >>> accuracy_floor([89.45, 90.05])
        (80.0, 95.0)
    """
    if not values:
        return 0.0, 100.0
    lo = max(0.0, 5.0 * math.floor((min(values) - 5) / 5))
    hi = min(100.0, 5.0 * math.ceil((max(values) + 4) / 5))
    return lo, max(hi, lo + 10.0)


def _series_label(s: Mapping[str, Any]) -> str:
    label = str(s["label"]).replace("_", " ")
    return f"{label} ({s['nonzero']:,} nonzero)"


def distributions_figure(dists: Mapping[str, Mapping[str, Any]]):
    """Weight distribution of every layer, one panel each, every stage's series on a log
    count axis (so the few weights that survive pruning show under the dense peak): the
    first series filled grey, later ones as step lines of their own colour and dash, a
    series on a codebook (k-means sharing) as one stem per centroid (weights per
    centroid) with the centroids marked on the axis.

    Example:
        >>> from nncompress.report.distributions import layer_distribution
        >>> import numpy as np
        >>> fig = distributions_figure({"fc1.weight": layer_distribution({"trained": np.arange(1.0, 9)})})
    """
    plt = _pyplot()
    layers = list(dists)
    if len(layers) > MAX_PANELS:
        big = sorted(layers, key=lambda k: -sum(s["total"] for s in dists[k]["series"][:1]))[:MAX_PANELS]
        layers = [k for k in layers if k in big]
    n = max(len(layers), 1)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(rows, cols, figsize=(4.3 * cols, 4.0 * rows), squeeze=False)
        for ax in axes.ravel()[len(layers):]:
            ax.set_visible(False)
        for ax, layer in zip(axes.ravel(), layers):
            _draw_layer(ax, dists[layer])
            ax.set_title(layer)
        for ax in axes[:, 0]:
            ax.set_ylabel("count (log scale)")
        for ax in axes.ravel():
            ax.set_xlabel("weight value (exact zeros left out)", labelpad=2)
        fig.tight_layout()
    return fig


def drawn_series(series: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The series a panel draws, as the Deep Compression paper does: the first (trained),
    the last one not on a codebook after it (pruned), and the last (shared, or what the
    file stores); the report keeps every series.

    Example:
        >>> s = [{"label": "trained"}, {"label": "after_pruning"}, {"label": "after_sharing", "values": [1.0]},
        ...      {"label": "after_finetune", "values": [1.1]}]
        >>> [x["label"] for x in drawn_series(s)]
        ['trained', 'after_pruning', 'after_finetune']
    """
    if len(series) <= 3:
        return list(series)
    binned = [s for s in series[1:-1] if "values" not in s]
    return [series[0], *binned[-1:], series[-1]]


def _draw_layer(ax, dist: Mapping[str, Any]) -> None:
    import numpy as np

    edges = np.asarray(dist["edges"])
    styles = iter(SERIES_STYLES * 4)
    top = 1.0
    for i, s in enumerate(drawn_series(dist["series"])):
        counts = np.asarray(s["counts"], dtype=float)
        if "values" in s and (i > 0 or len(s["values"]) <= 64):
            values, vc = np.asarray(s["values"]), np.asarray(s["value_counts"], dtype=float)
            ax.vlines(values, 0.8, vc, colors="#d62728", linewidth=0.8, alpha=0.8,
                      label=_series_label(s) + ", per centroid")
            ax.plot(values, np.full(values.shape, 0.8), linestyle="none", marker="^", markersize=4,
                    color="#d62728", clip_on=False, label=f"{len(values)} codebook centroids")
            top = max(top, float(vc.max()))
        elif i == 0:
            ax.stairs(counts, edges, fill=True, color="#b0b0b0", alpha=0.6, label=_series_label(s))
        else:
            colour, dash = next(styles)
            ax.stairs(counts, edges, color=colour, linestyle=dash, linewidth=1.3, label=_series_label(s))
        top = max(top, float(counts.max()) if counts.size else 1.0)
    ax.set_yscale("log")
    ax.set_ylim(0.8, top * 3)
    ax.set_xlim(edges[0], edges[-1])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False, handlelength=1.6)
    ax.grid(alpha=0.25, which="major")


def layers_figure(table_rows: Sequence[Mapping[str, Any]], split: Mapping[str, Any] | None):
    """Per layer (weight matrices, top to bottom): the fraction of weights kept, the
    stored bits per kept weight (value and index bits with Huffman coding, as in the
    Deep Compression table), and the layer's bytes stacked by kind (values, indices,
    codebook, other) beside the file's header.

    Example:
        >>> row = {"layer": "fc1.weight", "kept": 0.1, "weight_bits_pqh": 5.0, "index_bits_pqh": 4.0, "bytes": 9}
        >>> fig = layers_figure([row], None)
    """
    import numpy as np

    plt = _pyplot()
    rows = [r for r in table_rows if str(r["layer"]).endswith("weight")] or list(table_rows)
    names = [str(r["layer"]) for r in rows]
    y = np.arange(len(rows))
    h = max(2.6, 0.34 * len(rows) + 1.4)
    with plt.rc_context(STYLE):
        fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12.5, h), gridspec_kw={"width_ratios": [1, 1, 1.5]})
        kept = np.array([100 * float(r["kept"]) for r in rows])
        a1.barh(y, kept, color="#4c72b0")
        for yi, k in zip(y, kept):
            a1.text(k, yi, f" {k:.2f}%", va="center", fontsize=8)
        a1.set_yticks(y, names)
        a1.invert_yaxis()
        a1.set_xlim(0, 118)
        a1.set_xlabel("weights kept (%)")
        a1.set_title("density")
        wb = np.array([r.get("weight_bits_pqh") or 0.0 for r in rows], dtype=float)
        ib = np.array([r.get("index_bits_pqh") or 0.0 for r in rows], dtype=float)
        a2.barh(y, wb, color=BYTE_COLOURS["values"], label="value bits")
        a2.barh(y, ib, left=wb, color=BYTE_COLOURS["indices"], label="index bits")
        for yi, a, b in zip(y, wb, ib):
            a2.text(a + b, yi, f" {a:.2f}+{b:.2f}" if b else f" {a:.2f}", va="center", fontsize=8)
        a2.set_yticks(y, [""] * len(y))
        a2.invert_yaxis()
        a2.set_xlim(0, max(float((wb + ib).max()) * 1.45, 1.0))
        a2.set_xlabel("bits per stored weight (with Huffman coding)")
        a2.set_title("bits per weight")
        a2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22 * 2.6 / h), frameon=False, ncol=2)
        _bytes_panel(a3, split, names)
        fig.tight_layout()
    return fig


def _bytes_panel(ax, split: Mapping[str, Any] | None, weight_rows: Sequence[str]) -> None:
    import numpy as np

    if not split:
        ax.text(0.5, 0.5, "no byte split (no file)", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    layers = list(split["layers"])
    names = [r["layer"] for r in layers] + ["header"]
    y = np.arange(len(names))
    left = np.zeros(len(names))
    for kind in ("values", "indices", "codebook", "other"):
        vals = np.array([r[kind] for r in layers] + [0], dtype=float)
        if vals.any():
            ax.barh(y, vals, left=left, color=BYTE_COLOURS[kind], label=kind)
            left += vals
    ax.barh(y[-1:], [split["header"]], color=BYTE_COLOURS["header"], label="header + container")
    left[-1] = split["header"]
    for yi, total in zip(y, left):
        ax.text(total, yi, f" {int(total):,} B", va="center", fontsize=8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlim(0, float(left.max()) * 1.3 or 1.0)
    ax.set_xlabel(f"bytes in the file (total {split['file_bytes']:,} B)")
    ax.set_title("bytes per layer (weights + bias)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22 * 2.6 / ax.figure.get_figheight()), frameon=False,
              ncol=5, columnspacing=1.0, handlelength=1.2)


def stages_figure(stages: Sequence[Mapping[str, Any]], dense_bytes: int | None = None):
    """Test accuracy (line, left axis, every value printed) and the model's size (bars,
    right axis, log scale, every size printed) after each stage, on one figure. The
    accuracy axis starts at ``accuracy_floor`` and says so.

    Example:
        >>> fig = stages_figure([{"stage": "train", "accuracy": 0.9, "bytes": 1066440},
        ...                      {"stage": "prune", "accuracy": 0.89, "bytes": 40000}])
    """
    import numpy as np

    plt = _pyplot()
    names = [str(s["stage"]) for s in stages]
    x = np.arange(len(stages))
    acc = [None if s.get("accuracy") is None else 100 * float(s["accuracy"]) for s in stages]
    sizes = [s.get("bytes") for s in stages]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8.5, 3.6))
        ax2 = ax.twinx()
        ax2.spines["right"].set_visible(True)
        have = [i for i, b in enumerate(sizes) if b]
        if have:
            ax2.bar(x[have], [sizes[i] for i in have], width=0.55, color="#c9d6ea", edgecolor="#4c72b0",
                    label="size (bytes)")
            ax2.set_yscale("log")
            lo = min(sizes[i] for i in have)
            hi = max([sizes[i] for i in have] + [dense_bytes or 0])
            ax2.set_ylim(lo / 4, hi * 4)
            for i in have:  # inside the bar, at its foot: clear of the accuracy line
                ax2.text(x[i], lo / 4 * 1.25, human_bytes(sizes[i]), ha="center", va="bottom", fontsize=8,
                         color="#1b3560", fontweight="bold")
            ax2.set_ylabel("size after the stage (bytes, log scale)", color="#2a4a7f")
        else:
            ax2.set_axis_off()
        pts = [i for i, a in enumerate(acc) if a is not None]
        floor, ceil = accuracy_floor([acc[i] for i in pts])
        ax.plot(x[pts], [acc[i] for i in pts], marker="o", color="#d62728", linewidth=1.8, label="test accuracy")
        for i in pts:
            ax.annotate(f"{acc[i]:.2f}%", (x[i], acc[i]), textcoords="offset points", xytext=(0, 7),
                        ha="center", fontsize=8, color="#a01c1c")
        ax.set_ylim(floor, ceil)
        ax.set_ylabel(f"test accuracy (%), axis {floor:.0f}-{ceil:.0f}%", color="#a01c1c")
        ax.set_xticks(x, names)
        ax.set_zorder(ax2.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.grid(alpha=0.25, axis="y")
        ax.set_title("accuracy and size after each stage")
        fig.tight_layout()
    return fig


def fit_labels(curves: Sequence[Mapping[str, Any]], min_share: float = 0.04) -> list[tuple[int, str]]:
    """``(first epoch index, label)`` to print above the curves: one per fit, except that
    consecutive short fits of one stage (each under ``min_share`` of all epochs: pruning
    rounds) share one label, ``first ... (n fits)``, so the labels do not pile up.

    Example:
        >>> c = [{"label": "train", "stage": "train", "epochs": [{}] * 40}] + [
        ...      {"label": f"round {i}/3", "stage": "prune", "epochs": [{}]} for i in (1, 2, 3)]
        >>> fit_labels(c)
        [(0, 'train'), (40, 'round 1/3 ... (3 fits)')]
    """
    fits = [(str(c.get("label", "")), str(c.get("stage", "")), len(c.get("epochs") or [])) for c in curves]
    fits = [f for f in fits if f[2]]
    total = sum(n for _, _, n in fits)
    out: list[tuple[int, str]] = []
    pos, i = 0, 0
    while i < len(fits):
        label, stage, n = fits[i]
        j = i + 1
        if n < min_share * total:
            while j < len(fits) and fits[j][1] == stage and fits[j][2] < min_share * total:
                j += 1
        group = fits[i:j]
        text = label if len(group) == 1 else f"{label} ... ({len(group)} fits)"
        out.append((pos, text))
        pos += sum(g[2] for g in group)
        i = j
    return out


def curves_figure(curves: Sequence[Mapping[str, Any]]):
    """Loss (top) and accuracy (bottom) per epoch of every fit the run did, one after the
    other on a shared epoch axis, coloured by recipe stage; training accuracy dashed,
    validation accuracy solid; each fit's label at its start when there is room.

    Example:
        >>> fig = curves_figure([{"label": "train", "stage": "train",
        ...     "epochs": [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_accuracy": 0.6}]}])
    """
    plt = _pyplot()
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    stage_colour: dict[str, str] = {}
    with plt.rc_context(STYLE):
        fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 5.4), sharex=True)
        start = 0
        accs: list[float] = []
        labelled: set[str] = set()
        for c in curves:
            eps = list(c.get("epochs") or [])
            if not eps:
                continue
            colour = stage_colour.setdefault(str(c.get("stage", c.get("label"))),
                                             colours[len(stage_colour) % len(colours)])
            xs = [start + i + 1 for i in range(len(eps))]
            stage = str(c.get("stage", c.get("label")))
            first = stage not in labelled
            labelled.add(stage)
            loss = [e.get("train_loss") for e in eps]
            if any(v is not None for v in loss):
                a1.plot(xs, loss, color=colour, marker="." if len(xs) < 30 else None, linewidth=1.3,
                        label=stage if first else None)
            for key, dash in (("train_accuracy", "--"), ("val_accuracy", "-")):
                vals = [None if e.get(key) is None else 100 * e[key] for e in eps]
                if any(v is not None for v in vals):
                    a2.plot(xs, vals, color=colour, linestyle=dash, linewidth=1.3,
                            marker="." if len(xs) < 30 else None)
                    accs += [v for v in vals if v is not None]
            a1.axvline(start + 0.5, color="#cccccc", linewidth=0.6)
            a2.axvline(start + 0.5, color="#cccccc", linewidth=0.6)
            start = xs[-1]
        for pos, text in fit_labels(curves):
            a1.annotate(text, (pos + 1, 1.0), xycoords=("data", "axes fraction"), rotation=30, fontsize=7,
                        va="bottom", ha="left", color="#555555")
        a1.set_ylabel("training loss")
        a1.legend(loc="upper right", frameon=False, title="stage", title_fontsize=8)
        a1.grid(alpha=0.25)
        if accs:
            lo, hi = accuracy_floor(accs)
            a2.set_ylim(lo, hi)
            a2.set_ylabel(f"accuracy (%), axis {lo:.0f}-{hi:.0f}%")
        kinds = {key for c in curves for e in c.get("epochs") or [] for key in e if e.get(key) is not None}
        if "train_accuracy" in kinds:
            a2.plot([], [], color="#555555", linestyle="--", label="train")
        if "val_accuracy" in kinds:
            a2.plot([], [], color="#555555", linestyle="-", label="test")
        if accs:
            a2.legend(loc="lower right", frameon=False)
        a2.set_xlabel("epoch (every fit of the run in order; grey lines separate fits)")
        a2.grid(alpha=0.25)
        fig.tight_layout()
    return fig


def tradeoff_figure(summary: Mapping[str, Any], references: Sequence[Mapping[str, Any]] = ()):
    """Accuracy against file size (log) of this run, the dense model and the recipe's
    reference points, each named in the legend below with its size, ratio and accuracy
    (labels on the plot would collide: the points sit close together); a reference given
    only as a ratio (a paper's figure on another set-up) is a vertical line at the size
    that ratio would give this dense model. A top axis shows the compression ratio.

    Example:
        >>> fig = tradeoff_figure({"dense_fp32_bytes": 1000, "dense_accuracy": 0.9, "file_bytes": 20,
        ...                        "compressed_accuracy": 0.89}, [{"label": "paper", "ratio": 40.0}])
    """
    import numpy as np

    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter

    dense = float(summary["dense_fp32_bytes"])
    peers = ["#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#17becf", "#bcbd22"]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(8.5, 4.0 + 0.2 * (len(references) + 2)))
        accs: list[float] = []
        xs: list[float] = [dense, float(summary["file_bytes"])]

        def point(b, a, label, **kw):
            ax.plot([b], [100 * a], linestyle="none", label=f"{label}: {human_bytes(b)} ({dense / b:.1f}x), "
                    f"{100 * a:.2f}%", **kw)
            ax.annotate(f"{100 * a:.2f}%", (b, 100 * a), textcoords="offset points", xytext=(0, 9),
                        fontsize=8, ha="center", va="bottom")
            accs.append(100 * a)

        if summary.get("dense_accuracy") is not None:
            point(dense, summary["dense_accuracy"], "dense fp32 model", marker="s", color="#555555", markersize=8)
        colours = iter(peers * 3)
        for r in references:
            b = r.get("bytes") or (dense / r["ratio"] if r.get("ratio") else None)
            if b is None:
                continue
            xs.append(float(b))
            if r.get("accuracy") is None:
                ax.axvline(b, color="#2ca02c", linestyle=":", linewidth=1.6,
                           label=f"{r['label']} (ratio only: {dense / b:.0f}x of this dense model = {human_bytes(b)})")
            else:
                point(float(b), r["accuracy"], r["label"], marker="o", color=next(colours), markersize=7)
        point(float(summary["file_bytes"]), summary["compressed_accuracy"], "this run", marker="*",
              color="#d62728", markersize=14)
        ax.set_xscale("log")
        ax.set_xlim(min(xs) / 2.5, max(xs) * 4)
        lo, hi = accuracy_floor(accs)
        ax.set_ylim(lo, hi)
        ax.set_xlabel("file size (bytes, log scale)")
        ax.set_ylabel(f"test accuracy (%), axis {lo:.0f}-{hi:.0f}%")

        def ratio(v):
            with np.errstate(divide="ignore"):
                return dense / np.maximum(v, 1e-12)

        top = ax.secondary_xaxis("top", functions=(ratio, ratio))
        top.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        top.set_xlabel("compression ratio vs the dense fp32 model")
        ax.grid(alpha=0.25, which="both")
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), frameon=False, ncol=1)
        fig.tight_layout()
    return fig
