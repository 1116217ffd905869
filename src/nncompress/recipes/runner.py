"""Run a recipe: build the model and data, run the stages, save the ``.nnc`` file, load it
back, evaluate the loaded model, and write the report directory."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

import nncompress
from nncompress.analysis.accounting import count_parameters, layer_stats, totals
from nncompress.analysis.file_table import compression_table
from nncompress.data import load_dataset
from nncompress.errors import ConfigError, NNCompressError
from nncompress.models import build_model
from nncompress.models.registry import arch_of
from nncompress.recipes.context import RunContext, StageRecord
from nncompress.recipes.schema import Recipe
from nncompress.recipes.stages import STAGES
from nncompress.recipes.teacher import keep_trained_teacher
from nncompress.report.plots import accuracy_per_stage, weight_histograms
from nncompress.report.writer import report_markdown, write_json
from nncompress.train.checkpoint import atomic_write_bytes
from nncompress.train.loop import evaluate

log = logging.getLogger(__name__)


def build_context(recipe: Recipe, progress: bool = False) -> RunContext:
    """Model, data and example input of a recipe."""
    torch.manual_seed(recipe.seed)
    model = build_model(recipe.model.name, **recipe.model.kwargs)
    train = load_dataset(recipe.data.name, "train", recipe.data.root)
    test = load_dataset(recipe.data.name, "test", recipe.data.root)
    if recipe.data.train_subset is not None:
        g = torch.Generator().manual_seed(recipe.seed)
        train = Subset(train, torch.randperm(len(train), generator=g)[: recipe.data.train_subset].tolist())
    example = test[0][0].unsqueeze(0)
    ctx = RunContext(model, train, test, example, seed=recipe.seed)
    ctx.extras["progress"] = progress
    ctx.keep_teacher = any(getattr(s.config, "distill", None) is not None for s in recipe.stages)
    return ctx


def run_recipe(recipe: Recipe, out: str | Path, report_dir: str | Path | None = None,
               *, progress: bool = False, command: str = "",
               stage_hook: Callable[[str, RunContext], None] | None = None,
               trained_state: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Run every stage, save to ``out``, reload, evaluate, and write the report.

    ``stage_hook(stage_name, ctx)`` is called after each stage (benchmarks branch a peer
    pipeline off the trained model there). ``trained_state``: the model's state after the
    recipe's first stage, a ``train`` stage, which then loads it instead of training again
    (benchmarks run several recipes from one dense training).

    Example:
        >>> report = run_recipe(load_recipe("deep-compression-lenet300"), "m.nnc", "report")  # doctest: +SKIP
        >>> report["summary"]["ratio"]  # doctest: +SKIP
    """
    ctx = build_context(recipe, progress)
    original = count_parameters(ctx.model)  # before any stage: the baseline's real size
    original_macs = totals(layer_stats(ctx.model, ctx.example_input))["macs"]
    dense_accuracy = None
    for i, stage in enumerate(recipe.stages):
        spec = STAGES.get(stage.name)
        log.info("stage %d/%d: %s", i + 1, len(recipe.stages), stage.name)
        t0 = time.perf_counter()
        if i == 0 and trained_state is not None:
            if stage.name != "train":
                raise ConfigError(f"trained_state replaces a first 'train' stage, not {stage.name!r}")
            ctx.model.load_state_dict(trained_state)
            keep_trained_teacher(ctx)
            ctx.snapshot("trained")
            extra = {"reused_trained_state": True}
        else:
            extra = spec.run(ctx, stage.config) or {}
        acc = evaluate(ctx.model, ctx.test_data)["accuracy"]
        ctx.records.append(StageRecord(stage.name, time.perf_counter() - t0, acc, extra))
        if stage.name == "train" and dense_accuracy is None:
            dense_accuracy = acc
            ctx.extras["dense_stats"] = count_parameters(ctx.model)
        log.info("%s done in %.1fs, test accuracy %.4f", stage.name, ctx.records[-1].seconds, acc)
        if stage_hook is not None:
            stage_hook(stage.name, ctx)
    evaluated_accuracy = evaluate(ctx.model, ctx.test_data)["accuracy"]
    t0 = time.perf_counter()
    info = nncompress.save(ctx.model, out, codecs=ctx.codecs or None,
                           metadata={"recipe": recipe.name, "accuracy": evaluated_accuracy,
                                     "data": recipe.data.name})
    loaded = nncompress.load(out, model=None if arch_of(ctx.model) else ctx.model)
    compressed_accuracy = evaluate(loaded, ctx.test_data)["accuracy"]
    if compressed_accuracy != evaluated_accuracy:
        raise NNCompressError(f"the loaded model scores {compressed_accuracy}, the saved one "
                              f"{evaluated_accuracy}: the file does not reproduce the model")
    ctx.records.append(StageRecord("save+load", time.perf_counter() - t0, compressed_accuracy))
    table = compression_table(info)
    stats = layer_stats(loaded, ctx.example_input)
    tot = totals(stats)
    report = {
        "recipe": recipe.name,
        "command": command,
        "nncompress": nncompress.__version__,
        "torch": torch.__version__,
        "file": str(out),
        "summary": {
            "dense_accuracy": dense_accuracy,
            "compressed_accuracy": compressed_accuracy,
            "file_bytes": info.file_bytes,
            "dense_fp32_bytes": original["dense_fp32_bytes"],
            "ratio": original["dense_fp32_bytes"] / info.file_bytes,
            "original_parameters": original["parameters"],
            "weights": tot["weights"], "nonzero_weights": tot["nonzeros"],
            "macs": tot["macs"], "sparse_macs": tot["sparse_macs"], "original_macs": original_macs,
        },
        "stages": [{"stage": r.stage, "seconds": r.seconds, "accuracy": r.accuracy, **r.extra}
                   for r in ctx.records],
        "layers": [s.to_dict() for s in stats],
        "table": {**table, "total": {**table["total"], "original_fp32_bytes": original["dense_fp32_bytes"],
                                     "ratio_vs_original": original["dense_fp32_bytes"] / info.file_bytes}},
    }
    if report_dir is not None:
        write_report(report, ctx, Path(report_dir))
    return report


def write_report(report: dict[str, Any], ctx: RunContext, folder: Path) -> None:
    """report.json, report.md and the plots into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = []
    if ctx.snapshots:
        weight_histograms(ctx.snapshots, folder / "weights.png")
        plots.append("weights.png")
    accuracy_per_stage([r["stage"] for r in report["stages"]], [r["accuracy"] for r in report["stages"]],
                       folder / "accuracy.png")
    plots.append("accuracy.png")
    report["plots"] = plots
    write_json(folder / "report.json", report)
    atomic_write_bytes(folder / "report.md", report_markdown(report).encode())
