"""S5 energy-aware pruning (Yang et al. 2017): the most energy-hungry layers first, each
followed by a local least-squares refit of the next layer, then global fine-tuning.

1. Estimate each channel group's energy with the H2 model (``nncompress.analysis.energy``)
   over the layers that write or read its channels.
2. Allocate removal ratios proportional to energy: ``r_g = min(max_ratio, a * E_g / max E)``,
   with ``a`` bisected so the MAC (or parameter) target is met.
3. In order of decreasing energy: remove group g's lowest-scored channels, then refit the
   weights of each consumer (Conv2d with groups=1 or Linear) by ridge least squares so its
   output on the data sample matches its output before the removal:
   ``W' = argmin ||X' W'^T - Y||^2 + ridge ||W'||^2`` with ``X'`` the consumer's unfolded
   inputs after removal and ``Y`` its outputs (without bias) before.
4. Optional global fine-tuning with ``nncompress.train.fit``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from nncompress.analysis.capture import capture_io
from nncompress.analysis.energy import layer_energy
from nncompress.errors import ConfigError
from nncompress.prune.structured.cost import layer_costs, plan_cost
from nncompress.prune.structured.groups import ChannelGroup, build_graph, groups_from_graph
from nncompress.prune.structured.removal import remove_channels
from nncompress.prune.structured.result import StructuredResult, summary
from nncompress.prune.structured.scoring import ScoreData, score
from nncompress.prune.structured.selection import _lowest, budget_for, check_kind, check_ratio
from nncompress.train import TrainConfig, fit

log = logging.getLogger(__name__)


def group_energy(groups: Sequence[ChannelGroup], costs) -> dict[str, float]:
    """Energy (pJ, one inference) of the layers that write or read each group's channels."""
    e = {c.name: layer_energy(c.macs, c.params, c.activations).total_pj for c in costs}
    return {g.name: sum(e.get(m, 0.0) for m in {*g.producers, *g.consumers}) for g in groups}


def energy_ratios(groups, costs, budget: float, kind: str = "macs", min_channels: int = 1,
                  max_ratio: float = 0.9) -> dict[str, float]:
    """Ratios proportional to group energy, scaled (bisection) to meet ``budget``."""
    energy = group_energy(groups, costs)
    emax = max(energy.values())

    def ratios(a: float) -> dict[str, float]:
        return {g.name: min(max_ratio, a * energy[g.name] / emax) for g in groups}

    def counts(a: float) -> dict[str, int]:
        return {g.name: min(int(math.floor(r * g.channels)), g.channels - min_channels)
                for g, r in zip(groups, ratios(a).values())}

    if plan_cost(costs, groups, counts(1e6), kind) > budget:
        raise ConfigError(f"{kind} budget {budget:.4g} out of reach with max_ratio={max_ratio}")
    lo, hi = 0.0, 1e6
    for _ in range(60):
        mid = (lo + hi) / 2
        if plan_cost(costs, groups, counts(mid), kind) <= budget:
            hi = mid
        else:
            lo = mid
    return ratios(hi)


def _design(mod: nn.Module, inp: torch.Tensor) -> torch.Tensor:
    """Rows of inputs each output element sees: (N*L, C_in*k*k) for conv, (N, in) for Linear."""
    if isinstance(mod, nn.Linear):
        return inp.reshape(-1, mod.in_features)
    cols = nn.functional.unfold(inp, mod.kernel_size, mod.dilation, mod.padding, mod.stride)  # (N, Ck, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def _targets(mod: nn.Module, out: torch.Tensor) -> torch.Tensor:
    if mod.bias is not None:
        shape = [1, -1] + [1] * (out.dim() - 2)
        out = out - mod.bias.detach().view(shape)
    if isinstance(mod, nn.Linear):
        return out.reshape(-1, mod.out_features)
    return out.flatten(2).transpose(1, 2).reshape(-1, out.shape[1])  # (N*L, C_out)


