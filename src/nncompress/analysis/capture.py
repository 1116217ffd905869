"""Record what named layers receive and return during one eval-mode forward pass."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


@torch.no_grad()
def capture_io(model: nn.Module, names: Sequence[str], x: torch.Tensor
               ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{name: (first input, output)}`` of the named modules for input ``x``; the model
    runs in eval mode and its training flag is restored afterwards.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 3))
        >>> capture_io(m, ["0"], torch.ones(1, 2))["0"][1].shape
        torch.Size([1, 3])
    """
    modules = dict(model.named_modules())
    got: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = [modules[n].register_forward_hook(
        lambda m, i, o, n=n: got.__setitem__(n, (i[0].detach(), o.detach()))) for n in names]
    was = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return got
