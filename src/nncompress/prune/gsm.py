"""S12 Global Sparse Momentum SGD (Ding et al., NeurIPS 2019).

Update of every prunable weight w (Ding et al. eq. 5), with B the 0/1 mask of the Q
weights of largest first-order Taylor score ``|w * dL/dw|`` over *all* prunable layers::

    z <- beta * z + eta * w + B(w) * dL/dw
    w <- w - lr * z

It is exactly ``torch.optim.SGD(momentum=beta, weight_decay=eta)`` applied after the loss
gradient of the non-selected weights has been zeroed, so GSM is a callback
(:class:`GSMCallback`, in ``after_backward``) on top of the standard SGD step, not a new
optimizer: all weights keep momentum and weight decay, the ones outside the top-Q only
decay. At the end :meth:`GSMCallback.finalize` keeps the Q weights of largest magnitude
and zeroes the rest, so exactly Q weights are nonzero (the requested compression ratio
``total / Q`` is met exactly) with no retraining.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from nncompress.checks import check_float, check_fraction, check_int
from nncompress.errors import ConfigError
from nncompress.prune.mask import Masks
from nncompress.prune.targets import prunable_weights
from nncompress.train.callbacks import Callback

log = logging.getLogger(__name__)


def topq_masks(scores: Sequence[torch.Tensor], q: int) -> list[torch.Tensor]:
    """Masks (one per tensor) selecting exactly the ``q`` largest scores over all tensors.

    Example:
        >>> [m.tolist() for m in topq_masks([torch.tensor([3., 0.]), torch.tensor([1., 2.])], 2)]
        [[True, False], [False, True]]
    """
    sizes = [s.numel() for s in scores]
    total = sum(sizes)
    check_int(q, "q", 0, total)
    flat = torch.cat([s.detach().reshape(-1) for s in scores])
    keep = torch.zeros(total, dtype=torch.bool, device=flat.device)
    if q > 0:
        keep[torch.topk(flat, q, sorted=False).indices] = True
    return [m.view_as(s) for m, s in zip(torch.split(keep, sizes), scores)]


def gsm_q(total: int, *, q: int | None = None, ratio: float | None = None,
          sparsity: float | None = None) -> int:
    """Number of weights to keep from exactly one of ``q``, ``ratio`` (total/Q) or ``sparsity``.

    Example:
        >>> gsm_q(1000, ratio=40)
        25
    """
    given = [v is not None for v in (q, ratio, sparsity)]
    if sum(given) != 1:
        raise ConfigError("give exactly one of q, ratio, sparsity")
    if q is not None:
        out = int(q)
    elif ratio is not None:
        out = int(round(total / check_float(ratio, "ratio", 1)))
    else:
        out = total - int(round(check_fraction(sparsity, "sparsity", zero=True, one=False) * total))
    return check_int(out, "q", 1, total)


class GSMCallback(Callback):
    """Global Sparse Momentum: only the top-Q ``|w * g|`` weights receive the loss gradient.

    Use with ``TrainConfig(optimizer='sgd', momentum=beta > 0, weight_decay=eta > 0)``.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> model = build_model("lenet300")
        >>> gsm = GSMCallback(model, ratio=60)
        >>> _ = fit(model, data, TrainConfig(momentum=0.98, weight_decay=5e-4), callbacks=[gsm])
        >>> masks = gsm.finalize(model)  # exactly gsm.q nonzero weights
        >>> gsm.q, sum(int(m.sum()) for m in masks.values())
        (4437, 4437)
    """

    def __init__(self, model: nn.Module, *, q: int | None = None, ratio: float | None = None,
                 sparsity: float | None = None, include=None, exclude=()):
        self.params = prunable_weights(model, include, exclude)
        self.total = sum(p.numel() for p in self.params.values())
        self.q = gsm_q(self.total, q=q, ratio=ratio, sparsity=sparsity)
        self.overlap: list[float] = []  # fraction of the top-Q set kept from the previous step
        self._last: torch.Tensor | None = None

    def on_fit_begin(self, model, optimizer):
        for g in optimizer.param_groups:
            if not isinstance(optimizer, torch.optim.SGD) or g.get("momentum", 0) <= 0 or g.get("weight_decay", 0) <= 0:
                log.warning("GSM expects SGD with momentum > 0 and weight_decay > 0 (got %s with %s)",
                            type(optimizer).__name__, {k: g.get(k) for k in ("momentum", "weight_decay")})
                break

    @torch.no_grad()
    def after_backward(self, model):
        ps = [p for p in self.params.values() if p.grad is not None]
        if not ps:
            return
        masks = topq_masks([(p * p.grad).abs() for p in ps], min(self.q, sum(p.numel() for p in ps)))
        for p, m in zip(ps, masks):
            p.grad.mul_(m)
        flat = torch.cat([m.reshape(-1) for m in masks])
        if self._last is not None and self._last.shape == flat.shape:
            self.overlap.append(float((flat & self._last).sum()) / max(self.q, 1))
        self._last = flat

    @torch.no_grad()
    def finalize(self, model: nn.Module) -> Masks:
        """Keep the Q largest-magnitude weights, zero all others, return the masks."""
        names = list(self.params)
        masks = topq_masks([self.params[n].abs() for n in names], self.q)
        out = Masks(dict(zip(names, masks)))
        out.apply(model)
        log.info("GSM: kept %d of %d weights (ratio %.1fx)", self.q, self.total, self.total / self.q)
        return out
