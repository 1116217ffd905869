"""Channel groups: the sets of coupled channels that must be removed together.

A *channel group* is one output channel space shared by several layers: the output channels
of a conv (its "root"), the BatchNorm after it, every other conv whose output is added to it
(residual adds), and the input channels of every consumer (next conv, Linear after a
flatten, the other half of a concat). Torch-Pruning's ``DependencyGraph`` finds them by
tracing the model; this module turns its groups into plain, model-independent records
(module names and index maps), so that scoring, masking and cost accounting need no graph.

Channels are numbered in the *root* layer's output space (``0..channels-1``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from nncompress.errors import ConfigError
from nncompress.modules import name_matches

log = logging.getLogger(__name__)

ROOT_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm,
    nn.InstanceNorm1d, nn.InstanceNorm2d,
)


@dataclass(frozen=True)
class ChannelGroup:
    """One prunable channel space.

    ``producers`` map a Conv/Linear/Norm module name to the local output index of each root
    channel (``producers[m][c]`` = index in ``m``'s output of root channel ``c``);
    ``consumers`` map a module name to the local *input* indices fed by each root channel
    (a Linear after a flatten gets ``H*W`` inputs per channel). ``site`` is the module whose
    output is read as the channel's activation by data-driven criteria (the norm right after
    the root when there is one, else the root).
    """

    name: str
    channels: int
    producers: dict[str, list[int]] = field(default_factory=dict)
    consumers: dict[str, list[list[int]]] = field(default_factory=dict)
    site: str = ""
    norms: frozenset[str] = frozenset()

    @property
    def layers(self) -> list[str]:
        """The Conv/Linear modules that write these channels (the root first)."""
        rest = [n for n in self.producers if n not in self.norms and n != self.name]
        return [self.name, *rest]

    @property
    def coupled(self) -> bool:
        """True when more than one Conv/Linear writes these channels (residual adds)."""
        return len(self.layers) > 1


def is_depthwise(mod: nn.Module) -> bool:
    """A conv whose every channel is its own group (input and output channels coupled).

    Example:
        >>> is_depthwise(nn.Conv2d(8, 8, 3, groups=8)), is_depthwise(nn.Conv2d(8, 8, 3))
        (True, False)
    """
    return (isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Conv3d))
            and mod.groups > 1 and mod.groups == mod.in_channels == mod.out_channels)


def _module_names(model: nn.Module) -> dict[nn.Module, str]:
    return {m: n for n, m in model.named_modules()}


def build_graph(model: nn.Module, example_inputs: torch.Tensor | Sequence) -> tp.DependencyGraph:
    """Trace ``model`` once with Torch-Pruning and return its dependency graph.

    Example:
        >>> from nncompress.models import build_model
        >>> type(build_graph(build_model("lenet5"), torch.randn(1, 1, 28, 28))).__name__
        'DependencyGraph'
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            dg = tp.DependencyGraph().build_dependency(model, example_inputs, verbose=False)
    finally:
        model.train(was_training)
    return dg


def _site_of(dg: tp.DependencyGraph, root: nn.Module, names: dict[nn.Module, str]) -> str:
    node = dg.module2node[root]
    for out in node.outputs:
        if isinstance(out.module, NORM_TYPES):
            return names[out.module]
    return names[root]


def groups_from_graph(
    model: nn.Module,
    dg: tp.DependencyGraph,
    skip: Iterable[str] = (),
    root_types: tuple[type[nn.Module], ...] = ROOT_TYPES,
) -> list[ChannelGroup]:
    """Convert the graph's groups (full index sets) into ``ChannelGroup`` records.

    Groups whose channels reach the model output (the classifier's outputs) are left out,
    and so is every group that contains a module named in ``skip`` (names or globs).
    """
    skip = list(skip)
    names = _module_names(model)
    out: list[ChannelGroup] = []
    for g in dg.get_all_groups(root_module_types=root_types):
        root = g[0].dep.target.module
        channels = len(g[0].idxs)
        producers: dict[str, list[int]] = {}
        consumers: dict[str, list[list[int]]] = {}
        norms: set[str] = set()
        reaches_output = False
        for item in g:
            mod = item.dep.target.module
            if not isinstance(mod, nn.Module) or mod not in names:
                continue  # Torch-Pruning's internal ops (elementwise, reshape, concat)
            name = names[mod]
            if dg.is_out_channel_pruning_fn(item.dep.handler):
                local = [0] * channels
                for i, r in zip(item.idxs, item.root_idxs):
                    local[r] = i
                producers[name] = local
                if isinstance(mod, NORM_TYPES):
                    norms.add(name)
            else:
                per_root: list[list[int]] = [[] for _ in range(channels)]
                for i, r in zip(item.idxs, item.root_idxs):
                    per_root[r].append(i)
                consumers[name] = per_root
        if not consumers:
            reaches_output = True  # nothing consumes these channels: they are model outputs
        gname = names[root]
        members = set(producers) | set(consumers)
        if reaches_output:
            continue
        if any(name_matches(m, skip) for m in members):
            log.debug("skipping group %s (matched %s)", gname, skip)
            continue
        out.append(ChannelGroup(gname, channels, producers, consumers,
                                _site_of(dg, root, names), frozenset(norms)))
    return out


def find_groups(
    model: nn.Module,
    example_inputs: torch.Tensor | Sequence,
    skip: Iterable[str] = (),
) -> list[ChannelGroup]:
    """All prunable channel groups of ``model`` (the output layer's group excluded).

    Example:
        >>> from nncompress.models import build_model
        >>> [g.name for g in find_groups(build_model("lenet5"), torch.randn(1, 1, 28, 28))]
        ['fc1', 'conv2', 'conv1']
    """
    return groups_from_graph(model, build_graph(model, example_inputs), skip)


def group_of(groups: Sequence[ChannelGroup], module_name: str) -> ChannelGroup:
    """The group in which ``module_name`` produces output channels."""
    for g in groups:
        if module_name in g.producers:
            return g
    allowed = sorted({p for g in groups for p in g.producers if p not in g.norms})
    raise ConfigError(
        f"module {module_name!r} produces no prunable channel group; allowed: {allowed}"
    )


def to_root_plan(
    groups: Sequence[ChannelGroup], plan: dict[str, Sequence[int]]
) -> dict[str, list[int]]:
    """Translate ``{module name: local output indices}`` into ``{group name: root indices}``.

    Entries of coupled modules (one residual channel space named through two convs) are
    merged by union. Raises ``ConfigError`` for unknown modules, out-of-range indices, or a
    group that would lose all of its channels.
    """
    merged: dict[str, set[int]] = {}
    by_name = {g.name: g for g in groups}
    for module_name, idxs in plan.items():
        g = group_of(groups, module_name)
        local = g.producers[module_name]
        inverse = {li: r for r, li in enumerate(local)}
        size = len(local)
        for i in idxs:
            i = int(i)
            if i not in inverse:
                raise ConfigError(
                    f"channel index {i} out of range for {module_name!r} (allowed 0..{size - 1})"
                )
            merged.setdefault(g.name, set()).add(inverse[i])
    for gname, idxs in merged.items():
        if len(idxs) >= by_name[gname].channels:
            raise ConfigError(
                f"plan removes all {by_name[gname].channels} channels of group {gname!r}"
                f" (members {sorted(by_name[gname].producers)}); keep at least one"
            )
    return {k: sorted(v) for k, v in merged.items() if v}
