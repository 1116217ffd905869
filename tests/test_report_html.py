"""report.html: every table and figure on one self-contained page, the summary figures
checked against the file, the page rebuilt by ``nncompress report``, and (slow) the page
as headless Chromium lays it out."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import nncompress
from nncompress.analysis.accounting import layer_stats, totals
from nncompress.errors import ConfigError
from nncompress.recipes.schema import load_recipe, parse_recipe
from nncompress.report.byte_split import byte_split, tensor_split
from nncompress.report.distributions import (
    distinct_series,
    layer_distribution,
    weight_distributions,
)
from nncompress.report.html import report_html
from nncompress.report.plots import accuracy_floor

FIGURES = ("tradeoff", "stages", "curves", "weights", "layers")
SECTIONS = ("summary", "tradeoff", "stages", "curves", "weights", "layers", "table")
TINY = {
    "name": "tiny-report",
    "model": {"name": "lenet300"},
    "data": {"name": "digits", "train_subset": 400},
    "seed": 0,
    "stages": [
        {"train": {"epochs": 2, "lr": 0.05, "batch_size": 64}},
        {"prune": {"schedule": [{"fc1": 0.9, "fc2": 0.8, "fc3": 0.5}], "retrain": {"epochs": 1, "lr": 0.02}}},
        {"quantize": {"method": "kmeans", "bits_fc": 4, "finetune": {"epochs": 1, "lr": 0.001}}},
        {"encode": {"index_bits_fc": 5}},
        {"evaluate": {}},
    ],
    "references": [{"label": "a paper: 40x", "ratio": 40, "source": "somewhere, Table 1"},
                   {"label": "a peer", "bytes": 30000, "accuracy": 0.9, "source": "benchmarks/results/x.md"}],
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One tiny run (digits, 2 epochs, one pruning round, 4-bit k-means) with its report."""
    from nncompress.recipes.runner import run_recipe

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("run")
    report = run_recipe(parse_recipe(TINY), folder / "m.nnc", folder / "report", command="test")
    return folder, report


def _page(folder: Path) -> str:
    return (folder / "report" / "report.html").read_text(encoding="utf-8")


def test_page_has_every_table_and_figure(run):
    folder, report = run
    page = _page(folder)
    assert page.count("<svg") == len(FIGURES)
    assert re.findall(r'data-figure="([a-z]+)"', page) == list(FIGURES)
    for sid in SECTIONS:
        assert f'<section id="{sid}">' in page
    for title in ("Summary", "Accuracy against size", "Accuracy and size per stage", "Training and retraining curves",
                  "Weight distributions per stage", "Per layer: density, bits per weight, bytes",
                  "Per-layer compression (Deep Compression table layout)"):
        assert f"<h2>{title}</h2>" in page
    # summary, references, stages, per-layer table
    assert page.count("<table") == 4
    assert 'class="note"' not in page  # nothing was left out
    for row in report["table"]["rows"]:
        assert f"<td>{row['layer']}</td>" in page
    for r in report["references"]:
        assert r["label"] in page
    assert "axis " in page  # the accuracy axes state their range
    assert set(report["plots"]) == {"weights.png", "accuracy.png", "tradeoff.png", "curves.png", "layers.png"}
    assert "report.html" in (folder / "report" / "report.md").read_text()


def test_page_is_self_contained(run):
    page = _page(run[0])
    assert not re.search(r"https?://", page)
    assert not re.search(r"<(script|link|img|iframe|object)\b", page)
    assert not re.search(r"\b(src|href)=\"(?!#)", page)  # only in-page anchors
    assert not re.search(r"url\((?!#)", page)  # only the figures' own clip paths
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # figures inlined together never share an id


def test_summary_figures_match_the_file(run):
    """Every figure of the summary table, in report.md and report.html, from the file."""
    from nncompress.data import load_dataset
    from nncompress.models import build_model
    from nncompress.train.loop import evaluate

    folder, report = run
    out = folder / "m.nnc"
    s = report["summary"]
    info = nncompress.read_info(out)
    loaded = nncompress.load(out)
    t = totals(layer_stats(loaded, torch.zeros(1, 1, 28, 28)))
    dense = build_model("lenet300")
    dense_t = totals(layer_stats(dense, torch.zeros(1, 1, 28, 28)))
    assert dense_t["macs"] == 266_200 == s["original_macs"]  # the dense model's MACs, not the pruned count
    assert s["file_bytes"] == info.file_bytes == out.stat().st_size
    assert s["dense_fp32_bytes"] == sum(4 * v.numel() for v in dense.state_dict().values())
    assert s["ratio"] == pytest.approx(s["dense_fp32_bytes"] / info.file_bytes)
    assert (s["nonzero_weights"], s["weights"]) == (t["nonzeros"], t["weights"])
    assert (s["macs"], s["sparse_macs"]) == (t["macs"], t["sparse_macs"])
    assert s["original_parameters"] == sum(p.numel() for p in dense.parameters())
    acc = evaluate(loaded, load_dataset("digits", "test"))["accuracy"]
    assert acc == pytest.approx(s["compressed_accuracy"]) == pytest.approx(info.metadata["accuracy"])
    md = (folder / "report" / "report.md").read_text()
    page = _page(folder)
    expected = [f"{100 * acc:.2f}%", f"{100 * s['dense_accuracy']:.2f}%", f"{info.file_bytes:,} (.nnc)",
                f"{s['dense_fp32_bytes']:,} (fp32)", f"{s['dense_fp32_bytes'] / info.file_bytes:.1f}x",
                f"{t['nonzeros']:,} (of {t['weights']:,} weights left)",
                f"{dense_t['macs']:,}", f"{t['macs']:,} ({t['sparse_macs']:,} with a nonzero weight)"]
    for text in expected:
        assert text in md, text
        assert text in page, text
    assert f"| MACs / sample | {dense_t['macs']:,} | {t['macs']:,} (" in md
    assert report["stages"][-1]["bytes"] == info.file_bytes


