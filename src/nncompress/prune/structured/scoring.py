"""Criterion handlers: gather what each formula needs from a model and score every group.

Every handler has the same signature ``(model, groups, data) -> {group name: scores (C,)}``
so the pruner treats them alike; ``CRITERIA`` maps names to ``Criterion`` objects (the
handler and whether it needs data), the registry recipes name criteria by. Activations are read
at each group's ``site`` (the norm after the root conv, else the root) and passed through a
ReLU where the formula is about post-ReLU activity. Data-free criteria accept ``data=None``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.prune.structured import criteria as F
from nncompress.prune.structured.groups import ChannelGroup
from nncompress.prune.structured.masking import restore, zero_channels

log = logging.getLogger(__name__)
Scores = dict[str, torch.Tensor]


@dataclass
class ScoreData:
    """A labelled data sample for data-driven criteria.

    ``x``/``y``: the scoring sample; ``held_out_x``/``held_out_y``: the sample on which
    S6 random search and the S9 oracle evaluate candidates (defaults to ``x``/``y``);
    ``bins``: S3 histogram bins; ``candidates``: S6 masks per group; ``ratio``: S6's share
    of channels removed per candidate (per group, or one number); ``trials``: AOFP restarts.
    """

    x: torch.Tensor
    y: torch.Tensor
    held_out_x: torch.Tensor | None = None
    held_out_y: torch.Tensor | None = None
    batch_size: int = 256
    bins: int = 10
    candidates: int = 16
    ratio: float | dict[str, float] = 0.5
    trials: int = 2
    seed: int = 0

    def held_out(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.held_out_x is None:
            return self.x, self.y
        return self.held_out_x, self.held_out_y

    def ratio_of(self, group: str) -> float:
        return self.ratio.get(group, 0.5) if isinstance(self.ratio, dict) else float(self.ratio)


def as_score_data(data, n: int = 512) -> ScoreData | None:
    """Accept a ``ScoreData``, an ``(x, y)`` pair or a ``TensorDataset`` (first ``n`` samples).

    Example:
        >>> as_score_data((torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))).x.shape
        torch.Size([4, 1, 28, 28])
    """
    if data is None or isinstance(data, ScoreData):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        return ScoreData(data[0][:n], data[1][:n])
    tensors = getattr(data, "tensors", None)
    if tensors is not None and len(tensors) == 2:
        return ScoreData(tensors[0][:n], tensors[1][:n])
    raise ConfigError(f"data must be a ScoreData, an (x, y) pair or a TensorDataset, got {type(data).__name__}")


def _need(data: ScoreData | None, name: str) -> ScoreData:
    if data is None:
        raise ConfigError(f"criterion {name!r} needs data (a labelled sample); got data=None")
    return data


def _to_root(group: ChannelGroup, module: str, local_scores: torch.Tensor) -> torch.Tensor:
    idx = torch.tensor(group.producers[module], dtype=torch.long)
    return local_scores[idx]


def norm_scores(model: nn.Module, groups: Sequence[ChannelGroup], data=None, p: int = 1) -> Scores:
    """S1: filter Lp norm, summed over the coupled convs of a group."""
    modules = dict(model.named_modules())
    return {g.name: sum(_to_root(g, m, F.filter_norm(modules[m].weight, p)) for m in g.layers)
            for g in groups}


@torch.no_grad()
def run_hooked(model: nn.Module, x: torch.Tensor, batch_size: int, hooks: list) -> None:
    """Run ``model`` in eval mode over ``x`` in batches (the forward hooks collect what they
    need), then restore its training mode and remove ``hooks``, also on error."""
    was = model.training
    model.eval()
    try:
        for s in range(0, len(x), batch_size):
            model(x[s:s + batch_size])
    finally:
        model.train(was)
        for h in hooks:
            h.remove()


@torch.no_grad()
def collect_site_stats(
    model: nn.Module, groups: Sequence[ChannelGroup], x: torch.Tensor, batch_size: int = 256
) -> dict[str, dict[str, torch.Tensor]]:
    """Per group, over ``x``: ``gap`` (N, C) mean of relu(site), ``fire`` (N, C) max of the
    site output, ``apoz`` (C,), and ``next`` (N, K) mean response of the first consumer."""
    modules = dict(model.named_modules())
    stats: dict[str, dict[str, list]] = {g.name: {"gap": [], "fire": [], "zeros": [], "next": []} for g in groups}
    hooks = []
    for g in groups:
        local = torch.tensor(g.producers[g.site], dtype=torch.long)

        def site_hook(m, i, out, g=g, local=local):
            o = out.detach().index_select(1, local)  # (B, C, ...) in root order
            r = torch.relu(o)
            stats[g.name]["gap"].append(r.flatten(2).mean(2) if r.dim() > 2 else r)
            stats[g.name]["fire"].append(o.flatten(2).amax(2) if o.dim() > 2 else o)
            stats[g.name]["zeros"].append((r == 0).float().transpose(0, 1).flatten(1).sum(1) / max(1, r[0, 0].numel()))

        hooks.append(modules[g.site].register_forward_hook(site_hook))
        first = next(iter(g.consumers))

        def next_hook(m, i, out, g=g):
            o = out.detach()
            stats[g.name]["next"].append(o.flatten(2).mean(2) if o.dim() > 2 else o)

        hooks.append(modules[first].register_forward_hook(next_hook))
    run_hooked(model, x, batch_size, hooks)
    out = {}
    for name, st in stats.items():
        out[name] = {"gap": torch.cat(st["gap"]), "fire": torch.cat(st["fire"]),
                     "apoz": torch.stack(st["zeros"]).sum(0) / len(x), "next": torch.cat(st["next"])}
    return out


def apoz_scores(model, groups, data=None) -> Scores:
    """S2: ``1 - APoZ`` of relu(site output)."""
    d = _need(data, "apoz")
    st = collect_site_stats(model, groups, d.x, d.batch_size)
    return {n: 1.0 - s["apoz"] for n, s in st.items()}


def entropy_scores(model, groups, data=None) -> Scores:
    """S3: entropy of the GAP of relu(site output) over the sample, ``data.bins`` bins."""
    d = _need(data, "entropy")
    st = collect_site_stats(model, groups, d.x, d.batch_size)
    return {n: F.gap_entropy(s["gap"], d.bins) for n, s in st.items()}


def icc_scores(model, groups, data=None) -> Scores:
    """S7: class discriminability (ICC) of fire scores = max of the site output per image."""
    d = _need(data, "icc")
    st = collect_site_stats(model, groups, d.x, d.batch_size)
    return {n: F.class_discriminability(s["fire"], d.y) for n, s in st.items()}


def correlation_scores(model, groups, data=None) -> Scores:
    """S8: max |correlation| of the channel's GAP response with the next layer's channels."""
    d = _need(data, "correlation")
    st = collect_site_stats(model, groups, d.x, d.batch_size)
    return {n: F.activation_correlation(s["gap"], s["next"]) for n, s in st.items()}


def taylor_scores(model, groups, data=None) -> Scores:
    """S4: |mean(a * dL/da)| at each site (cross-entropy loss), L2-normalised per layer."""
    d = _need(data, "taylor")
    modules = dict(model.named_modules())
    acc: dict[str, list[torch.Tensor]] = {g.name: [] for g in groups}
    acts: dict[str, torch.Tensor] = {}
    hooks = []
    for g in groups:
        local = torch.tensor(g.producers[g.site], dtype=torch.long)

        def hook(m, i, out, g=g, local=local):
            out.retain_grad()
            acts[g.name] = (out, local)

        hooks.append(modules[g.site].register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for s in range(0, len(d.x), d.batch_size):
            model.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(d.x[s:s + d.batch_size]), d.y[s:s + d.batch_size],
                                               reduction="sum")
            loss.backward()
            for name, (out, local) in acts.items():
                a, gr = out.detach().index_select(1, local), out.grad.index_select(1, local)
                acc[name].append((a * gr).flatten(2).mean(2).abs() if a.dim() > 2 else (a * gr).abs())
    finally:
        model.train(was)
        model.zero_grad(set_to_none=True)
        for h in hooks:
            h.remove()
    out = {}
    for name, parts in acc.items():
        s = torch.cat(parts).mean(0)  # (C,) = mean over samples of |mean_pos a*g|
        out[name] = s / s.norm().clamp_min(1e-12)
    return out


@torch.no_grad()
def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return nn.functional.cross_entropy(model(x), y).item()


def oracle_scores(model, groups, data=None) -> Scores:
    """S9 oracle: held-out loss increase when each channel alone is silenced."""
    d = _need(data, "oracle")
    x, y = d.held_out()
    was = model.training
    model.eval()
    out = {}
    try:
        base = _loss(model, x, y)
        for g in groups:
            def loss_without(j, g=g):
                saved = zero_channels(model, g, [j])
                try:
                    return _loss(model, x, y)
                finally:
                    restore(saved)
            out[g.name] = F.oracle(loss_without, g.channels, base)
    finally:
        model.train(was)
    return out


def aofp_scores(model, groups, data=None) -> Scores:
    """S9 AOFP: binary search over halves, damage = relative change of the next layer's output."""
    d = _need(data, "aofp")
    x, _ = d.held_out()
    modules = dict(model.named_modules())
    gen = torch.Generator().manual_seed(d.seed)
    was = model.training
    model.eval()
    out = {}
    try:
        for g in groups:
            consumer = modules[next(iter(g.consumers))]
            captured: list[torch.Tensor] = []
            h = consumer.register_forward_hook(lambda m, i, o: captured.append(o.detach()))
            try:
                with torch.no_grad():
                    model(x)
                ref = captured.pop()

                def damage(s, g=g, ref=ref):
                    saved = zero_channels(model, g, s)
                    try:
                        with torch.no_grad():
                            model(x)
                        return ((captured.pop() - ref).norm() / ref.norm().clamp_min(1e-12)).item()
                    finally:
                        restore(saved)

                out[g.name] = F.aofp(damage, g.channels, gen, d.trials)
            finally:
                h.remove()
    finally:
        model.train(was)
    return out