@torch.no_grad()
def least_squares_refit(mod: nn.Module, inp: torch.Tensor, target_out: torch.Tensor, ridge: float = 1e-3,
                        max_rows: int = 40000) -> float:
    """Refit ``mod.weight`` so ``mod(inp)`` matches ``target_out`` (bias kept); returns the
    relative residual ``||XW^T - Y|| / ||Y||``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x, w = torch.randn(64, 3, generator=g), torch.tensor([[1., 2., 3.], [0., -1., 0.5]])
        >>> lin = nn.Linear(3, 2, bias=False)
        >>> round(least_squares_refit(lin, x, x @ w.T), 2), bool((lin.weight - w).abs().max() < 1e-2)
        (0.0, True)
    """
    if isinstance(mod, nn.Conv2d) and (mod.groups != 1 or mod.padding_mode != "zeros"):
        raise ConfigError(f"least-squares refit supports Conv2d with groups=1 and zero padding, got {mod}")
    X = _design(mod, inp)  # (R, K)
    Y = _targets(mod, target_out)  # (R, C_out)
    if X.shape[0] > max_rows:  # a fixed strided subset keeps the normal equations cheap
        keep = torch.linspace(0, X.shape[0] - 1, max_rows).long()
        X, Y = X[keep], Y[keep]
    X, Y = X.double(), Y.double()
    gram = X.T @ X
    lam = ridge * gram.diagonal().mean().clamp_min(1e-12)
    W = torch.linalg.solve(gram + lam * torch.eye(gram.shape[0], dtype=gram.dtype), X.T @ Y)  # (K, C_out)
    mod.weight.copy_(W.T.reshape(mod.weight.shape).to(mod.weight.dtype))
    return float((X @ W - Y).norm() / Y.norm().clamp_min(1e-12))


def energy_aware_prune(
    model: nn.Module,
    target: float,
    data: ScoreData,
    *,
    example_inputs: torch.Tensor | None = None,
    target_kind: str = "macs",
    criterion: str = "l1",
    min_channels: int = 1,
    max_ratio: float = 0.9,
    refit: bool = True,
    refit_samples: int = 256,
    ridge: float = 1e-3,
    finetune: TrainConfig | None = None,
    train_data: Dataset | None = None,
) -> StructuredResult:
    """S5: prune ``model`` in place to remove ``target`` of ``target_kind``, energy first.

    Example:
        >>> from nncompress.models import build_model
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
        >>> res = energy_aware_prune(build_model("lenet5"), 0.5, ScoreData(x, y), example_inputs=x[:1])
        >>> res.mac_reduction >= 2.0  # half of the MACs removed
        True
    """
    check_kind(target_kind)
    target = check_ratio(target, "target")
    if target_kind == "channels":
        raise ConfigError("energy-aware pruning takes target_kind 'macs' or 'params'")
    example = (example_inputs if example_inputs is not None else data.x)[:1]
    dense = summary(model, example)
    groups = groups_from_graph(model, build_graph(model, example))
    costs = layer_costs(model, example)
    _, budget = budget_for(costs, groups, target, target_kind)
    ratios = energy_ratios(groups, costs, budget, target_kind, min_channels, max_ratio)
    energy = group_energy(groups, costs)
    order = sorted(groups, key=lambda g: -energy[g.name])
    result = StructuredResult(model, f"energy-aware/{criterion}", target, target_kind, dense, dense)
    x = data.x[:refit_samples]
    for g0 in order:
        n = min(int(math.floor(ratios[g0.name] * g0.channels)), g0.channels - min_channels)
        if n <= 0:
            continue
        g = next(h for h in groups_from_graph(model, build_graph(model, example)) if h.name == g0.name)
        idx = _lowest(score(model, [g], criterion, data)[g.name], n)
        consumers = [c for c in g.consumers if isinstance(dict(model.named_modules())[c], (nn.Linear, nn.Conv2d))]
        before = capture_io(model, consumers, x) if refit else {}
        remove_channels(model, {g.name: idx}, example)
        residuals = {}
        if refit:
            after = capture_io(model, consumers, x)
            modules = dict(model.named_modules())
            for c in consumers:
                mod = modules[c]
                if isinstance(mod, nn.Conv2d) and mod.groups != 1:
                    continue
                residuals[c] = least_squares_refit(mod, after[c][0], before[c][1], ridge)
        info = {"group": g.name, "energy_pj": energy[g.name], "removed": n, "refit_residual": residuals}
        result.steps.append(info)
        log.info("energy-aware: %s", info)
    if finetune is not None:
        if train_data is None:
            raise ConfigError("finetune was given without train_data")
        fit(model, train_data, finetune)
    result.pruned = summary(model, example)
    return result
