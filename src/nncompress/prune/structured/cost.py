"""What a channel removal saves: per-layer MACs and parameters, before and after.

``layer_costs`` counts, with forward hooks, the MACs, weights and activations of every
Conv/Linear/Norm module for one example input (Conv/Linear MACs by the H1 rule of
``analysis.accounting.layer_macs``; norms one multiply-add per element, which the H1 table
leaves out). ``plan_cost`` predicts the totals after
removing channels without touching the model: a layer's MACs and weights scale with the
fraction of its output channels kept times the fraction of its input channels kept (once,
for depthwise convs whose input and output channels are the same). Selection uses it to hit
a MAC or parameter target before any surgery.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nncompress.analysis.accounting import layer_macs
from nncompress.prune.structured.groups import NORM_TYPES, ChannelGroup, is_depthwise

COUNTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, *NORM_TYPES)


@dataclass(frozen=True)
class LayerCost:
    """MACs, weights (all parameters) and activations (inputs + outputs) of one module."""

    name: str
    kind: str
    macs: int
    params: int
    activations: int
    depthwise: bool = False


def _macs(mod: nn.Module, out: torch.Tensor) -> int:
    if isinstance(mod, NORM_TYPES):
        return out[0].numel()  # norms: one multiply-add per element
    return layer_macs(mod, out)  # the one Conv/Linear MAC rule (H1 accounting)


@torch.no_grad()
def layer_costs(model: nn.Module, example_input: torch.Tensor) -> list[LayerCost]:
    """Per-module cost for ONE sample (the batch dimension of ``example_input`` is dropped).

    Example:
        >>> from nncompress.models import build_model
        >>> [c.macs for c in layer_costs(build_model("lenet300"), torch.randn(1, 784))]
        [235200, 30000, 1000]
    """
    rows: list[LayerCost] = []
    hooks = []
    for name, mod in model.named_modules():
        if not isinstance(mod, COUNTED):
            continue

        def hook(m, inputs, out, name=name):
            params = sum(p.numel() for p in m.parameters(recurse=False))
            acts = inputs[0][0].numel() + out[0].numel()
            rows.append(LayerCost(name, type(m).__name__, _macs(m, out), params, acts, is_depthwise(m)))

        hooks.append(mod.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        model(example_input[:1])
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return rows


def total(costs: Sequence[LayerCost], kind: str) -> int:
    """Sum of ``macs`` or ``params`` over the rows."""
    return sum(getattr(c, kind) for c in costs)


def kept_fractions(
    groups: Sequence[ChannelGroup], removed: Mapping[str, int]
) -> tuple[dict[str, float], dict[str, float]]:
    """Per module: fraction of output channels kept, fraction of input channels kept.

    ``removed`` maps a group name to the number of its channels removed.
    """
    out_frac: dict[str, float] = {}
    in_frac: dict[str, float] = {}
    for g in groups:
        f = 1.0 - removed.get(g.name, 0) / g.channels
        for m in g.producers:
            out_frac[m] = out_frac.get(m, 1.0) * f
        for m in g.consumers:
            in_frac[m] = in_frac.get(m, 1.0) * f
    return out_frac, in_frac


def plan_cost(
    costs: Sequence[LayerCost],
    groups: Sequence[ChannelGroup],
    removed: Mapping[str, int],
    kind: str = "macs",
) -> float:
    """Predicted total ``macs`` or ``params`` after removing ``removed[g]`` channels per group.

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.prune.structured.groups import find_groups
        >>> model, x = build_model("lenet5"), torch.randn(1, 1, 28, 28)
        >>> costs, groups = layer_costs(model, x), find_groups(model, x)
        >>> plan_cost(costs, groups, {}), plan_cost(costs, groups, {"conv1": 10})  # half of conv1's 20
        (2293000.0, 1349000.0)
    """
    out_frac, in_frac = kept_fractions(groups, removed)
    s = 0.0
    for c in costs:
        fo, fi = out_frac.get(c.name, 1.0), in_frac.get(c.name, 1.0)
        value = getattr(c, kind)
        if c.depthwise or c.kind in {t.__name__ for t in NORM_TYPES}:
            s += value * min(fo, fi)
        else:
            s += value * fo * fi
    return s
