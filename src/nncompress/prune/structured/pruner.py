"""One entry point for structured pruning: score, select, remove, fine-tune, repeat.

``structured_prune(model, config, data)`` works with any criterion of ``CRITERIA``
(scoring), either per-layer ratios or a global ranking (selection) and
``remove_channels`` (surgery); ``StructuredPruneConfig`` holds every option. With
``steps > 1`` the target is reached on a geometric schedule (the kept share after step i
is ``(1 - target) ** (i / steps)``), re-scoring and fine-tuning (``nncompress.train.fit``)
between steps.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from nncompress.errors import ConfigError
from nncompress.prune.structured.blocks import (
    block_damage,
    least_damaging_blocks,
    remove_blocks,
)
from nncompress.prune.structured.config import ENERGY_AWARE, StructuredPruneConfig
from nncompress.prune.structured.cost import layer_costs
from nncompress.prune.structured.fading import ChannelFade, fade_steps_for
from nncompress.prune.structured.groups import build_graph, groups_from_graph
from nncompress.prune.structured.latency import measure_latency
from nncompress.prune.structured.removal import remove_channels
from nncompress.prune.structured.result import StructuredResult, summary
from nncompress.prune.structured.scoring import ScoreData, as_score_data, score
from nncompress.prune.structured.selection import (
    budget_for,
    select_global,
    select_per_layer,
    uniform_ratio_for,
)
from nncompress.train import fit

log = logging.getLogger(__name__)


def _remove_blocks(model: nn.Module, blocks: int | Sequence[str], data: ScoreData | None,
                   fit: str) -> dict[str, float | None]:
    """Depth pruning before the channel steps: ``blocks`` residual blocks of least damage on
    the held-out sample (else the scoring sample), or exactly the named ones."""
    if not blocks:  # 0 or no names
        return {}
    if data is None:
        raise ConfigError(f"blocks={blocks!r} needs data: each removed branch's replacement is fitted on it")
    if isinstance(blocks, int):
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


_POSITIONAL = ("target", "target_kind", "data")  # after the criterion, in the keyword style


def _config_from_arguments(criterion: str | None, args: tuple, data: Any,
                           options: dict[str, Any]) -> tuple[StructuredPruneConfig, Any]:
    """The keyword style ``structured_prune(model, criterion, target, target_kind, data,
    **config fields)`` -> ``(StructuredPruneConfig, data)``."""
    if len(args) > len(_POSITIONAL):
        raise TypeError(f"structured_prune takes at most {2 + len(_POSITIONAL)} positional arguments "
                        f"(model, criterion, {', '.join(_POSITIONAL)})")
    given = dict(zip(_POSITIONAL, args))
    if "data" in given:
        if data is not None:
            raise TypeError("structured_prune got data twice (positional and keyword)")
        data = given.pop("data")
    twice = sorted(set(given) & set(options))
    if twice:
        raise TypeError(f"structured_prune got {twice} twice (positional and keyword)")
    if criterion is not None:
        options["criterion"] = criterion
    return StructuredPruneConfig(**given, **options), data


def structured_prune(
    model: nn.Module,
    config: StructuredPruneConfig | str | None = None,
    *args: Any,
    data: ScoreData | Any = None,
    example_inputs: torch.Tensor | None = None,
    train_data: Dataset | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    loss_fn=None,
    on_removed: Callable[[int, nn.Module], None] | None = None,
    progress: Any = None,
    **options: Any,
) -> StructuredResult:
    """Prune ``model`` in place as ``config`` (a ``StructuredPruneConfig``) says: remove its
    ``target`` of ``target_kind``. Called as ``structured_prune(model, config, data)``.

    ``data``: the scoring sample of data-driven criteria and of block removal, a
    ``ScoreData``, an ``(x, y)`` pair or a ``TensorDataset`` (first 512 samples), re-used at
    every step; ``example_inputs`` (else ``data``'s first sample) traces the model.
    ``train_data``: what ``config.finetune`` trains on (with ``loss_fn(logits, y, x)`` when
    given, e.g. a distillation loss; ``optimizer`` to continue an existing one).
    ``on_removed(step, model)`` is called after each step's removal, before its fine-tuning
    (with ``fade_epochs``, after it: the fading runs before the removal). ``progress``: a
    reporter for the fine-tuning fits (``fit(..., progress=...)``, e.g. ``RunProgress.fits``).

    The keyword style ``structured_prune(model, criterion, target, target_kind="macs",
    data=None, **fields)`` builds the config from the arguments.

    Example:
        >>> cfg = StructuredPruneConfig("l1", target=0.5, target_kind="macs")
        >>> from nncompress.models import build_model
        >>> res = structured_prune(build_model("lenet5"), cfg, example_inputs=torch.randn(1, 1, 28, 28))
        >>> res.mac_reduction >= 2.0
        True
    """
    if isinstance(config, StructuredPruneConfig):
        if len(args) > 1 or options:
            raise TypeError("structured_prune(model, config, data): the options belong in the config, got "
                            f"{sorted(options) or args[1:]}")
        if args:
            if data is not None:
                raise TypeError("structured_prune got data twice (positional and keyword)")
            data = args[0]
    else:
        config, data = _config_from_arguments(config, args, data, options)
    cfg = config
    data = as_score_data(data)
    if cfg.criterion == ENERGY_AWARE:  # S5 has its own ordering and refit
        from nncompress.prune.structured.energy_aware import energy_aware_prune

        if data is None:
            raise ConfigError("criterion 'energy-aware' needs data (a labelled sample)")
        return energy_aware_prune(model, cfg.target, data, example_inputs=example_inputs,
                                  target_kind=cfg.target_kind, min_channels=cfg.min_channels,
                                  max_ratio=cfg.max_ratio, finetune=cfg.finetune, train_data=train_data)
    if cfg.finetune is not None and train_data is None:
        raise ConfigError("finetune was given without train_data")
    if cfg.blocks and optimizer is not None:
        raise ConfigError("blocks (depth pruning) replaces modules, which an existing optimizer cannot follow; "
                          "make the optimizer after structured_prune, or prune the blocks first")
    by_latency = cfg.round_to == "latency"
    rt = 1 if by_latency else cfg.round_to
    target, target_kind, steps, skip = cfg.target, cfg.target_kind, cfg.steps, cfg.skip
    example = _example(data, example_inputs)
    dense = summary(model, example)
    dg = build_graph(model, example)
    groups = _groups(model, dg, skip, cfg.keep_coupled)
    timed = by_latency or target_kind == "latency"
    lat = measure_latency(model, groups, example, cfg.latency_batch) if timed else None
    dense_total, _ = budget_for(layer_costs(model, example), groups, 0.0, target_kind, lat)
    result = StructuredResult(model, cfg.criterion, target, target_kind, dense, dense)
    result.blocks = _remove_blocks(model, cfg.blocks, data, cfg.block_fit)
    if result.blocks:
        groups = _groups(model, build_graph(model, example), skip, cfg.keep_coupled)
    per_layer = cfg.ratios is not None or cfg.mode == "layer"
    for step in range(1, steps + 1):
        if step > 1:
            groups = _groups(model, build_graph(model, example), skip, cfg.keep_coupled)
            lat = measure_latency(model, groups, example, cfg.latency_batch) if timed else None
        costs = layer_costs(model, example)
        kept = lat.steps if lat is not None and by_latency else None
        budget = dense_total * (1.0 - target) ** (step / steps)
        if cfg.ratios is not None:
            step_ratios: float | Mapping[str, float] = {k: 1 - (1 - v) ** (1 / steps) for k, v in cfg.ratios.items()}
        elif cfg.mode == "layer":
            step_ratios = uniform_ratio_for(groups, costs, budget, target_kind, cfg.min_channels, rt, kept, lat)
        step_data = data
        if data is not None and cfg.criterion == "random":  # S6 draws its masks at the step's ratio
            probe = step_ratios if per_layer else \
                uniform_ratio_for(groups, costs, budget, target_kind, cfg.min_channels, rt, kept, lat)
            step_data = replace(data, ratio=probe)
        scores = score(model, groups, cfg.criterion, step_data)
        if per_layer:
            plan = select_per_layer(scores, groups, step_ratios, cfg.min_channels, rt, kept)
        else:
            plan = select_global(scores, groups, costs, budget, target_kind, cfg.min_channels, cfg.max_ratio,
                                 rt, kept, lat)
        module_plan = {g: idx for g, idx in plan.items()}  # root names are module names
        hist = None
        if cfg.fade_epochs:  # fine-tune while the selected channels fade out, then remove them
            fade = ChannelFade(model, groups, plan, fade_steps_for(cfg.fade_epochs, cfg.finetune, len(train_data)))
            hist = fit(model, train_data, cfg.finetune, optimizer=optimizer, loss_fn=loss_fn, callbacks=[fade],
                       progress=progress)
        remove_channels(model, module_plan, example, optimizer=optimizer)
        if on_removed is not None:
            on_removed(step, model)
        info = {"step": step, **summary(model, example),
                "removed": {g: len(v) for g, v in plan.items()}}
        if cfg.finetune is not None and not cfg.fade_epochs:
            hist = fit(model, train_data, cfg.finetune, optimizer=optimizer, loss_fn=loss_fn, progress=progress)
        if hist is not None and hist.epochs:
            info["train_accuracy"] = hist.epochs[-1]["train_accuracy"]
        result.steps.append(info)
        log.info("step %d: %s", step, info)
    result.pruned = summary(model, example)
    return result