def random_scores(model, groups, data=None) -> Scores:
    """S6: best of ``data.candidates`` random masks per group (at ``data.ratio``), on held-out data."""
    d = _need(data, "random")
    x, y = d.held_out()
    gen = torch.Generator().manual_seed(d.seed)
    was = model.training
    model.eval()
    out = {}
    try:
        for g in groups:
            n_remove = int(round(d.ratio_of(g.name) * g.channels))

            def loss_of(s, g=g):
                saved = zero_channels(model, g, s)
                try:
                    return _loss(model, x, y)
                finally:
                    restore(saved)

            out[g.name] = F.random_search(loss_of, g.channels, n_remove, d.candidates, gen)
    finally:
        model.train(was)
    return out


@dataclass(frozen=True)
class Criterion:
    """A named scoring rule: ``fn(model, groups, data) -> {group name: scores (C,)}``, one
    score per channel, low = removed first. ``needs_data``: it reads a labelled sample
    (``ScoreData``); data-free criteria get ``data=None``. Register one with
    :func:`register_criterion` and recipes (``structured: {criterion: name}``) can use it.

    Example:
        >>> CRITERIA["l2"].needs_data
        False
    """

    name: str
    fn: Callable[[nn.Module, Sequence[ChannelGroup], ScoreData | None], Scores]
    needs_data: bool = True

    def __call__(self, model: nn.Module, groups: Sequence[ChannelGroup], data: ScoreData | None = None) -> Scores:
        return self.fn(model, groups, data)


