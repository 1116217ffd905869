"""Selection: which channels to remove, given scores, per-layer ratios or a global target.

Two modes (Torch-Pruning's split of scoring from selection):

* per layer: remove ``floor(r_g * C_g)`` lowest-scored channels of group g;
* global: normalise each group's scores (divide by the group mean, after shifting negative
  scores to >= 0) so layers compare, rank all channels together and remove the lowest until
  the target (a share of channels, parameters or MACs removed) is met.

Both keep at least ``min_channels`` per group. Targets are *fractions removed*:
``target=0.5, kind="macs"`` asks for 2x fewer MACs.

``round_to=k`` keeps a multiple of k channels in every pruned group (dense CPU/GPU
convolution kernels run best on channel counts that fill their vector registers; a group
whose size is not a multiple of k keeps its odd size only if it is left whole). Per layer,
the kept count is rounded *up* to a multiple of k; globally, channels are removed in
chunks of k consecutive lowest scores (the first chunk of a group brings its size down to
a multiple of k), each chunk ranked by its highest normalised score.
``kept_counts`` generalises this to any list of allowed kept counts per group (the steps of
a measured latency staircase, see ``latency``): channels go in the chunks between
consecutive allowed counts. ``kind="latency"`` budgets the time a measured
``LatencyModel`` predicts instead of MACs or parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from nncompress.checks import check_choice, check_fraction, check_int
from nncompress.errors import ConfigError
from nncompress.prune.structured.cost import LayerCost, plan_cost
from nncompress.prune.structured.groups import ChannelGroup
from nncompress.prune.structured.latency import LatencyModel

TARGET_KINDS = ("macs", "params", "channels", "latency")


def check_ratio(value: float, what: str = "ratio") -> float:
    """Validate a removal fraction: 0 <= value < 1 (``ConfigError`` otherwise)."""
    return check_fraction(value, what, zero=True, one=False)


def check_kind(kind: str) -> str:
    """Validate a target kind (one of ``TARGET_KINDS``)."""
    return check_choice(kind, TARGET_KINDS, "target_kind")


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


def check_round_to(round_to: int) -> int:
    """Validate a channel multiple (an int >= 1)."""
    return check_int(round_to, "round_to", 1)


def allowed_kept(channels: int, round_to: int = 1, kept: Sequence[int] | None = None) -> list[int]:
    """The channel counts a group may keep, descending, starting with ``channels`` (whole).

    ``kept`` (e.g. the steps of a measured latency staircase, see ``latency``) lists them
    explicitly; otherwise they are the multiples of ``round_to`` below ``channels``.

    Example:
        >>> allowed_kept(20, 8)
        [20, 16, 8, 0]
        >>> allowed_kept(6, kept=[4, 1])
        [6, 4, 1]
    """
    if kept is not None:
        return sorted({int(k) for k in kept if 0 <= int(k) < channels} | {channels}, reverse=True)
    return [channels, *range((channels - 1) // round_to * round_to, -1, -round_to)]


def rounded_removal(channels: int, n: int, round_to: int = 1, kept: Sequence[int] | None = None) -> int:
    """Channels to remove so that the kept count is ``channels - n`` rounded up to the next
    allowed count (a multiple of ``round_to``, or one of ``kept``; never more than
    ``channels``).

    Example:
        >>> rounded_removal(20, 9, 8)  # keep 11 -> 16
        4
    """
    if n <= 0:
        return 0
    if round_to == 1 and kept is None:
        return n
    want = channels - n
    return channels - min(k for k in allowed_kept(channels, round_to, kept) if k >= want)


def _kept_of(kept_counts: Mapping[str, Sequence[int]] | None, name: str) -> Sequence[int] | None:
    return None if kept_counts is None else kept_counts.get(name)


def select_per_layer(
    scores: Mapping[str, torch.Tensor],
    groups: Sequence[ChannelGroup],
    ratios: float | Mapping[str, float],
    min_channels: int = 1,
    round_to: int = 1,
    kept_counts: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, list[int]]:
    """Remove ``floor(r * C)`` lowest-scored channels of each group (root indices), kept
    counts rounded up to a multiple of ``round_to`` or to the next count ``kept_counts``
    allows for the group (groups it does not name: any count).

    ``ratios``: one fraction for every group or ``{group name: fraction}`` (groups not named
    are left alone). Raises ``ConfigError`` for a ratio outside [0, 1) or a group that
    would keep fewer than ``min_channels``.

    Example:
        >>> select_per_layer({"c": torch.tensor([3., 1., 2., 0.])}, [ChannelGroup("c", 4)], 0.5)
        {'c': [1, 3]}
    """
    if min_channels < 1:
        raise ConfigError(f"min_channels must be >= 1, got {min_channels}")
    check_round_to(round_to)
    names = {g.name for g in groups}
    if isinstance(ratios, Mapping):
        unknown = set(ratios) - names
        if unknown:
            raise ConfigError(f"ratios name unknown groups {sorted(unknown)}; allowed: {sorted(names)}")
    plan: dict[str, list[int]] = {}
    for g in groups:
        r = ratios.get(g.name, 0.0) if isinstance(ratios, Mapping) else ratios
        r = check_ratio(r, f"ratio of {g.name!r}")
        n = rounded_removal(g.channels, int(math.floor(r * g.channels + 1e-9)), round_to,
                            _kept_of(kept_counts, g.name))
        if g.channels - n < min_channels:
            raise ConfigError(
                f"ratio {r} of {g.name!r} leaves {g.channels - n} of {g.channels} channels;"
                f" at least min_channels={min_channels} must stay"
            )
        if n:
            plan[g.name] = _lowest(scores[g.name], n)
    return plan


def _measure(costs, groups, removed: Mapping[str, int], kind: str, latency: LatencyModel | None = None) -> float:
    if kind == "latency":
        if latency is None:
            raise ConfigError("target_kind 'latency' needs a measured LatencyModel (see structured.latency)")
        return latency.predict(groups, removed)
    if kind == "channels":
        return float(sum(g.channels - removed.get(g.name, 0) for g in groups))
    return plan_cost(costs, groups, removed, kind)


def _dense(costs, groups, kind: str, latency: LatencyModel | None = None) -> float:
    return _measure(costs, groups, {}, kind, latency)


def select_global(
    scores: Mapping[str, torch.Tensor],
    groups: Sequence[ChannelGroup],
    costs: Sequence[LayerCost],
    budget: float,
    kind: str = "macs",
    min_channels: int = 1,
    max_ratio: float = 0.9,
    round_to: int = 1,
    kept_counts: Mapping[str, Sequence[int]] | None = None,
    latency: LatencyModel | None = None,
) -> dict[str, list[int]]:
    """Global ranking: remove the lowest normalised scores until ``kind`` <= ``budget``.

    ``budget`` is the absolute total allowed (MACs, parameters or channels over the groups);
    at most ``max_ratio`` of a group's channels go. With ``round_to=k`` channels go in
    chunks (see the module docstring). Raises ``ConfigError`` when the budget is out of
    reach. ``kept_counts`` (group name -> allowed kept counts, e.g. a measured latency
    staircase) replaces ``round_to`` for the groups it names: channels go in the chunks
    between consecutive allowed counts. ``kind="latency"`` budgets the seconds ``latency``
    predicts.
    """
    check_kind(kind)
    check_round_to(round_to)
    if min_channels < 1:
        raise ConfigError(f"min_channels must be >= 1, got {min_channels}")
    # (chunk score, group, channel indices, position): the chunks between consecutive allowed
    # kept counts, each scored by its highest normalised score; within a group the chunk
    # scores do not decrease and ties keep the position order, so each group's chunks come
    # in order
    order = []
    for g in groups:
        s = normalise(scores[g.name])
        ranked = sorted(range(g.channels), key=lambda i: (float(s[i]), i))
        bounds = [g.channels - k for k in allowed_kept(g.channels, round_to, _kept_of(kept_counts, g.name))]
        for pos, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            chunk = ranked[a:b]
            order.append((max(float(s[i]) for i in chunk), g.name, chunk, pos))
    order.sort(key=lambda t: (t[0], t[1], t[3]))
    by_name = {g.name: g for g in groups}
    removed: dict[str, list[int]] = {g.name: [] for g in groups}
    counts: dict[str, int] = {g.name: 0 for g in groups}
    closed: set[str] = set()  # groups whose next chunk would pass their limit: later ones would too
    current = _measure(costs, groups, counts, kind, latency)
    for _, gname, chunk, _pos in order:
        if current <= budget:
            break
        g = by_name[gname]
        limit = min(g.channels - min_channels, int(math.floor(max_ratio * g.channels)))
        if gname in closed or counts[gname] + len(chunk) > limit:
            closed.add(gname)
            continue
        counts[gname] += len(chunk)
        removed[gname] += chunk
        current = _measure(costs, groups, counts, kind, latency)
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
    round_to: int = 1,
    kept_counts: Mapping[str, Sequence[int]] | None = None,
    latency: LatencyModel | None = None,
) -> float:
    """Smallest uniform per-layer ratio whose plan meets ``budget`` (bisection), kept
    channel counts rounded up to multiples of ``round_to`` as :func:`select_per_layer` does.

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.prune.structured.cost import layer_costs
        >>> from nncompress.prune.structured.groups import find_groups
        >>> model, x = build_model("lenet5"), torch.randn(1, 1, 28, 28)
        >>> costs, groups = layer_costs(model, x), find_groups(model, x)
        >>> round(uniform_ratio_for(groups, costs, 0.5 * sum(c.macs for c in costs)), 2)
        0.34
    """
    check_kind(kind)

    def counts(r: float) -> dict[str, int]:
        return {g.name: min(rounded_removal(g.channels, int(math.floor(r * g.channels + 1e-9)), round_to,
                                            _kept_of(kept_counts, g.name)),
                            g.channels - min_channels) for g in groups}

    if _measure(costs, groups, counts(0.999999), kind, latency) > budget:
        raise ConfigError(f"{kind} budget {budget:.4g} out of reach with uniform per-layer ratios")
    lo, hi = 0.0, 0.999999
    for _ in range(40):
        mid = (lo + hi) / 2
        if _measure(costs, groups, counts(mid), kind, latency) <= budget:
            hi = mid
        else:
            lo = mid
    return hi


def budget_for(costs, groups, target: float, kind: str,
               latency: LatencyModel | None = None) -> tuple[float, float]:
    """(dense total, budget) for removing ``target`` of ``kind``."""
    dense = _dense(costs, groups, kind, latency)
    return dense, dense * (1.0 - check_ratio(target, "target"))
