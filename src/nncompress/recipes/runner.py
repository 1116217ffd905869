"""Run a recipe: build the model and data, run the stages, save the ``.nnc`` file, load it
back, evaluate the loaded model, and write the report directory."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

import nncompress
from nncompress.analysis.accounting import count_parameters, layer_stats, totals
from nncompress.analysis.file_table import compression_table
from nncompress.errors import ConfigError, NNCompressError
from nncompress.factory import FACTORY_KEY, factory_record
from nncompress.factory import load as load_nnc
from nncompress.models.registry import arch_of
from nncompress.recipes.build import (
    build_callable,
    build_recipe_data,
    build_recipe_model,
    first_sample,
)
from nncompress.recipes.context import RunContext, StageRecord
from nncompress.recipes.resume import StageCheckpoints
from nncompress.recipes.schema import Recipe
from nncompress.recipes.stages import STAGES
from nncompress.recipes.teacher import keep_trained_teacher
from nncompress.recipes.validate import validate_recipe
from nncompress.report import plots
from nncompress.report.byte_split import byte_split
from nncompress.report.distributions import weight_distributions
from nncompress.report.html import report_html
from nncompress.report.writer import report_markdown, write_json
from nncompress.train.batches import to_device
from nncompress.train.checkpoint import atomic_write_bytes
from nncompress.train.ddp import barrier, broadcast_masks, broadcast_model, ranks_agree, world

log = logging.getLogger(__name__)
STAGE_BYTES_MAX_PARAMETERS = 5_000_000
"""Above this many parameters the size after each stage is not measured (encoding the
model once per stage would cost more than the report is worth)."""
DISTRIBUTED_STAGES = ("train", "prune", "quantize", "decompose", "encode", "evaluate")
"""Stages that run under torchrun: their training goes through ``fit`` (DDP) and their
decisions (masks, codebooks, low-rank factors) are made from identical weights on every
rank, then rank 0's model and masks are broadcast."""


def build_context(recipe: Recipe, progress: bool = False, device: torch.device | str | None = None) -> RunContext:
    """Model, data, example input, loss and metric of a recipe, on ``device`` (default CPU).

    Example:
        >>> ctx = build_context(load_recipe("deep-compression-lenet300"))  # doctest: +SKIP
    """
    torch.manual_seed(recipe.seed)
    device = torch.device(device) if device is not None else torch.device("cpu")
    model, pretrained = build_recipe_model(recipe.model)
    data = build_recipe_data(recipe.data, recipe.seed, pretrained)
    model.to(device)
    example = to_device(first_sample(data.test), device)
    ctx = RunContext(model, data.train, data.test, example, seed=recipe.seed)
    ctx.calib_data = data.calib
    ctx.loss_fn = build_callable(recipe.loss, "loss")
    ctx.metric_fn = build_callable(recipe.metric, "metric")
    ctx.extras["progress"] = progress
    ctx.extras["device"] = str(device)
    if pretrained is not None:
        ctx.extras["pretrained"] = pretrained
        if recipe.metric is None:  # an embedder's score: cosine to the model as given, on the test text
            from nncompress.models.huggingface import cosine_scorer

            ctx.score_fn = cosine_scorer(model, data.test, pretrained.pooling or "mean", pretrained.normalize)
    ctx.keep_teacher = any(getattr(s.config, "distill", None) is not None or s.name == "distill"
                           for s in recipe.stages)
    if recipe.stages and recipe.stages[0].name != "train" and any(s.name == "distill" for s in recipe.stages):
        keep_trained_teacher(ctx)  # a given (pretrained) model: the distill stage's teacher is it as given
    return ctx


def _model_stats(model: torch.nn.Module, example: Any) -> tuple[list, dict[str, int]]:
    """Per-layer stats and totals; a model that takes a dict (a transformer) gets them from
    its parameters alone (no MACs)."""
    if isinstance(example, torch.Tensor):
        stats = layer_stats(model, example)
        return stats, totals(stats)
    n = sum(p.numel() for p in model.parameters())
    nz = sum(int((p != 0).sum()) for p in model.parameters())
    return [], {"weights": n, "nonzeros": nz, "macs": 0, "sparse_macs": 0}


def check_distributed(recipe: Recipe) -> None:
    """Under torchrun: every stage must be one of ``DISTRIBUTED_STAGES``."""
    if world()[1] == 1:
        return
    bad = [f"stages[{i}].{s.name}" for i, s in enumerate(recipe.stages) if s.name not in DISTRIBUTED_STAGES]
    if bad:
        raise ConfigError(f"{', '.join(bad)} cannot run distributed (torchrun) yet; stages that can: "
                          f"{', '.join(DISTRIBUTED_STAGES)}. Run this recipe in one process.")


