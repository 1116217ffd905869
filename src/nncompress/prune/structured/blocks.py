"""Residual block removal (depth pruning): drop a block's branch, keep its shortcut.

A residual block computes ``relu(branch(x) + shortcut(x))``. Removing the block replaces
it by :class:`ResidualShortcut`, ``relu(affine(shortcut(x)))``, where ``affine`` is a
per-channel scale and shift (:class:`ChannelAffine`) started at scale 1 and shift = the
branch's mean output per channel over a data sample (mean replacement: the removed branch
is replaced by its expectation, not by zero). Every conv of the branch goes, so the whole
block's MACs and time go with it, in units that need no channel rounding.

Which blocks: :func:`block_damage` removes each block alone and measures the loss on a
held-out sample (the oracle criterion S9, at block level); :func:`least_damaging_blocks`
takes the lowest. A block qualifies when it has a ``shortcut`` module and a ``branch(x)``
method and its forward is ``relu(branch(x) + shortcut(x))`` (nncompress's ``BasicBlock``
and ``Bottleneck``). The ``.nnc`` format records the removed blocks' names, and
``nncompress.load`` rebuilds them.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.prune.structured.scoring import run_hooked

log = logging.getLogger(__name__)


class ChannelAffine(nn.BatchNorm2d):
    """``weight * x + bias`` per channel: a ``BatchNorm2d`` that never normalises (mean 0,
    variance 1, eps 0, in training too), so that Torch-Pruning's graph, the cost model and
    the file format treat it as the BatchNorm it is, and inference runs it as one cheap
    elementwise kernel (a depthwise 1x1 conv doing the same is many times slower in eager
    PyTorch).

    Example:
        >>> a = ChannelAffine(2)
        >>> a.train()(torch.ones(3, 2, 1, 1)).flatten().tolist()  # no batch statistics
        [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    """

    def __init__(self, channels: int):
        super().__init__(channels, eps=0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                        False, 0.0, self.eps)


class ResidualShortcut(nn.Module):
    """What is left of a residual block without its branch: ``relu(affine(shortcut(x)))``.

    Example:
        >>> m = ResidualShortcut(nn.Identity(), 4)
        >>> bool(torch.equal(m(torch.ones(1, 4, 2, 2)), torch.ones(1, 4, 2, 2)))
        True
    """

    def __init__(self, shortcut: nn.Module, channels: int):
        super().__init__()
        if channels < 1:
            raise ConfigError(f"channels={channels} not allowed; a residual output has >= 1 channel")
        self.shortcut = shortcut
        self.affine = ChannelAffine(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.affine(self.shortcut(x)))  # (B, C, H/s, W/s)


def is_residual_block(module: nn.Module) -> bool:
    """True for a block that can be removed: a ``shortcut`` module and a ``branch`` method."""
    return isinstance(getattr(module, "shortcut", None), nn.Module) and callable(getattr(module, "branch", None))


def residual_blocks(model: nn.Module) -> list[str]:
    """Names of the removable residual blocks of ``model``, in module order."""
    return [name for name, mod in model.named_modules() if name and is_residual_block(mod)]


def removed_blocks(model: nn.Module) -> list[str]:
    """Names of the blocks already replaced by :class:`ResidualShortcut`."""
    return [name for name, mod in model.named_modules() if isinstance(mod, ResidualShortcut)]


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _check_names(model: nn.Module, names: Iterable[str]) -> list[str]:
    names = list(names)
    allowed = residual_blocks(model)
    bad = [n for n in names if n not in allowed]
    if bad:
        raise ConfigError(f"blocks {bad} are not removable residual blocks of the model; allowed: {allowed}")
    if len(set(names)) != len(names):
        raise ConfigError(f"blocks {names} name a block twice")
    return names


@torch.no_grad()
def _branch_means(model: nn.Module, names: Sequence[str], x: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """Mean output per channel of each named block's branch over ``x`` (eval mode)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name in names:
        block = model.get_submodule(name)

        def hook(mod: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor, name: str = name) -> None:
            out = mod.branch(inputs[0])  # (B, C, H, W)
            sums[name] = sums.get(name, 0) + out.sum(dim=(0, 2, 3)).double()
            counts[name] = counts.get(name, 0) + out.numel() // out.shape[1]

        hooks.append(block.register_forward_hook(hook))
    run_hooked(model, x, batch_size, hooks)
    return {n: (sums[n] / counts[n]).float() for n in names}


def remove_blocks(model: nn.Module, names: Iterable[str], x: torch.Tensor, batch_size: int = 256) -> nn.Module:
    """Replace each named residual block by a :class:`ResidualShortcut` (in place) whose
    shift is the block's mean branch output per channel over the sample ``x``.

    Raises ``ConfigError`` for a name that is not a removable block. Returns ``model``.

    Example:
        >>> remove_blocks(model, ["layers.1"], x_sample)  # doctest: +SKIP
    """
    names = _check_names(model, names)
    if not names:
        return model
    if len(x) == 0:
        raise ConfigError("remove_blocks needs a non-empty data sample for the branch means")
    means = _branch_means(model, names, x, batch_size)
    for name in names:
        block = model.get_submodule(name)
        mean = means[name]
        new = ResidualShortcut(block.shortcut, mean.numel())
        with torch.no_grad():
            new.affine.bias.copy_(mean)
        _set_module(model, name, new.to(mean.device))
        log.info("removed residual block %s", name)
    return model


def restore_block_shells(model: nn.Module, names: Iterable[str]) -> None:
    """Give a freshly built model the structure of one whose blocks ``names`` were removed
    (used by ``nncompress.load`` before the stored tensors are copied in)."""
    for name in _check_names(model, names):
        block = model.get_submodule(name)
        norms = [m.num_features for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
        channels = norms[-1] if norms else 1  # the stored tensors resize the shell anyway
        _set_module(model, name, ResidualShortcut(block.shortcut, channels))


@torch.no_grad()
def block_damage(model: nn.Module, x: torch.Tensor, y: torch.Tensor, blocks: Sequence[str] | None = None,
                 batch_size: int = 256) -> dict[str, float]:
    """Cross-entropy on ``(x, y)`` with each block removed alone (mean replacement over
    ``x``), minus the loss of ``model`` as it is: the oracle criterion at block level.

    Example:
        >>> dmg = block_damage(model, x_held, y_held)  # doctest: +SKIP
        >>> min(dmg, key=dmg.get)  # doctest: +SKIP
        'layers.5'
    """
    names = _check_names(model, residual_blocks(model) if blocks is None else blocks)
    if len(x) == 0 or len(x) != len(y):
        raise ConfigError(f"block_damage needs a labelled sample, got {len(x)} inputs and {len(y)} labels")

    def loss_of(m: nn.Module) -> float:
        m.eval()
        total = sum(float(nn.functional.cross_entropy(m(x[i:i + batch_size]), y[i:i + batch_size],
                                                      reduction="sum"))
                    for i in range(0, len(x), batch_size))
        return total / len(x)

    was_training = model.training
    try:
        base = loss_of(model)
        means = _branch_means(model, names, x, batch_size)
        out = {}
        for name in names:
            trial = copy.deepcopy(model)
            shell = ResidualShortcut(trial.get_submodule(name).shortcut, means[name].numel())
            shell.affine.bias.copy_(means[name])
            _set_module(trial, name, shell)
            out[name] = loss_of(trial) - base
    finally:
        model.train(was_training)
    return out


def least_damaging_blocks(damage: dict[str, float], count: int) -> list[str]:
    """The ``count`` blocks of lowest damage (ties: module order).

    Example:
        >>> least_damaging_blocks({"a": 0.3, "b": 0.1, "c": 0.2}, 2)
        ['b', 'c']
    """
    if not 0 <= count <= len(damage):
        raise ConfigError(f"blocks={count} out of range; allowed: 0..{len(damage)} (the removable blocks)")
    order = sorted(damage, key=lambda n: damage[n])  # stable: module order on ties
    return order[:count]
