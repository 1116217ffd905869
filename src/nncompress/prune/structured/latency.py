"""Measured latency staircases: the kept channel counts that make a group's layers faster
on *this* machine.

Dense CPU kernels do not get faster channel by channel. oneDNN (PyTorch's CPU convolution)
stores activations in blocks of 16 channels on AVX-512 machines (8 on AVX2), so a 3x3 conv
with 18 to 32 output channels costs the same as one with 32; MACs fall with every removed
channel, time falls in steps. Pruning a group from 64 to 45 channels therefore removes 50%
of its MACs and almost none of its time. (Measured here: a 7x7 conv at batch 64 costs
0.63 of its 64-channel time at 48 channels, 0.66 at 45, 0.31 at 32.)

This module measures, for each channel group, the summed latency of the Conv/Linear
layers that produce or consume it as a function of the kept count (the other dimensions
left whole), and keeps the counts where latency steps down: the *staircase*. Selection
then removes channels only in the chunks between consecutive steps
(``select_global(..., kept_counts=measure_latency(...).steps)``), so the MAC target is met with channel counts
the kernels turn into time. This is the per-layer latency lookup table of latency-aware
structured pruning (HALP, Shen et al. 2022), reduced to one curve per group.

The curves depend on the machine, the thread count and the batch size: measure them where
the model will run (``structured_prune(..., round_to="latency")`` does, at ``torch``'s
current thread count).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nncompress.analysis.capture import capture_io
from nncompress.errors import ConfigError
from nncompress.prune.structured.groups import ChannelGroup, is_depthwise

log = logging.getLogger(__name__)

TIMED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _resized(mod: nn.Module, out_removed: int, in_removed: int) -> nn.Module:
    """A fresh module like ``mod`` with fewer output / input features (random weights)."""
    if isinstance(mod, nn.Linear):
        return nn.Linear(mod.in_features - in_removed, mod.out_features - out_removed, mod.bias is not None)
    depthwise = is_depthwise(mod)
    cin, cout = mod.in_channels - in_removed, mod.out_channels - out_removed
    if depthwise:
        cin = cout = mod.in_channels - max(in_removed, out_removed)
    groups = cin if depthwise else mod.groups
    if cin % groups or cout % groups:
        raise ConfigError(f"cannot time {type(mod).__name__} with {cin} -> {cout} channels in {groups} groups")
    return type(mod)(cin, cout, mod.kernel_size, mod.stride, mod.padding, mod.dilation, groups,
                     mod.bias is not None, mod.padding_mode)


def input_shapes(model: nn.Module, example_input: torch.Tensor, batch: int) -> dict[str, tuple[int, ...]]:
    """Input shape of every Conv/Linear module of ``model`` at batch size ``batch``."""
    names = [n for n, m in model.named_modules() if isinstance(m, TIMED)]
    return {n: (batch, *x.shape[1:]) for n, (x, _) in capture_io(model, names, example_input[:1]).items()}


def _clock():
    """``time.thread_time`` with one torch thread (the CPU time of the only compute thread:
    time slices lost to other processes do not count), else wall time."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


@torch.inference_mode()
def group_layer_curves(
    model: nn.Module,
    group: ChannelGroup,
    shapes: dict[str, tuple[int, ...]],
    kept: Iterable[int] | None = None,
    repeats: int = 5,
) -> dict[str, dict[int, float]]:
    """Seconds per forward of each Conv/Linear layer of ``group`` with ``k`` channels kept:
    ``{layer: {k: seconds}}``.

    Each layer is rebuilt with the group's channels cut to ``k`` (as a producer: fewer
    outputs; as a consumer: fewer inputs; a depthwise conv both) and timed on a random input
    of its shape from ``shapes`` (see :func:`input_shapes`); the value is the median over
    ``repeats`` rounds (all counts timed once per round, after an untimed first round that
    builds the kernels). With one torch thread the clock is the thread's CPU time, robust
    to other processes on the machine; with more, wall time (measure on a quiet machine).
    """
    mods = dict(model.named_modules())
    counts = sorted(set(kept) if kept is not None else range(1, group.channels + 1), reverse=True)
    if not counts or counts[-1] < 1 or counts[0] > group.channels:
        raise ConfigError(f"kept counts for {group.name!r} must lie in 1..{group.channels}, got {counts}")
    layers = [n for n in dict.fromkeys([*group.producers, *group.consumers])
              if isinstance(mods.get(n), TIMED) and n in shapes]
    if not layers:
        raise ConfigError(f"group {group.name!r} has no Conv/Linear layer that ran on the example input")
    built: dict[int, list[tuple[str, nn.Module, tuple[int, ...]]]] = {}
    for k in counts:
        removed = group.channels - k
        row = []
        for n in layers:
            per_channel = len(group.consumers[n][0]) if n in group.consumers else 0
            out_removed = removed if n in group.producers else 0
            new = _resized(mods[n], out_removed, removed * per_channel).eval()
            shape = list(shapes[n])
            if isinstance(new, nn.Linear):
                shape[-1] = new.in_features
            else:
                shape[1] = new.in_channels
            row.append((n, new, tuple(shape)))
        built[k] = row
    clock = _clock()
    times: dict[str, dict[int, list[float]]] = {n: {k: [] for k in counts} for n in layers}
    for rnd in range(repeats + 1):
        for k in counts:
            for n, mod, shape in built[k]:
                x = torch.randn(shape)
                t0 = clock()
                mod(x)
                if rnd:
                    times[n][k].append(clock() - t0)
    return {n: {k: statistics.median(v) for k, v in per_k.items()} for n, per_k in times.items()}


