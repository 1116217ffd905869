"""Binary masks that keep pruned weights exactly zero through any later training.

Masks live outside the model (a plain ``dict`` of bool tensors keyed by parameter name),
so the model's state dict keeps its usual keys and loads into an unpruned copy.
``MaskCallback`` enforces them during ``fit``: gradients of pruned entries are zeroed after
backward, weights re-masked after every optimizer step (momentum, weight decay and Adam
would otherwise move them), and the optimizer's per-parameter state is masked too.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import nn

from nncompress.train.callbacks import Callback


class Masks(Mapping[str, torch.Tensor]):
    """Parameter name -> bool mask (True = kept)."""

    def __init__(self, masks: Mapping[str, torch.Tensor]):
        self._masks = {k: v.to(torch.bool) for k, v in masks.items()}

    def __getitem__(self, key: str) -> torch.Tensor:
        return self._masks[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    @classmethod
    def from_zeros(cls, model: nn.Module, names: list[str] | None = None) -> Masks:
        """Masks that keep exactly the currently nonzero entries of the named weights."""
        params = dict(model.named_parameters())
        names = names if names is not None else [n for n in params if n.endswith("weight")]
        return cls({n: params[n].detach() != 0 for n in names})

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the pruned entries of the model's weights in place."""
        params = dict(model.named_parameters())
        for name, mask in self._masks.items():
            params[name].mul_(mask.to(params[name].device))

    def combine(self, other: Mapping[str, torch.Tensor]) -> Masks:
        """Element-wise AND with another mask set (names missing on one side are kept)."""
        out = dict(self._masks)
        for k, v in other.items():
            out[k] = out[k] & v.bool() if k in out else v.bool()
        return Masks(out)

    def kept(self) -> dict[str, int]:
        """Number of kept entries per tensor."""
        return {k: int(v.sum()) for k, v in self._masks.items()}

    def sparsity(self) -> dict[str, float]:
        """Fraction of pruned entries per tensor."""
        return {k: 1.0 - int(v.sum()) / v.numel() for k, v in self._masks.items()}

    def total_sparsity(self) -> float:
        """Fraction of pruned entries over all masked tensors."""
        total = sum(v.numel() for v in self._masks.values())
        kept = sum(self.kept().values())
        return 1.0 - kept / max(total, 1)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Plain dict of bool tensors (checkpoint-safe)."""
        return dict(self._masks)


def layer_sparsity(model: nn.Module, names: list[str] | None = None) -> dict[str, float]:
    """Counted fraction of exact zeros per named weight (what reports must show)."""
    params = dict(model.named_parameters())
    names = names if names is not None else [n for n in params if n.endswith("weight")]
    return {n: int((params[n] == 0).sum()) / params[n].numel() for n in names}


class MaskCallback(Callback):
    """Keeps masked weights exactly zero during ``fit``.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.prune.magnitude import magnitude_prune
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> model = build_model("lenet300")
        >>> masks = magnitude_prune(model, sparsity=0.9)
        >>> _ = fit(model, data, TrainConfig(epochs=1), callbacks=[MaskCallback(masks)])
        >>> bool((model.fc1.weight[~masks["fc1.weight"]] == 0).all())  # still exactly zero
        True
    """

    def __init__(self, masks: Masks):
        self.masks = masks
        self._params: dict[str, nn.Parameter] = {}

    def on_fit_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        all_params = dict(model.named_parameters())
        self._params = {n: all_params[n] for n in self.masks}
        self.masks.apply(model)
        self._mask_optimizer_state(optimizer)

    def after_backward(self, model: nn.Module) -> None:
        for name, p in self._params.items():
            if p.grad is not None:
                p.grad.mul_(self.masks[name])

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for name, p in self._params.items():
            p.mul_(self.masks[name])
        self._mask_optimizer_state(optimizer)

    @torch.no_grad()
    def _mask_optimizer_state(self, optimizer: torch.optim.Optimizer) -> None:
        for name, p in self._params.items():
            for value in optimizer.state.get(p, {}).values():
                if torch.is_tensor(value) and value.shape == p.shape:
                    value.mul_(self.masks[name])

    def state_dict(self):
        return {"masks": self.masks.state_dict()}

    def load_state_dict(self, state):
        if "masks" in state:
            self.masks = Masks(state["masks"])
