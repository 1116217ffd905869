"""One entry point for structured pruning: score, select, remove, fine-tune, repeat.

``structured_prune`` works with any criterion of ``CRITERIA`` (scoring), either per-layer
ratios or a global ranking (selection) and ``remove_channels`` (surgery). With ``steps > 1``
the target is reached on a geometric schedule (the kept share after step i is
``(1 - target) ** (i / steps)``), re-scoring and fine-tuning (``nncompress.train.fit``)
between steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import torch
from torch import nn
from torch.utils.data import Dataset

from nncompress.errors import ConfigError
from nncompress.prune.structured.blocks import (
    block_damage,
    check_fit,
    least_damaging_blocks,
    remove_blocks,
)
from nncompress.prune.structured.cost import layer_costs
from nncompress.prune.structured.fading import ChannelFade, fade_steps_for
from nncompress.prune.structured.groups import build_graph, groups_from_graph
from nncompress.prune.structured.latency import measure_latency
from nncompress.prune.structured.removal import remove_channels
from nncompress.prune.structured.result import StructuredResult, summary
from nncompress.prune.structured.scoring import ScoreData, as_score_data, get_criterion, score
from nncompress.prune.structured.selection import (
    budget_for,
    check_kind,
    check_ratio,
    select_global,
    select_per_layer,
    uniform_ratio_for,
)
from nncompress.train import TrainConfig, fit

log = logging.getLogger(__name__)
MODES = ("global", "layer")


def _remove_blocks(model: nn.Module, blocks: int | Sequence[str], data: ScoreData | None,
                   fit: str) -> dict[str, float | None]:
    """Depth pruning before the channel steps: ``blocks`` residual blocks of least damage on
    the held-out sample (else the scoring sample), or exactly the named ones."""
    if isinstance(blocks, str):  # one name
        blocks = [blocks]
    if isinstance(blocks, bool) or not isinstance(blocks, (int, list, tuple)):
        raise ConfigError(f"blocks={blocks!r} not allowed; use a count >= 0 or a list of block names")
    if not blocks:  # 0 or no names
        return {}
    if data is None:
        raise ConfigError(f"blocks={blocks!r} needs data: each removed branch's replacement is fitted on it")
    if isinstance(blocks, int):
        if blocks < 0:
            raise ConfigError(f"blocks={blocks} out of range; allowed: >= 0 (a count) or a list of block names")
        x, y = (data.held_out_x, data.held_out_y) if data.held_out_x is not None else (data.x, data.y)
        if y is None:
            raise ConfigError("choosing blocks by damage needs labels in data")
        damage = block_damage(model, x, y, fit=fit)
        chosen: dict[str, float | None] = {n: damage[n] for n in least_damaging_blocks(damage, blocks)}
    else:
        chosen = dict.fromkeys(blocks)
    remove_blocks(model, list(chosen), data.x, fit=fit)
    return chosen


def _groups(model: nn.Module, dg, skip: Sequence[str], keep_coupled: bool) -> list:
    groups = groups_from_graph(model, dg, skip)
    return [g for g in groups if not g.coupled] if keep_coupled else groups


def _example(data: ScoreData | None, example_inputs: torch.Tensor | None) -> torch.Tensor:
    if example_inputs is not None:
        return example_inputs[:1]
    if data is not None:
        return data.x[:1]
    raise ConfigError("give example_inputs (or data) so the model can be traced")


def structured_prune(
    model: nn.Module,
    criterion: str,
    target: float,
    target_kind: str = "macs",
    data: ScoreData | None = None,
    *,
    example_inputs: torch.Tensor | None = None,
    mode: str = "global",
    ratios: Mapping[str, float] | None = None,
    min_channels: int = 1,
    max_ratio: float = 0.9,
    round_to: int | str = 1,
    latency_batch: int = 64,
    skip: Sequence[str] = (),
    steps: int = 1,
    finetune: TrainConfig | None = None,
    train_data: Dataset | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn=None,
    on_removed: Callable[[int, nn.Module], None] | None = None,
    fade_epochs: float = 0.0,
    blocks: int | Sequence[str] = 0,
    keep_coupled: bool = False,
    block_fit: str = "affine",
) -> StructuredResult:
    """Prune ``model`` in place until ``target`` of ``target_kind`` is removed.

    ``criterion``: a name of ``CRITERIA`` or ``"energy-aware"`` (S5, see ``energy_aware``).
    ``data``: a ``ScoreData``, an ``(x, y)`` pair or a ``TensorDataset`` (first 512 samples).
    ``mode="global"`` ranks all channels together (per-layer normalised scores);
    ``mode="layer"`` removes the same share of every group (the uniform ratio that meets
    the target), or exactly ``ratios`` (group name -> fraction) when given. ``skip``: glob
    patterns of modules whose groups stay whole. ``round_to``: keep a multiple of that many
    channels in every pruned group (faster dense kernels; see ``selection``), or
    ``"latency"``: keep only counts where the group's layers, timed on this machine at batch
    ``latency_batch`` and torch's thread count, get faster (see ``latency``).
    ``target_kind="latency"``: the target is a share of the layers' measured time
    (``latency.LatencyModel``), e.g. ``0.5`` for a predicted 2x faster model. ``finetune`` + ``train_data``: train after
    each step (with ``loss_fn(logits, y, x)`` when given, e.g. a distillation loss). The
    criterion's ``data`` is re-used at every step. ``on_removed(step, model)`` is called after
    each step's removal, before its fine-tuning (e.g. to record the accuracy before FT).
    ``fade_epochs > 0`` (needs ``finetune``): each step's fine-tuning runs *before* the
    removal, on the unpruned model, while the selected channels fade linearly to zero over
    its first ``fade_epochs`` epochs (``fading.ChannelFade``); the removal afterwards is exact,
    and ``on_removed`` then sees the fine-tuned model.
    ``blocks`` (depth pruning, ``blocks.remove_blocks``): first replace that many residual
    blocks by their shortcut, those whose removal raises the loss on the data's held-out
    sample least (``block_damage``), or exactly the named block(s); the target still counts
    against the model as given, so the channel selection removes only the rest.
    ``block_fit``: how a removed block's shortcut affine is fitted, ``"affine"`` (least-squares
    scale and shift, the default) or ``"mean"`` (shift = mean branch output); see ``remove_blocks``.
    ``keep_coupled``: leave whole every group written by several layers (residual adds).

    Example:
        >>> res = structured_prune(model, "l1", 0.5, "macs", example_inputs=x[:1])  # doctest: +SKIP
        >>> res.mac_reduction >= 2.0  # doctest: +SKIP
        True
    """
    data = as_score_data(data)
    if criterion == "energy-aware" and (blocks or keep_coupled):
        raise ConfigError("criterion 'energy-aware' has its own layer order; blocks and keep_coupled are not "
                          "supported with it")
    if criterion == "energy-aware":  # S5 has its own ordering and refit
        from nncompress.prune.structured.energy_aware import energy_aware_prune

        if data is None:
            raise ConfigError("criterion 'energy-aware' needs data (a labelled sample)")
        return energy_aware_prune(model, target, data, example_inputs=example_inputs,
                                  target_kind=target_kind, min_channels=min_channels,
                                  max_ratio=max_ratio, finetune=finetune, train_data=train_data)
    get_criterion(criterion)
    check_kind(target_kind)
    target = check_ratio(target, "target")
    if mode not in MODES:
        raise ConfigError(f"mode {mode!r} not allowed; use one of {MODES}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if finetune is not None and train_data is None:
        raise ConfigError("finetune was given without train_data")
    by_latency = round_to == "latency"
    if isinstance(round_to, str) and not by_latency:
        raise ConfigError(f"round_to must be an integer >= 1 or 'latency', got {round_to!r}")
    rt = 1 if by_latency else round_to
    if blocks and (by_latency or target_kind == "latency"):
        raise ConfigError("blocks (depth pruning) works with MAC, parameter and channel targets, "
                          "not with latency targets or round_to='latency'")
    check_fit(block_fit, "block_fit")
    if blocks and optimizer is not None:
        raise ConfigError("blocks (depth pruning) replaces modules, which an existing optimizer cannot follow; "
                          "make the optimizer after structured_prune, or prune the blocks first")
    if fade_epochs:
        if finetune is None:
            raise ConfigError(f"fade_epochs={fade_epochs} needs finetune (and train_data): the fading happens "
                              "during the fine-tuning")
        if not 0 < fade_epochs <= finetune.epochs:
            raise ConfigError(f"fade_epochs must be in (0, {finetune.epochs}] (the fine-tuning epochs), "
                              f"got {fade_epochs}")
    example = _example(data, example_inputs)
    dense = summary(model, example)
    dg = build_graph(model, example)
    groups = _groups(model, dg, skip, keep_coupled)
    timed = by_latency or target_kind == "latency"
    lat = measure_latency(model, groups, example, latency_batch) if timed else None
    dense_total, _ = budget_for(layer_costs(model, example), groups, 0.0, target_kind, lat)
    result = StructuredResult(model, criterion, target, target_kind, dense, dense)
    result.blocks = _remove_blocks(model, blocks, data, block_fit)
    if result.blocks:
        groups = _groups(model, build_graph(model, example), skip, keep_coupled)
    for step in range(1, steps + 1):
        if step > 1:
            groups = _groups(model, build_graph(model, example), skip, keep_coupled)
            lat = measure_latency(model, groups, example, latency_batch) if timed else None
        costs = layer_costs(model, example)
        kept = lat.steps if lat is not None and by_latency else None
        budget = dense_total * (1.0 - target) ** (step / steps)
        if ratios is not None:
            step_ratios: float | Mapping[str, float] = {
                k: 1 - (1 - check_ratio(v, f"ratio of {k!r}")) ** (1 / steps) for k, v in ratios.items()
            }
        elif mode == "layer":
            step_ratios = uniform_ratio_for(groups, costs, budget, target_kind, min_channels, rt, kept, lat)
        step_data = data
        if data is not None and criterion == "random":  # S6 draws its masks at the step's ratio
            probe = step_ratios if (ratios is not None or mode == "layer") else \
                uniform_ratio_for(groups, costs, budget, target_kind, min_channels, rt, kept, lat)
            step_data = replace(data, ratio=probe)
        scores = score(model, groups, criterion, step_data)
        if ratios is not None or mode == "layer":
            plan = select_per_layer(scores, groups, step_ratios, min_channels, rt, kept)
        else:
            plan = select_global(scores, groups, costs, budget, target_kind, min_channels, max_ratio,
                                 rt, kept, lat)
        module_plan = {g: idx for g, idx in plan.items()}  # root names are module names
        hist = None
        if fade_epochs:  # fine-tune while the selected channels fade out, then remove them
            fade = ChannelFade(model, groups, plan, fade_steps_for(fade_epochs, finetune, len(train_data)))
            hist = fit(model, train_data, finetune, optimizer=optimizer, loss_fn=loss_fn, callbacks=[fade])
        remove_channels(model, module_plan, example, optimizer=optimizer)
        if on_removed is not None:
            on_removed(step, model)
        info = {"step": step, **summary(model, example),
                "removed": {g: len(v) for g, v in plan.items()}}
        if finetune is not None and not fade_epochs:
            hist = fit(model, train_data, finetune, optimizer=optimizer, loss_fn=loss_fn)
        if hist is not None and hist.epochs:
            info["train_accuracy"] = hist.epochs[-1]["train_accuracy"]
        result.steps.append(info)
        log.info("step %d: %s", step, info)
    result.pruned = summary(model, example)
    return result
