"""Selection: which channels to remove, given scores, per-layer ratios or a global target.

Two modes (Torch-Pruning's split of scoring from selection):

* per layer: remove ``floor(r_g * C_g)`` lowest-scored channels of group g;
* global: normalise each group's scores (divide by the group mean, after shifting negative
  scores to >= 0) so layers compare, rank all channels together and remove the lowest until
  the target (a share of channels, parameters or MACs removed) is met.

Both keep at least ``min_channels`` per group. Targets are *fractions removed*:
``target=0.5, kind="macs"`` asks for 2x fewer MACs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from nncompress.errors import ConfigError
from nncompress.prune.structured.cost import LayerCost, plan_cost
from nncompress.prune.structured.groups import ChannelGroup

TARGET_KINDS = ("macs", "params", "channels")


def check_ratio(value: float, what: str = "ratio") -> float:
    """Validate a removal fraction: 0 <= value < 1 (``ConfigError`` otherwise)."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be a number in [0, 1), got {value!r}") from exc
    if not (0.0 <= v < 1.0) or math.isnan(v):
        raise ConfigError(f"{what} must be in [0, 1) (a fraction removed), got {value!r}")
    return v


def check_kind(kind: str) -> str:
    if kind not in TARGET_KINDS:
        raise ConfigError(f"target_kind {kind!r} not allowed; use one of {TARGET_KINDS}")
    return kind


def normalise(scores: torch.Tensor) -> torch.Tensor:
    """Per-layer normalisation for global ranking: shift to >= 0, divide by the mean.

    Example:
        >>> normalise(torch.tensor([1., 3.]))
        tensor([0.5000, 1.5000])
    """
    s = scores.float()
    if s.min() < 0:
        s = s - s.min()
    m = s.mean()
    return s / m if m > 0 else torch.ones_like(s)


def _lowest(scores: torch.Tensor, n: int) -> list[int]:
    # stable: ties broken by channel index
    order = sorted(range(len(scores)), key=lambda i: (float(scores[i]), i))
    return sorted(order[:n])


def select_per_layer(
    scores: Mapping[str, torch.Tensor],
    groups: Sequence[ChannelGroup],
    ratios: float | Mapping[str, float],
    min_channels: int = 1,
) -> dict[str, list[int]]:
    """Remove ``floor(r * C)`` lowest-scored channels of each group (root indices).

    ``ratios``: one fraction for every group or ``{group name: fraction}`` (groups not named
    are left alone). Raises ``ConfigError`` for a ratio outside [0, 1) or a group that
    would keep fewer than ``min_channels``.

    Example:
        >>> select_per_layer({"c": torch.tensor([3., 1., 2., 0.])}, [ChannelGroup("c", 4)], 0.5)
        {'c': [1, 3]}
    """
    if min_channels < 1:
        raise ConfigError(f"min_channels must be >= 1, got {min_channels}")
    names = {g.name for g in groups}
    if isinstance(ratios, Mapping):
        unknown = set(ratios) - names
        if unknown:
            raise ConfigError(f"ratios name unknown groups {sorted(unknown)}; allowed: {sorted(names)}")
    plan: dict[str, list[int]] = {}
    for g in groups:
        r = ratios.get(g.name, 0.0) if isinstance(ratios, Mapping) else ratios
        r = check_ratio(r, f"ratio of {g.name!r}")
        n = int(math.floor(r * g.channels + 1e-9))
        if g.channels - n < min_channels:
            raise ConfigError(
                f"ratio {r} of {g.name!r} leaves {g.channels - n} of {g.channels} channels;"
                f" at least min_channels={min_channels} must stay"
            )
        if n:
            plan[g.name] = _lowest(scores[g.name], n)
    return plan


def _measure(costs, groups, removed: Mapping[str, int], kind: str) -> float:
    if kind == "channels":
        return float(sum(g.channels - removed.get(g.name, 0) for g in groups))
    return plan_cost(costs, groups, removed, kind)


def _dense(costs, groups, kind: str) -> float:
    return _measure(costs, groups, {}, kind)


def select_global(
    scores: Mapping[str, torch.Tensor],
    groups: Sequence[ChannelGroup],
    costs: Sequence[LayerCost],
    budget: float,
    kind: str = "macs",
    min_channels: int = 1,
    max_ratio: float = 0.9,
) -> dict[str, list[int]]:
    """Global ranking: remove the lowest normalised scores until ``kind`` <= ``budget``.

    ``budget`` is the absolute total allowed (MACs, parameters or channels over the groups);
    at most ``max_ratio`` of a group's channels go. Raises ``ConfigError`` when the budget
    is out of reach.
    """
    check_kind(kind)
    if min_channels < 1:
        raise ConfigError(f"min_channels must be >= 1, got {min_channels}")
    order = []
    for g in groups:
        s = normalise(scores[g.name])
        order += [(float(s[i]), g.name, i) for i in range(g.channels)]
    order.sort()
    by_name = {g.name: g for g in groups}
    removed: dict[str, list[int]] = {g.name: [] for g in groups}
    counts: dict[str, int] = {g.name: 0 for g in groups}
    current = _measure(costs, groups, counts, kind)
    for _, gname, i in order:
        if current <= budget:
            break
        g = by_name[gname]
        limit = min(g.channels - min_channels, int(math.floor(max_ratio * g.channels)))
        if counts[gname] >= limit:
            continue
        counts[gname] += 1
        removed[gname].append(i)
        current = _measure(costs, groups, counts, kind)
    if current > budget:
        raise ConfigError(
            f"{kind} budget {budget:.4g} out of reach: {current:.4g} left with every group at"
            f" its limit (min_channels={min_channels}, max_ratio={max_ratio})"
        )
    return {k: sorted(v) for k, v in removed.items() if v}


def uniform_ratio_for(
    groups: Sequence[ChannelGroup],
    costs: Sequence[LayerCost],
    budget: float,
    kind: str = "macs",
    min_channels: int = 1,
) -> float:
    """Smallest uniform per-layer ratio whose plan meets ``budget`` (bisection).

    Example:
        >>> uniform_ratio_for(groups, costs, 0.5 * dense_macs)  # doctest: +SKIP
        0.43
    """
    check_kind(kind)

    def counts(r: float) -> dict[str, int]:
        return {g.name: min(int(math.floor(r * g.channels + 1e-9)), g.channels - min_channels)
                for g in groups}

    if _measure(costs, groups, counts(0.999999), kind) > budget:
        raise ConfigError(f"{kind} budget {budget:.4g} out of reach with uniform per-layer ratios")
    lo, hi = 0.0, 0.999999
    for _ in range(40):
        mid = (lo + hi) / 2
        if _measure(costs, groups, counts(mid), kind) <= budget:
            hi = mid
        else:
            lo = mid
    return hi


def budget_for(costs, groups, target: float, kind: str) -> tuple[float, float]:
    """(dense total, budget) for removing ``target`` of ``kind``."""
    dense = _dense(costs, groups, kind)
    return dense, dense * (1.0 - check_ratio(target, "target"))
