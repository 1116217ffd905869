"""Soft channel removal: zero a group's channels without changing any shape.

Zeroing the output rows of every producer of a channel group (conv/linear weight and bias,
norm weight and bias) makes the channel exactly zero everywhere it flows, including through
residual adds, so the masked model computes what the physically pruned model computes. The
criteria, the oracle and the sensitivity sweep evaluate candidate removals this way: it is
cheap, and ``restore`` undoes it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from nncompress.prune.structured.groups import ChannelGroup


def _producer_params(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in (getattr(module, "weight", None), getattr(module, "bias", None)) if p is not None]


@torch.no_grad()
def zero_channels(
    model: nn.Module, group: ChannelGroup, root_idxs: Sequence[int]
) -> list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]]:
    """Zero channels ``root_idxs`` of ``group`` in place; return what ``restore`` needs.

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.prune.structured.groups import find_groups
        >>> model = build_model("lenet5")
        >>> group = {g.name: g for g in find_groups(model, torch.randn(1, 1, 28, 28))}["conv1"]
        >>> before = model.conv1.weight.clone()
        >>> saved = zero_channels(model, group, [0, 3])
        >>> float(model.conv1.weight.detach()[[0, 3]].abs().sum())
        0.0
        >>> restore(saved); torch.equal(model.conv1.weight, before)
        True
    """
    saved = []
    if len(root_idxs) == 0:
        return saved
    modules = dict(model.named_modules())
    for name, local in group.producers.items():
        idx = torch.tensor([local[int(r)] for r in root_idxs], dtype=torch.long)
        mod = modules[name]
        for p in _producer_params(mod):
            dim = 1 if isinstance(mod, nn.modules.conv._ConvTransposeNd) and p.dim() > 1 else 0
            if isinstance(mod, (nn.LayerNorm, nn.GroupNorm)):
                continue  # normalised over channels: zeroing would not silence one channel
            i = idx.to(p.device)
            saved.append((p, dim, i, p.index_select(dim, i).clone()))
            p.index_fill_(dim, i, 0.0)
    return saved


@torch.no_grad()
def restore(saved: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]]) -> None:
    """Undo ``zero_channels``."""
    for p, dim, idx, values in reversed(saved):
        p.index_copy_(dim, idx, values)


@contextmanager
def channels_masked(
    model: nn.Module, groups: Sequence[ChannelGroup], root_plan: Mapping[str, Sequence[int]]
) -> Iterator[nn.Module]:
    """Context in which the channels of ``root_plan`` (group name -> root indices) are zero.

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.prune.structured.groups import find_groups
        >>> model = build_model("lenet5")
        >>> groups = find_groups(model, torch.randn(1, 1, 28, 28))
        >>> with channels_masked(model, groups, {"conv1": [0]}):
        ...     print(float(model.conv1.weight[0].detach().abs().sum()))
        0.0
        >>> bool(model.conv1.weight[0].abs().sum() > 0)  # restored on exit
        True
    """
    by_name = {g.name: g for g in groups}
    saved = []
    try:
        for gname, idxs in root_plan.items():
            saved += zero_channels(model, by_name[gname], idxs)
        yield model
    finally:
        restore(saved)