CRITERIA: dict[str, Criterion] = {c.name: c for c in (
    Criterion("l1", lambda m, g, d=None: norm_scores(m, g, d, p=1), needs_data=False),
    Criterion("l2", lambda m, g, d=None: norm_scores(m, g, d, p=2), needs_data=False),
    Criterion("apoz", apoz_scores),
    Criterion("entropy", entropy_scores),
    Criterion("taylor", taylor_scores),
    Criterion("icc", icc_scores),
    Criterion("correlation", correlation_scores),
    Criterion("oracle", oracle_scores),
    Criterion("aofp", aofp_scores),
    Criterion("random", random_scores),
)}


def register_criterion(criterion: Criterion) -> Criterion:
    """Make ``criterion`` known by its name (to ``score``, ``structured_prune`` and recipes).

    Example:
        >>> register_criterion(Criterion("l1", CRITERIA["l1"].fn, needs_data=False)).name
        'l1'
    """
    CRITERIA[criterion.name] = criterion
    return criterion


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name`` (``ConfigError`` naming the allowed ones)."""
    if name not in CRITERIA:
        raise ConfigError(f"unknown criterion {name!r}; allowed: {', '.join(CRITERIA)}")
    return CRITERIA[name]


def score(model: nn.Module, groups: Sequence[ChannelGroup], criterion: str, data: ScoreData | None = None) -> Scores:
    """Score every group with ``criterion``; checks one finite score per channel.

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.prune.structured.groups import find_groups
        >>> model = build_model("lenet5")
        >>> s = score(model, find_groups(model, torch.randn(1, 1, 28, 28)), "l1")
        >>> {name: tuple(v.shape) for name, v in s.items()}  # one score per channel of each group
        {'fc1': (500,), 'conv2': (50,), 'conv1': (20,)}
    """
    fn = get_criterion(criterion)
    if fn.needs_data:
        _need(data, criterion)
    out = fn(model, groups, data)
    for g in groups:
        s = out[g.name]
        if s.shape != (g.channels,) or not torch.isfinite(s).all():
            raise ConfigError(f"criterion {criterion!r} gave bad scores for {g.name!r}: shape {tuple(s.shape)}")
    return out