def test_byte_split_adds_up_to_the_file(run):
    folder, report = run
    info = nncompress.read_info(folder / "m.nnc")
    split = byte_split(info)
    assert split == report["byte_split"]
    assert sum(r["bytes"] for r in split["layers"]) + split["header"] == info.file_bytes
    assert [r["layer"] for r in split["layers"]] == ["fc1", "fc2", "fc3"]
    for e in info.tensors:
        parts = tensor_split(e)
        assert sum(parts.values()) == e.nbytes
        if e.codec == "deep":  # k-means: a codebook of fp16/fp32 centroids, values and gaps
            cb = 2 if e.meta["codebook_dtype"] == "float16" else 4
            assert parts["codebook"] == cb * e.meta["codebook_size"] and parts["indices"] > 0
    fc1 = split["layers"][0]
    assert fc1["codebook"] > 0 and fc1["values"] > 0 and fc1["indices"] > 0


def test_distributions_keep_what_the_figure_needs(run):
    _, report = run
    d = report["distributions"]["fc1.weight"]
    labels = [x["label"] for x in d["series"]]
    assert labels[0] == "trained" and "before_pruning" not in labels  # the same weights are drawn once
    trained, pruned = d["series"][0], d["series"][labels.index("after_pruning")]
    assert trained["nonzero"] == 235_200 and pruned["nonzero"] == round(0.1 * 235_200)
    assert sum(pruned["counts"]) == pruned["nonzero"]
    shared = d["series"][-1]
    assert len(shared["values"]) <= 16 and sum(shared["value_counts"]) == shared["nonzero"]


def test_layer_distribution_and_dedup():
    w = np.array([0.0, 0.0, -0.5, 0.5, 0.5, 1.0])
    d = layer_distribution({"a": w, "b": np.where(w > 0, 0.75, 0.0)}, bins=3)
    assert d["series"][0]["nonzero"] == 4 and sum(d["series"][0]["counts"]) == 4
    assert d["series"][1]["values"] == [0.75] and d["series"][1]["value_counts"] == [3]
    same = {"x.weight": np.ones(3)}
    assert list(distinct_series({"t": same, "u": {"x.weight": np.ones(3)}, "v": {"x.weight": np.zeros(3)}})) == ["t", "v"]
    out = weight_distributions({"t": same}, stored={"x.weight": np.ones(3)})
    assert [s["label"] for s in out["x.weight"]["series"]] == ["t"]  # the file holds the last snapshot


def test_accuracy_axis_is_not_zoomed():
    lo, hi = accuracy_floor([89.45, 90.05])
    assert hi - lo >= 10 and lo <= 89.45 - 5 and hi >= 90.05
    assert accuracy_floor([99.9]) == (90.0, 100.0)


def test_synthetic_curves_and_no_data_notes():
    """A hand-made report: the curves are drawn from report["curves"]; a report without
    curves, stages or snapshots says so instead of dropping the figure."""
    summary = {"dense_accuracy": 0.9, "compressed_accuracy": 0.89, "dense_fp32_bytes": 1000, "file_bytes": 20,
               "ratio": 50.0, "original_parameters": 250, "weights": 200, "nonzero_weights": 20, "macs": 200,
               "sparse_macs": 20, "original_macs": 250}
    curves = [{"label": lab, "stage": st, "epochs": [{"epoch": i, "train_loss": 1.0 / (i + 1), "train_accuracy": 0.5,
                                                     "val_accuracy": 0.6} for i in range(3)]}
              for lab, st in (("train", "train"), ("prune round 1/2 retrain", "prune"), ("quantize fine-tune", "quantize"))]
    page = report_html({"recipe": "r", "summary": summary, "curves": curves, "stages": [],
                        "table": {"rows": [], "total": {}}})
    assert 'data-figure="curves"' in page and "3 fits" in page
    assert 'data-figure="tradeoff"' in page
    for sid in ("stages", "weights"):
        assert re.search(rf'<section id="{sid}"><h2>[^<]+</h2><p class="note">', page)
    bare = report_html({"recipe": "r", "summary": summary})
    assert re.search(r'<section id="curves"><h2>[^<]+</h2><p class="note">', bare)


