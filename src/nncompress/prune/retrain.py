"""P2 helpers for the train-prune-retrain loop: L1/L2 regularisation, the dropout
adjustment rule, and freezing conv or FC layers while the others retrain."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

from nncompress.checks import check_choice, check_float
from nncompress.errors import ConfigError
from nncompress.prune.targets import PRUNABLE_TYPES, is_conv
from nncompress.train.callbacks import Callback

REGULARIZERS = ("l1", "l2")
FREEZE_KINDS = ("conv", "fc")


class Regularizer(Callback):
    """Adds ``strength * sum |w|`` (l1) or ``strength * sum w^2`` (l2) over ``params``.

    Han et al. (2015) compare both: L1 before retraining, L2 for the retraining itself.
    """

    def __init__(self, params: Mapping[str, nn.Parameter], kind: str = "l2", strength: float = 1e-4):
        check_choice(kind, REGULARIZERS, "regularizer")
        check_float(strength, "regularizer strength", 0)
        self.params, self.kind, self.strength = dict(params), kind, strength

    def penalty(self) -> torch.Tensor:
        """The penalty term (a scalar tensor)."""
        terms = [(p.abs().sum() if self.kind == "l1" else p.pow(2).sum()) for p in self.params.values()]
        return self.strength * torch.stack(terms).sum()

    def before_backward(self, loss, model):
        return loss + self.penalty() if self.strength > 0 else loss


def adjusted_dropout(p_original: float, connections_original: int, connections_now: int) -> float:
    """Dropout adjustment of Han et al. (2015): ``D_r = D_o * sqrt(C_ir / C_io)``.

    Example:
        >>> adjusted_dropout(0.5, 100, 25)
        0.25
    """
    if connections_original <= 0:
        raise ConfigError(f"original connection count must be > 0, got {connections_original}")
    return p_original * math.sqrt(connections_now / connections_original)


def dropout_consumers(model: nn.Module, example: torch.Tensor) -> dict[str, str]:
    """Map each Dropout module to the weight layer that runs next (execution order)."""
    order: list[tuple[str, nn.Module]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, inp, n=n: order.append((n, mod)))
             for n, m in model.named_modules() if isinstance(m, (nn.Dropout, *PRUNABLE_TYPES))]
    try:
        with torch.no_grad():
            model.eval()
            model(example)
    finally:
        for h in hooks:
            h.remove()
    out: dict[str, str] = {}
    for i, (name, mod) in enumerate(order):
        if isinstance(mod, nn.Dropout):
            nxt = next((n for n, m in order[i + 1:] if not isinstance(m, nn.Dropout)), None)
            if nxt is not None:
                out[name] = nxt
    return out


def adjust_dropouts(model: nn.Module, example: torch.Tensor, original_p: Mapping[str, float],
                    original_counts: Mapping[str, int]) -> dict[str, float]:
    """Set each Dropout's p by the rule, from its consumer layer's nonzero count now vs
    ``original_counts`` (layer name -> connections before pruning). Returns the new p's."""
    new = {}
    for drop_name, layer in dropout_consumers(model, example).items():
        w = model.get_submodule(layer).weight
        p = adjusted_dropout(original_p[drop_name], original_counts[layer], int((w != 0).sum()))
        model.get_submodule(drop_name).p = p
        new[drop_name] = p
    return new


@contextmanager
def frozen(model: nn.Module, kind: str) -> Iterator[None]:
    """Freeze the parameters of conv (``kind='conv'``) or fully connected (``'fc'``)
    layers inside the block, restoring ``requires_grad`` afterwards."""
    check_choice(kind, FREEZE_KINDS, "freeze")
    touched = []
    for mod in model.modules():
        hit = is_conv(mod) if kind == "conv" else isinstance(mod, nn.Linear)
        if hit:
            for p in mod.parameters(recurse=False):
                touched.append((p, p.requires_grad))
                p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in touched:
            p.requires_grad_(flag)