def run_recipe(recipe: Recipe, out: str | Path, report_dir: str | Path | None = None,
               *, progress: bool = False, command: str = "",
               stage_hook: Callable[[str, RunContext], None] | None = None,
               trained_state: Mapping[str, torch.Tensor] | None = None,
               device: torch.device | str | None = None,
               checkpoint_dir: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Validate, run every stage, save to ``out``, reload, evaluate, and write the report.

    The recipe is checked against the built model before the first stage
    (``validate_recipe``: every layer name and glob, ratio, bit width and criterion; all
    problems in one ``ConfigError``). ``stage_hook(stage_name, ctx)`` is called after each
    stage (benchmarks branch a peer pipeline off the trained model there). ``trained_state``:
    the model's state after the recipe's first stage, a ``train`` stage, which then loads it
    instead of training again. ``device``: where the model and every tensor live.
    ``checkpoint_dir``: write a checkpoint after every stage (and every epoch of a train
    stage) there; with ``resume`` continue from the last one found. Under torchrun every
    training runs under DDP, rank 0's model and masks are broadcast after each stage, and
    only rank 0 writes the file, the report and the checkpoints.

    Example:
        >>> report = run_recipe(load_recipe("deep-compression-lenet300"), "m.nnc", "report")  # doctest: +SKIP
        >>> report["summary"]["ratio"]  # doctest: +SKIP
    """
    check_distributed(recipe)
    rank, _ = world()
    ctx = build_context(recipe, progress, device)
    validate_recipe(recipe, ctx)  # before any stage: all problems at once
    original = count_parameters(ctx.model)  # before any stage: the baseline's real size
    original_macs = _model_stats(ctx.model, ctx.example_input)[1]["macs"]
    dense_accuracy = None
    checkpoints = StageCheckpoints(checkpoint_dir, recipe, write=rank == 0) if checkpoint_dir is not None else None
    start = 0
    if checkpoints is not None and resume:
        start, dense_accuracy = checkpoints.restore(ctx)
        if start:
            log.info("resumed after stage %d/%d", start, len(recipe.stages))
    elif checkpoints is not None:
        checkpoints.clear()  # a fresh run: a killed run's epoch checkpoint must not be picked up
        barrier()
    for i, stage in enumerate(recipe.stages):
        if i < start:
            continue
        spec = STAGES.get(stage.name)
        log.info("stage %d/%d: %s", i + 1, len(recipe.stages), stage.name)
        t0 = time.perf_counter()
        ctx.extras["fit_checkpoint"] = checkpoints.fit_path(i) if checkpoints is not None else None
        if i == 0 and trained_state is not None:
            if stage.name != "train":
                raise ConfigError(f"trained_state replaces a first 'train' stage, not {stage.name!r}")
            ctx.model.load_state_dict(trained_state)
            keep_trained_teacher(ctx)
            ctx.snapshot("trained")
            extra = {"reused_trained_state": True}
        else:
            extra = spec.run(ctx, stage.config) or {}
        broadcast_model(ctx.model)  # torchrun: rank 0's decisions hold on every rank
        ctx.masks = broadcast_masks(ctx.masks)
        acc = ctx.score()
        ctx.records.append(StageRecord(stage.name, time.perf_counter() - t0, acc, extra))
        if "bytes" not in extra:
            extra["bytes"] = stored_bytes(ctx.model, ctx.codecs)
        if stage.name == "train" and dense_accuracy is None:
            dense_accuracy = acc
            ctx.extras["dense_stats"] = count_parameters(ctx.model)
        log.info("%s done in %.1fs, test score %.4f", stage.name, ctx.records[-1].seconds, acc)
        if checkpoints is not None:
            checkpoints.save(i, ctx, dense_accuracy)
        if stage_hook is not None:
            stage_hook(stage.name, ctx)
        done = getattr(ctx.extras.get("progress"), "stage_done", None)
        if done is not None:  # the stage's result line (written once, hook or not)
            done(ctx)
    ctx.extras.pop("fit_checkpoint", None)
    if not ranks_agree(ctx.model):  # torchrun: every rank must end with rank 0's model
        raise NNCompressError(f"rank {rank}: the processes hold different models after the last stage")
    evaluated_accuracy = ctx.score()
    if rank != 0:  # torchrun: rank 0 writes; the others wait for it
        barrier()
        return {"recipe": recipe.name, "rank": rank, "summary": {"compressed_accuracy": evaluated_accuracy}}
    t0 = time.perf_counter()
    metadata = {"recipe": recipe.name, "accuracy": evaluated_accuracy, "data": recipe.data.label}
    if recipe.model.factory is not None or recipe.data.factory is not None:
        record = factory_record(recipe.model.factory, recipe.model.kwargs) if recipe.model.factory else {}
        if recipe.data.factory is not None:  # eval --data SPEC reuses these kwargs
            record.update(data=recipe.data.factory, data_kwargs=dict(recipe.data.kwargs))
        metadata[FACTORY_KEY] = record
    device_of = next(ctx.model.parameters()).device
    saved = ctx.model if device_of.type == "cpu" else copy.deepcopy(ctx.model).cpu()
    input_shape = None
    if arch_of(ctx.model) is None and isinstance(ctx.example_input, torch.Tensor):
        input_shape = list(ctx.example_input.shape[1:])  # a user model: load checks it runs, export uses it
        metadata["input_shape"] = input_shape
    info = nncompress.save(saved, out, codecs=ctx.codecs or None, metadata=metadata, input_shape=input_shape)
    if recipe.model.factory is not None:
        loaded = load_nnc(out, factory=recipe.model.factory)
    else:
        loaded = nncompress.load(out, model=None if arch_of(ctx.model) else saved)
    loaded.to(device_of)
    compressed_accuracy = ctx.score(loaded)
    if compressed_accuracy != evaluated_accuracy:
        raise NNCompressError(f"the loaded model scores {compressed_accuracy}, the saved one "
                              f"{evaluated_accuracy}: the file does not reproduce the model")
    ctx.records.append(StageRecord("save+load", time.perf_counter() - t0, compressed_accuracy,
                                   {"bytes": info.file_bytes}))
    table = compression_table(info)
    stats, tot = _model_stats(loaded, ctx.example_input)
    report = {
        "recipe": recipe.name,
        "command": command,
        "nncompress": nncompress.__version__,
        "torch": torch.__version__,
        "file": str(out),
        "device": ctx.extras["device"],
        "world_size": world()[1],
        "ranks_identical": True,  # checked (state digests of every rank equal) before saving
        "metric": "accuracy" if recipe.metric is None else recipe.metric.factory,
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
        "references": [ref.to_dict() for ref in recipe.references],
        "curves": list(getattr(getattr(ctx, "progress", None), "curves", None) or []),
        "byte_split": byte_split(info),
        "stages": [{"stage": r.stage, "seconds": r.seconds, "accuracy": r.accuracy, **r.extra}
                   for r in ctx.records],
        "layers": [s.to_dict() for s in stats],
        "table": {**table, "total": {**table["total"], "original_fp32_bytes": original["dense_fp32_bytes"],
                                     "ratio_vs_original": original["dense_fp32_bytes"] / info.file_bytes}},
    }
    if report_dir is not None:
        stored = {k: v.detach().cpu().numpy().ravel() for k, v in loaded.state_dict().items()
                  if k.endswith("weight") and v.dim() > 1 and v.is_floating_point()}
        report["distributions"] = weight_distributions(ctx.snapshots, stored) if ctx.snapshots else {}
        write_report(report, ctx, Path(report_dir))
    if checkpoints is not None:
        checkpoints.clear()
    barrier()
    return report


def stored_bytes(model: torch.nn.Module, codecs: Mapping[str, Any] | None = None) -> int | None:
    """Bytes of the model's tensor sections as ``save`` would write them now (the run's
    codec choices, else ``auto``; header not counted): the size after a stage. None for
    a model above ``STAGE_BYTES_MAX_PARAMETERS`` or one the codecs cannot store yet.

    Example:
        >>> stored_bytes(torch.nn.Linear(4, 2))  # 8 fp32 weights + 2 biases, raw
        40
    """
    from nncompress.format.model_io import encode_state, plan_codecs

    if sum(p.numel() for p in model.parameters()) > STAGE_BYTES_MAX_PARAMETERS:
        return None
    try:
        return sum(enc.nbytes for enc in encode_state(model, plan_codecs(model, codecs or None), verify=False).values())
    except Exception as exc:  # noqa: BLE001 - a report figure never stops a run (e.g. a codec for later weights)
        log.info("size after the stage not measured: %s: %s", type(exc).__name__, exc)
        return None


def write_report(report: dict[str, Any], ctx: RunContext | None, folder: Path) -> None:
    """report.json, report.md, report.html and the plots (PNG, for report.md) into
    ``folder``. ``ctx`` is unused (kept for callers); everything drawn comes from the
    report dictionary, so ``nncompress report`` can draw the same page again."""
    folder.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plots(report, folder)
    report["html"] = "report.html"
    write_json(folder / "report.json", report)
    atomic_write_bytes(folder / "report.md", report_markdown(report).encode())
    atomic_write_bytes(folder / "report.html", report_html(report).encode())


def write_plots(report: dict[str, Any], folder: Path) -> list[str]:
    """The report's figures as PNG files for ``report.md``; returns their names. A figure
    without its data (no curves, no snapshots) is not written."""
    s = report["summary"]
    figures = {
        "weights.png": (lambda: plots.distributions_figure(report["distributions"]))
        if report.get("distributions") else None,
        "accuracy.png": lambda: plots.stages_figure(report["stages"], s.get("dense_fp32_bytes")),
        "tradeoff.png": (lambda: plots.tradeoff_figure(s, report.get("references") or []))
        if s.get("compressed_accuracy") is not None else None,
        "curves.png": (lambda: plots.curves_figure(report["curves"]))
        if any(c.get("epochs") for c in report.get("curves") or []) else None,
        "layers.png": (lambda: plots.layers_figure(report["table"]["rows"], report.get("byte_split")))
        if report.get("table", {}).get("rows") else None,
    }
    written = []
    for name, draw in figures.items():
        if draw is None:
            continue
        try:
            plots.save_png(draw(), folder / name)
        except Exception as exc:  # noqa: BLE001 - the file is saved; one odd figure must not fail the run
            log.warning("%s not drawn: %s: %s", name, type(exc).__name__, exc)
            continue
        written.append(name)
    return written
