"""S11 Structured Sparsity Learning (Wen et al. 2016): group lasso, then remove zero groups.

Groups of a conv weight W (O, C, kh, kw) — for a Linear (O, I) read C = I, kh = kw = 1:

* ``filter``: W[o, :, :, :] (one per output channel) -> norms (O,)
* ``channel``: W[:, c, :, :] (one per input channel) -> norms (C,)
* ``shape``: W[:, c, i, j] (one per filter-shape position) -> norms (C, kh, kw)

The penalty ``lambda * sum_g ||w_g||_2`` is added to the loss in ``before_backward``
(:class:`GroupLasso`; the norm's gradient at an exactly-zero group is 0). After training,
:func:`zero_small_groups` sets every group whose norm is below ``eps * max norm of its
kind in that layer`` to exactly 0, and :func:`ssl_remove` physically removes the zero
filters (and the filters feeding zero input channels) with
:func:`nncompress.prune.structured.removal.remove_channels`. Zero ``shape`` groups cannot
be removed physically in a dense conv and stay as sparse weights (a mask).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from nncompress.checks import check_float
from nncompress.errors import ConfigError
from nncompress.prune.mask import Masks
from nncompress.prune.targets import prunable_weights
from nncompress.train.callbacks import Callback

log = logging.getLogger(__name__)
GROUP_KINDS = ("filter", "channel", "shape")


def _as4d(weight: torch.Tensor) -> torch.Tensor:
    if weight.dim() == 2:
        return weight[:, :, None, None]  # (O, I, 1, 1)
    if weight.dim() == 4:
        return weight
    raise ConfigError(f"SSL groups need a Linear (2-D) or Conv2d (4-D) weight, got shape {tuple(weight.shape)}")


def group_norms(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """L2 norm of every group of ``kind`` (shapes in the module docstring).

    Example:
        >>> group_norms(torch.tensor([[3.0, 0.0], [4.0, 1.0]]), "channel").tolist()
        [5.0, 1.0]
    """
    w = _as4d(weight)  # (O, C, kh, kw)
    if kind == "filter":
        return torch.linalg.vector_norm(w, dim=(1, 2, 3))
    if kind == "channel":
        return torch.linalg.vector_norm(w, dim=(0, 2, 3))
    if kind == "shape":
        norms = torch.linalg.vector_norm(w, dim=0)  # (C, kh, kw)
        return norms if weight.dim() == 4 else norms[:, 0, 0]
    raise ConfigError(f"group kind {kind!r} not allowed; use one of {GROUP_KINDS}")


def group_lasso(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """``sum_g ||w_g||_2`` over the groups of ``kind``.

    Example:
        >>> round(float(group_lasso(torch.tensor([[3.0, 0.0], [4.0, 1.0]]), "filter")), 4)  # 3 + sqrt(17)
        7.1231
    """
    return group_norms(weight, kind).sum()


def _kinds_for(kinds: Sequence[str] | Mapping[str, float]) -> dict[str, float]:
    out = dict(kinds) if isinstance(kinds, Mapping) else dict.fromkeys(kinds, 1.0)
    bad = set(out) - set(GROUP_KINDS)
    if bad:
        raise ConfigError(f"group kinds {sorted(bad)} not allowed; use {GROUP_KINDS}")
    return out


class GroupLasso(Callback):
    """Adds ``strength * sum_kind w_kind * sum_layers sum_g ||w_g||_2`` to the loss.

    ``kinds`` is a list (all weighted 1) or a dict kind -> relative weight.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> from nncompress.prune.targets import prunable_weights
        >>> model = build_model("lenet5")
        >>> cb = GroupLasso(prunable_weights(model), ["filter", "channel"], strength=1e-4)
        >>> _ = fit(model, data, TrainConfig(epochs=1), callbacks=[cb])
        >>> float(cb.penalty().detach()) > 0
        True
    """

    def __init__(self, params: Mapping[str, nn.Parameter], kinds: Sequence[str] | Mapping[str, float] = ("filter",),
                 strength: float = 1e-4):
        check_float(strength, "group lasso strength", 0)
        self.params, self.kinds, self.strength = dict(params), _kinds_for(kinds), strength

    def penalty(self) -> torch.Tensor:
        """The penalty term (a scalar tensor)."""
        terms = [wk * group_lasso(p, kind) for p in self.params.values() for kind, wk in self.kinds.items()]
        return self.strength * torch.stack(terms).sum()

    def before_backward(self, loss, model):
        return loss + self.penalty() if self.strength > 0 else loss


@torch.no_grad()
def zero_small_groups(model: nn.Module, kinds: Sequence[str] = ("filter", "channel"), eps: float = 1e-2,
                      include=None, exclude=()) -> dict[str, dict[str, list[int]]]:
    """Zero every group whose norm < ``eps * max`` norm of its kind in its layer (a zeroed
    filter's bias too, so that removing it is exact when no BatchNorm follows).

    Returns ``{param name: {kind: [flat group indices zeroed]}}``.
    """
    out: dict[str, dict[str, list[int]]] = {}
    for name, p in prunable_weights(model, include, exclude, types=(nn.Linear, nn.Conv2d)).items():
        w = _as4d(p.data)  # view (O, C, kh, kw)
        out[name] = {}
        for kind in kinds:
            norms = group_norms(p.data, kind)
            small = (norms < eps * norms.max()).reshape(-1)
            idx = small.nonzero().flatten().tolist()
            out[name][kind] = idx
            if kind == "filter":
                w[small] = 0
                bias = getattr(model.get_submodule(name.rsplit(".", 1)[0]), "bias", None)
                if bias is not None:
                    bias[small] = 0  # a zero filter with a bias would be a constant channel
            elif kind == "channel":
                w[:, small] = 0
            else:
                w.mul_((~small).view(1, *w.shape[1:]).to(w.dtype))
    return out


def zero_filter_plan(model: nn.Module, example_inputs: torch.Tensor) -> dict[str, list[int]]:
    """``{module: output channels to remove}``: the all-zero filters of every prunable
    channel group, plus the channels every consumer of the group ignores (all-zero input
    columns). A group whose root feeds the model output is skipped."""
    from nncompress.prune.structured.groups import find_groups

    modules = dict(model.named_modules())
    plan: dict[str, list[int]] = {}
    for g in find_groups(model, example_inputs):
        if g.coupled:
            continue
        root = modules[g.name].weight.detach()
        dead = _as4d(root).flatten(1).abs().sum(1) == 0  # (channels,) zero filters
        for cname, per_channel in g.consumers.items():
            cw = modules[cname].weight.detach()  # (O, I, ...) input columns on dim 1
            for c, cols in enumerate(per_channel):
                if bool((cw[:, cols] == 0).all()):
                    dead[c] = True
        idx = dead.nonzero().flatten().tolist()
        if len(idx) == g.channels:
            idx = idx[1:]  # keep one channel so the layer survives
        if idx:
            plan[g.name] = idx
    return plan


def ssl_remove(model: nn.Module, example_inputs: torch.Tensor, optimizer=None) -> tuple[nn.Module, dict[str, list[int]]]:
    """Physically remove zero filters / ignored channels; returns (model, plan used).

    Exact for channels no consumer reads; for zero filters exact when their bias is zero
    too (as :func:`zero_small_groups` leaves them) and no BatchNorm follows (a BatchNorm
    turns a zero channel into a constant one).

    Example:
        >>> from nncompress.models import build_model
        >>> model = build_model("lenet5")
        >>> with torch.no_grad():  # five filters of conv2 driven to zero, as the group lasso does
        ...     model.conv2.weight[:5] = 0; model.conv2.bias[:5] = 0
        >>> zero_small_groups(model, eps=1e-2)["conv2.weight"]
        {'filter': [0, 1, 2, 3, 4], 'channel': []}
        >>> model, plan = ssl_remove(model, torch.randn(1, 1, 28, 28))
        >>> plan, model.conv2.out_channels
        ({'conv2': [0, 1, 2, 3, 4]}, 45)
    """
    from nncompress.prune.structured.removal import remove_channels

    plan = zero_filter_plan(model, example_inputs)
    remove_channels(model, plan, example_inputs, optimizer)
    log.info("SSL removed %s", {k: len(v) for k, v in plan.items()})
    return model, plan


def nonzero_masks(model: nn.Module, include: Iterable[str] | None = None, exclude=()) -> Masks:
    """Masks of the currently nonzero entries of the prunable weights."""
    return Masks({n: p.detach() != 0 for n, p in prunable_weights(model, include, exclude).items()})