def test_references_key_is_validated():
    base = {"name": "x", "stages": [{"evaluate": {}}]}
    ok = parse_recipe({**base, "references": [{"label": "p", "ratio": 40, "source": "paper"}]})
    assert ok.references[0].to_dict() == {"label": "p", "source": "paper", "ratio": 40.0}
    bad = [("x", "references must be a list"),
           ([{"label": "p", "source": "s"}], "references[0]: give one of bytes"),
           ([{"label": "p", "source": "s", "bytes": 10, "accuracy": 89.5}], "accuracy=89.5 not allowed"),
           ([{"label": "p", "source": "s", "bytes": -3}], "bytes=-3 not allowed"),
           ([{"label": "p", "source": "s", "ratio": 0}], "ratio=0"),
           ([{"label": "p", "bytes": 10}], "source is required"),
           ([{"label": "p", "source": "s", "bytes": 10, "url": "x"}], "unknown key(s) ['url']")]
    for refs, message in bad:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_recipe({**base, "references": refs})


def test_builtin_references_cite_measured_rows():
    """The built-in recipe's peer point is the row of the benchmark file it cites; the
    paper's figure is a ratio only."""
    refs = load_recipe("deep-compression-lenet300").references
    paper = [r for r in refs if r.ratio is not None]
    assert len(paper) == 1 and paper[0].ratio == 40 and paper[0].accuracy is None
    root = Path(__file__).resolve().parents[1]
    for r in refs:
        if r.bytes is None:
            continue
        source = root / r.source.split()[0]
        text = source.read_text()
        row = next(line for line in text.splitlines() if line.startswith("| lenet300 (seed 0)"))
        assert f"{r.bytes:,}" in row and f"{100 * r.accuracy:.2f}%" in row


def test_cli_report_rebuilds_the_page(run, tmp_path, capsys):
    from nncompress.cli import main

    folder, report = run
    alone = tmp_path / "alone.nnc"
    shutil.copy(folder / "m.nnc", alone)
    assert main(["report", str(alone)]) == 0
    page = (tmp_path / "alone.html").read_text()
    assert "Rebuilt from the file alone" in page
    assert re.findall(r'data-figure="([a-z]+)"', page) == ["tradeoff", "weights", "layers"]  # no stages, curves
    assert "stored in the file" in page and f"{report['summary']['file_bytes']:,} (.nnc)" in page
    assert "266,200" in page  # the original model's MACs, from the architecture record
    assert main(["report", str(folder / "m.nnc"), "--out", str(tmp_path / "full.html")]) == 0  # report/ found
    full = (tmp_path / "full.html").read_text()
    assert re.findall(r'data-figure="([a-z]+)"', full) == list(FIGURES)
    assert main(["report", str(alone), "--report-json", str(folder / "report" / "report.json"),
                 "--out", str(tmp_path / "j.html")]) == 0
    capsys.readouterr()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**report, "summary": {**report["summary"], "file_bytes": 5}}, default=str))
    for argv, message in ((["report", str(tmp_path / "none.nnc")], "does not exist"),
                          (["report", str(alone), "--report-json", str(tmp_path / "no.json")], "does not exist"),
                          (["report", str(alone), "--report-json", str(other)], "not this file's report"),
                          (["report", str(folder / "report" / "report.json")], "not an .nnc file"),
                          (["report", str(alone), "--out", str(tmp_path)], "is a directory")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)


def _apt_usable() -> bool:
    return shutil.which("apt-get") is not None and os.geteuid() == 0


@pytest.mark.slow
def test_page_in_headless_chromium(run):
    """The page as a browser lays it out in a 1280x900 window: every figure drawn at a
    readable size, every table there, nothing wider than the window."""
    from nncompress.report import browser

    if browser.chromium() is None:
        if not _apt_usable():
            pytest.skip("/usr/bin/chromium is missing and apt-get is not usable here (not root): "
                        "install Chromium to render report.html")
        pytest.fail("/usr/bin/chromium is missing: run scripts/setup.sh (apt-get install chromium)")
    m = browser.measure(run[0] / "report" / "report.html", 1280, 900)
    assert m["figures"] == list(FIGURES)
    assert m["sections"] == list(SECTIONS) and m["tables"] == 4
    assert m["scrollWidth"] <= m["innerWidth"] and m["overflowing"] == 0
    for box in m["svgs"]:
        assert 500 <= box["width"] <= 1280 and box["height"] >= 150
