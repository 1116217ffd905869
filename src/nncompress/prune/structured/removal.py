"""S14: physical removal of output channels, keeping coupled layers and the optimizer consistent.

``remove_channels`` uses Torch-Pruning's ``DependencyGraph`` to find every layer coupled to
the named channels (BatchNorm, residual adds, grouped/depthwise convs, concat, flatten into a
Linear) and slices them all, in place. When an optimizer is given, its parameter list and
per-parameter state (SGD momentum buffers, Adam moments) are sliced the same way, so training
goes on exactly as if the removed channels had never existed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from nncompress.errors import ConfigError, NNCompressError
from nncompress.prune.structured.groups import build_graph, groups_from_graph, to_root_plan

log = logging.getLogger(__name__)


def _params_of(module: nn.Module) -> dict[str, nn.Parameter]:
    return dict(module.named_parameters(recurse=False))


def _kept_index(old: torch.Tensor, new: torch.Tensor, removed: Sequence[int]) -> tuple[int, torch.Tensor] | None:
    """The (dim, kept indices) with ``new == old.index_select(dim, kept)``, or None."""
    dims = [d for d in range(old.dim()) if old.shape[d] != new.shape[d]]
    if len(dims) != 1:
        return None
    d = dims[0]
    rm = set(int(i) for i in removed)
    keep = torch.tensor([i for i in range(old.shape[d]) if i not in rm], dtype=torch.long)
    if keep.numel() != new.shape[d]:
        return None
    if not torch.equal(old.detach().index_select(d, keep.to(old.device)), new.detach()):
        return None
    return d, keep


def _migrate_optimizer(
    optimizer: torch.optim.Optimizer,
    swaps: list[tuple[nn.Parameter, nn.Parameter, Sequence[int]]],
) -> None:
    """Replace old parameters by new ones in ``optimizer`` and slice their state."""
    for old, new, removed in swaps:
        found = False
        for group in optimizer.param_groups:
            for k, p in enumerate(group["params"]):
                if p is old:
                    group["params"][k] = new
                    found = True
        if not found:
            continue
        state = optimizer.state.pop(old, None)
        if not state:
            continue
        kept = _kept_index(old, new, removed)
        new_state = {}
        for key, value in state.items():
            if torch.is_tensor(value) and value.shape == old.shape:
                if kept is None:
                    raise NNCompressError(
                        f"cannot map optimizer state {key!r} of a {tuple(old.shape)} parameter"
                        f" onto its pruned shape {tuple(new.shape)}"
                    )
                d, keep = kept
                new_state[key] = value.index_select(d, keep.to(value.device)).clone()
            else:
                new_state[key] = value
        optimizer.state[new] = new_state


def remove_channels(
    model: nn.Module,
    plan: dict[str, list[int]],
    example_inputs: torch.Tensor | Sequence,
    optimizer: torch.optim.Optimizer | None = None,
) -> nn.Module:
    """Physically remove output channels, in place, with every coupled layer.

    ``plan`` maps a Conv/Linear module name to the indices of its *output* channels to
    remove (indices in that module's current numbering). Coupled entries (two convs whose
    outputs are added) are merged by union. Raises ``ConfigError`` for unknown modules,
    out-of-range indices, a layer whose output is the model's output, or a plan that would
    leave a layer with zero channels. Returns ``model`` (modified in place).

    Example:
        >>> from nncompress.models import build_model
        >>> m = build_model("lenet5")
        >>> remove_channels(m, {"conv1": [0, 1]}, torch.randn(1, 1, 28, 28)).conv1.out_channels
        18
    """
    if not isinstance(plan, dict):
        raise ConfigError(f"plan must be a dict of module name -> indices, got {type(plan).__name__}")
    plan = {k: list(v) for k, v in plan.items() if len(v) > 0}
    if not plan:
        return model
    dg = build_graph(model, example_inputs)
    groups = groups_from_graph(model, dg)
    root_plan = to_root_plan(groups, plan)
    modules = dict(model.named_modules())
    for gname, root_idxs in root_plan.items():
        root = modules[gname]
        pruner = dg.get_pruner_of_module(root)
        group = dg.get_pruning_group(root, pruner.prune_out_channels, root_idxs)
        if not dg.check_pruning_group(group):
            raise ConfigError(f"removing {len(root_idxs)} channels of {gname!r} empties a coupled layer")
        before: list[tuple[nn.Module, dict[str, nn.Parameter], list[int]]] = []
        for item in group:
            mod = item.dep.target.module
            if isinstance(mod, nn.Module):
                before.append((mod, _params_of(mod), list(item.idxs)))
        group.prune()
        swaps = []
        for mod, old_params, removed in before:
            for pname, old in old_params.items():
                new = getattr(mod, pname)
                if new is not old:
                    swaps.append((old, new, removed))
        if optimizer is not None:
            _migrate_optimizer(optimizer, swaps)
        log.info("removed %d channels of group %s", len(root_idxs), gname)
    return model
