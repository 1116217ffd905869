"""S1/H3 sensitivity analysis: prune each layer alone at several ratios, record accuracy.

For each channel group the lowest-scored ``floor(r * C)`` channels (criterion, default L1)
are silenced (``channels_masked``: exactly what removal would compute) and the model is
evaluated on a labelled sample. ``SensitivityResult.suggest_ratios(mac_target)`` then picks
per-layer ratios following Li et al. (2017): the largest ratio of each layer whose accuracy
drop stays within a tolerance, with the smallest tolerance that removes ``mac_target`` of the
MACs (accuracy curves are interpolated linearly between the measured ratios).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.prune.structured.cost import LayerCost, layer_costs, plan_cost
from nncompress.prune.structured.groups import ChannelGroup, find_groups
from nncompress.prune.structured.masking import channels_masked
from nncompress.prune.structured.scoring import ScoreData, score
from nncompress.prune.structured.selection import _lowest, check_ratio

log = logging.getLogger(__name__)


@dataclass
class SensitivityResult:
    """Accuracy of the model with each group pruned alone at each ratio."""

    dense_accuracy: float
    ratios: list[float]
    curves: dict[str, list[float]]
    channels: dict[str, int]
    criterion: str = "l1"
    groups: list[ChannelGroup] = field(default_factory=list, repr=False)
    costs: list[LayerCost] = field(default_factory=list, repr=False)

    def to_json(self) -> str:
        """Curves, ratios and channel counts as JSON (groups/costs are not serialised)."""
        return json.dumps({"dense_accuracy": self.dense_accuracy, "ratios": self.ratios,
                           "curves": self.curves, "channels": self.channels,
                           "criterion": self.criterion}, indent=2)

    def plot(self, path: str | Path) -> Path:
        """Accuracy vs ratio, one curve per layer (matplotlib, Agg backend)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        xs = [0.0, *self.ratios]
        for k, (name, accs) in enumerate(self.curves.items()):
            ax.plot(xs, [self.dense_accuracy, *accs], marker="o", ms=3, label=name,
                    linestyle=("-", "--", ":")[(k // 10) % 3])  # the colour cycle has 10 colours
        ax.set_xlabel(f"share of channels removed ({self.criterion} ranking)")
        ax.set_ylabel("accuracy")
        ax.set_title("per-layer pruning sensitivity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return path

    def drop_at(self, group: str, ratio: float) -> float:
        """Interpolated accuracy drop of ``group`` at ``ratio``."""
        xs = [0.0, *self.ratios]
        ys = [0.0, *[self.dense_accuracy - a for a in self.curves[group]]]
        if ratio >= xs[-1]:
            return ys[-1] if ratio == xs[-1] else math.inf
        for i in range(len(xs) - 1):
            if xs[i] <= ratio <= xs[i + 1]:
                t = (ratio - xs[i]) / (xs[i + 1] - xs[i])
                return ys[i] + t * (ys[i + 1] - ys[i])
        return math.inf

    def suggest_ratios(self, mac_target: float, step: float = 0.05) -> dict[str, float]:
        """Per-layer ratios removing ``mac_target`` of the MACs with the smallest tolerated drop.

        Example:
            >>> from nncompress.models import build_model
            >>> g = torch.Generator().manual_seed(0)
            >>> x, y = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
            >>> res = sensitivity_analysis(build_model("lenet5"), (x, y), [0.3, 0.6])
            >>> ratios = res.suggest_ratios(0.5)  # {group: share of its channels to remove}
            >>> set(ratios) <= set(res.curves), all(0 < r < 1 for r in ratios.values())
            (True, True)
        """
        check_ratio(mac_target, "mac_target")
        if not self.costs:
            raise ConfigError("this result has no layer costs (loaded from JSON?); re-run the analysis")
        grid = [round(k * step, 10) for k in range(1, int(max(self.ratios) / step) + 1)]
        dense = plan_cost(self.costs, self.groups, {})

        def plan(tol: float) -> dict[str, float]:
            out = {}
            for g in self.groups:
                ok = [r for r in grid if self.drop_at(g.name, r) <= tol]
                if ok:
                    out[g.name] = max(ok)
            return out

        def macs(ratios: dict[str, float]) -> float:
            return plan_cost(self.costs, self.groups, {
                g.name: min(int(math.floor(ratios.get(g.name, 0.0) * g.channels + 1e-9)), g.channels - 1)
                for g in self.groups})

        tols = sorted({self.drop_at(g.name, r) for g in self.groups for r in grid} | {0.0})
        for tol in tols:
            ratios = plan(tol)
            if macs(ratios) <= (1 - mac_target) * dense:
                log.info("sensitivity: tolerance %.4f meets MAC target %.2f", tol, mac_target)
                return ratios
        raise ConfigError(f"mac_target {mac_target} out of reach with ratios up to {max(self.ratios)}")


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> float:
    correct = 0
    for s in range(0, len(x), batch_size):
        correct += (model(x[s:s + batch_size]).argmax(1) == y[s:s + batch_size]).sum().item()
    return correct / len(x)


def sensitivity_analysis(
    model: nn.Module,
    data: tuple[torch.Tensor, torch.Tensor],
    ratios: Sequence[float] = (0.25, 0.5, 0.75),
    *,
    criterion: str = "l1",
    score_data: ScoreData | None = None,
    skip: Sequence[str] = (),
    batch_size: int = 256,
) -> SensitivityResult:
    """Prune each channel group alone at each ratio (masking) and record the accuracy.

    ``data``: ``(x, y)`` evaluation sample. ``score_data``: the sample data-driven criteria
    score on (defaults to ``data``).

    Example:
        >>> from nncompress.models import build_model
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g)
        >>> res = sensitivity_analysis(build_model("lenet5"), (x, y), [0.3, 0.6])
        >>> {name: len(accs) for name, accs in res.curves.items()}  # one accuracy per ratio and group
        {'fc1': 2, 'conv2': 2, 'conv1': 2}
        >>> res.plot("sens.png")  # doctest: +SKIP
    """
    ratios = sorted(check_ratio(r) for r in ratios)
    if not ratios:
        raise ConfigError("ratios must name at least one fraction in (0, 1)")
    x, y = data
    groups = find_groups(model, x[:1], skip)
    costs = layer_costs(model, x[:1])
    sd = score_data if score_data is not None else ScoreData(x, y)
    scores = score(model, groups, criterion, sd)
    was = model.training
    model.eval()
    try:
        dense = _accuracy(model, x, y, batch_size)
        curves: dict[str, list[float]] = {}
        for g in groups:
            accs = []
            for r in ratios:
                n = min(int(math.floor(r * g.channels + 1e-9)), g.channels - 1)
                with channels_masked(model, groups, {g.name: _lowest(scores[g.name], n)}):
                    accs.append(_accuracy(model, x, y, batch_size))
            curves[g.name] = accs
            log.info("sensitivity %s: %s", g.name, accs)
    finally:
        model.train(was)
    return SensitivityResult(dense, list(ratios), curves, {g.name: g.channels for g in groups},
                             criterion, list(groups), costs)