def summed(curves: dict[str, dict[int, float]]) -> dict[int, float]:
    """A group's time per kept count: its layers' curves (:func:`group_layer_curves`) added.

    Example:
        >>> summed({"a": {2: 1.0, 1: 0.5}, "b": {2: 2.0, 1: 1.0}})
        {2: 3.0, 1: 1.5}
    """
    counts = next(iter(curves.values()))
    return {k: sum(c[k] for c in curves.values()) for k in counts}


def median3(curve: dict[int, float]) -> dict[int, float]:
    """Each value replaced by the median of itself and its neighbours (by count): a single
    noisy reading cannot make a step, a real step (several counts at the new level) stays.

    Example:
        >>> median3({1: 1.0, 2: 5.0, 3: 1.0, 4: 1.0})
        {1: 3.0, 2: 1.0, 3: 1.0, 4: 1.0}
    """
    ks = sorted(curve)
    return {k: statistics.median(curve[j] for j in ks[max(0, i - 1):i + 2]) for i, k in enumerate(ks)}


def staircase(curve: dict[int, float], tol: float = 0.1) -> list[int]:
    """The kept counts where latency steps down, descending, from a curve ``{kept: seconds}``.

    Scanning from the largest count down, a count is a step when its time is at least
    ``tol`` below the last step's (so noise smaller than ``tol`` adds no step, and a count
    that costs as much as a larger one is never kept).

    Example:
        >>> staircase({64: 1.0, 56: 1.1, 48: 0.63, 45: 0.66, 32: 0.31, 16: 0.3})
        [64, 48, 32]
    """
    if not 0.0 <= tol < 1.0:
        raise ConfigError(f"tol must be in [0, 1), got {tol}")
    counts = sorted(curve, reverse=True)
    steps = [counts[0]]
    for k in counts[1:]:
        if curve[k] <= (1.0 - tol) * curve[steps[-1]]:
            steps.append(k)
    return steps


@dataclass
class LatencyModel:
    """Measured latency of a model's Conv/Linear layers as channel groups shrink.

    ``full[layer]``: seconds of the whole layer; ``curves[group][layer][k]``: seconds of
    ``layer`` with ``k`` of the group's channels kept (the other dimensions whole);
    ``steps[group]``: the group's staircase. :meth:`predict` assumes a layer's time factors
    into its groups' effects (``full * prod_g t_g(k_g) / t_g(C_g)``), the separable form of
    a per-layer (input, output) lookup table.
    """

    full: dict[str, float]
    curves: dict[str, dict[str, dict[int, float]]]
    steps: dict[str, list[int]]

    def predict(self, groups: Sequence[ChannelGroup], removed: Mapping[str, int]) -> float:
        """Predicted seconds of all timed layers with ``removed[g]`` channels gone per group."""
        factor = dict.fromkeys(self.full, 1.0)
        for g in groups:
            n = removed.get(g.name, 0)
            if not n:
                continue
            kept = g.channels - n
            for layer, curve in self.curves[g.name].items():
                # between measured counts: the next larger one (a step's top)
                k = kept if kept in curve else min((c for c in curve if c >= kept), default=g.channels)
                factor[layer] *= curve[k] / curve[g.channels]
        return sum(self.full[name] * factor[name] for name in self.full)


def measure_latency(
    model: nn.Module,
    groups: Sequence[ChannelGroup],
    example_input: torch.Tensor,
    batch: int = 64,
    repeats: int = 5,
    tol: float = 0.1,
) -> LatencyModel:
    """Time every group's layers at every kept count (at ``batch`` and torch's current
    thread count) and extract the staircases (see :func:`staircase`).

    Example:
        >>> lat = measure_latency(model, groups, x[:1])  # doctest: +SKIP
        >>> lat.steps["layers.6.conv1"]  # doctest: +SKIP
        [64, 48, 32, 16, 14, 12, ...]
    """
    if batch < 1:
        raise ConfigError(f"latency batch must be >= 1, got {batch}")
    shapes = input_shapes(model, example_input, batch)
    t0 = time.perf_counter()
    curves = {g.name: group_layer_curves(model, g, shapes, repeats=repeats) for g in groups}
    whole: dict[str, list[float]] = {}  # a layer is timed whole once per group it belongs to
    for g in groups:
        for layer, curve in curves[g.name].items():
            whole.setdefault(layer, []).append(curve[g.channels])
    full = {layer: statistics.median(v) for layer, v in whole.items()}
    steps = {g.name: staircase(median3(summed(curves[g.name])), tol) for g in groups}
    log.info("latency of %d groups measured in %.1fs (batch %d, %d threads); staircases: %s",
             len(groups), time.perf_counter() - t0, batch, torch.get_num_threads(), steps)
    return LatencyModel(full, curves, steps)
