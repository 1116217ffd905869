"""Gradual channel fading: soft removal during fine-tuning, then exact physical removal.

One-shot removal takes the selected channels away at once and leaves the fine-tuning to
repair the damage. Fading instead trains the *unpruned* model while the selected channels'
outputs are multiplied by ``m(step) = max(0, 1 - (step + 1) / fade_steps)``: the rest of the
network learns to do without them while they still contribute, and from ``fade_steps`` on
they are exactly zero. Removing them afterwards then changes nothing: the physically pruned
model computes what the faded model computed (the same argument as ``masking``).

The multiplier is applied by forward hooks on every producer of a channel group (its convs,
linears and norms). A norm right after a conv undoes the conv's scaling in training mode
and then applies its own, so a channel is scaled by ``m`` (not ``m**2``) wherever it flows,
residual adds included; at ``m = 0`` every producer's output is exactly zero.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.prune.structured.groups import ChannelGroup
from nncompress.train import TrainConfig
from nncompress.train.callbacks import Callback
from nncompress.train.loop import step_counts

log = logging.getLogger(__name__)
_SKIPPED = (nn.LayerNorm, nn.GroupNorm)  # normalised over channels: a per-channel scale is not a fade


def fade_multiplier(step: int, fade_steps: int) -> float:
    """The factor on faded channels at global step ``step`` (0-based): linear from 1 to 0,
    reaching 0 at step ``fade_steps - 1`` and staying there."""
    if fade_steps < 1:
        raise ConfigError(f"fade_steps must be >= 1, got {fade_steps}")
    return max(0.0, 1.0 - (step + 1) / fade_steps)


def fade_steps_for(fade_epochs: float, cfg: TrainConfig, n_samples: int) -> int:
    """Optimizer steps of ``fade_epochs`` epochs under ``cfg`` (at least 1, at most the
    steps ``fit`` will run, so the channels reach zero before the fine-tuning ends)."""
    per_epoch, total = step_counts(cfg, n_samples)
    return max(1, min(total, int(round(fade_epochs * per_epoch))))


def producer_indices(
    model: nn.Module, groups: Sequence[ChannelGroup], root_plan: Mapping[str, Sequence[int]]
) -> dict[str, list[int]]:
    """Module name -> local output indices to fade, for every producer of the planned groups."""
    by_name = {g.name: g for g in groups}
    modules = dict(model.named_modules())
    out: dict[str, list[int]] = {}
    for gname, idxs in root_plan.items():
        if gname not in by_name:
            raise ConfigError(f"unknown channel group {gname!r}; groups: {sorted(by_name)}")
        for mname, local in by_name[gname].producers.items():
            if isinstance(modules[mname], _SKIPPED):
                continue
            out.setdefault(mname, []).extend(local[int(r)] for r in idxs)
    return {k: sorted(set(v)) for k, v in out.items() if v}


class ChannelFade(Callback):
    """Callback of ``fit`` that fades the channels of ``root_plan`` to zero over
    ``fade_steps`` optimizer steps (see the module docstring). Hooks are attached at
    ``on_fit_begin`` and taken off at ``on_fit_end``; ``multiplier`` is the current factor.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> from nncompress.prune.structured.groups import find_groups
        >>> model = build_model("lenet5")
        >>> groups = find_groups(model, torch.randn(1, 1, 28, 28))
        >>> fade = ChannelFade(model, groups, {"conv1": [0, 3]}, fade_steps=4)
        >>> _ = fit(model, data, TrainConfig(epochs=1, batch_size=8), callbacks=[fade])  # 8 steps
        >>> fade.multiplier  # faded out: the channels can now be removed without a jump
        0.0
    """

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup],
                 root_plan: Mapping[str, Sequence[int]], fade_steps: int):
        if fade_steps < 1:
            raise ConfigError(f"fade_steps must be >= 1, got {fade_steps}")
        self.model = model
        self.fade_steps = fade_steps
        self.indices = producer_indices(model, groups, root_plan)
        self.multiplier = 1.0
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, idx: torch.Tensor, dim: int):
        def scale(_mod: nn.Module, _inp, out: torch.Tensor) -> torch.Tensor:
            if self.multiplier == 1.0:
                return out
            w = torch.ones(out.shape[dim], dtype=out.dtype, device=out.device)
            w[idx.to(out.device)] = self.multiplier
            shape = [1] * out.dim()
            shape[dim] = -1
            return out * w.view(shape)
        return scale

    def attach(self) -> None:
        """Register the forward hooks (idempotent)."""
        if self._handles:
            return
        modules = dict(self.model.named_modules())
        for name, idx in self.indices.items():
            mod = modules[name]
            dim = -1 if isinstance(mod, nn.Linear) else 1
            self._handles.append(mod.register_forward_hook(self._hook(torch.tensor(idx), dim)))

    def detach(self) -> None:
        """Remove the forward hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def on_fit_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.attach()

    def on_batch_begin(self, step: int) -> None:
        self.multiplier = fade_multiplier(step, self.fade_steps)

    def on_fit_end(self, model: nn.Module) -> None:
        if self.multiplier != 0.0:
            log.warning("fit ended with faded channels at %.3f, not 0: removing them is not exact",
                        self.multiplier)
        self.detach()
