"""Ternary weights: TWN (Q6, Li & Liu 2016) and TTQ (Q7, Zhu et al. 2017).

* TWN: ``Delta = 0.7 * mean|W|``; ``w -> alpha * t``, ``t = sign(w) 1{|w| > Delta}``,
  ``alpha = mean of |w| over |w| > Delta``; trained with the identity straight-through
  estimator.
* TTQ: ``w -> +W_p`` where ``w > Delta``, ``-W_n`` where ``w < -Delta``, else 0, with
  trainable per-layer ``W_p, W_n`` and ``Delta = t * max|w|`` (t = 0.05) or the ``r``-th
  quantile of ``|w|`` for a target zero ratio r. Gradients (paper eq. 7-8):
  ``dL/dW_p = sum_{I_p} g``, ``dL/dW_n = -sum_{I_n} g`` (w_t = -W_n there), and the latent
  weights get ``W_p g`` on I_p, ``g`` on I_z and ``W_n g`` on I_n.

A zero weight stays zero in both (|0| <= Delta), so pruned models stay pruned.
"""

from __future__ import annotations

import torch

from nncompress.quantize.ste import ste


def _dims(w: torch.Tensor, per_channel: bool) -> tuple[int, ...]:
    return tuple(range(1, w.dim())) if per_channel and w.dim() > 1 else tuple(range(w.dim()))


def twn_threshold(w: torch.Tensor, per_channel: bool = False, factor: float = 0.7) -> torch.Tensor:
    """TWN's ``Delta = 0.7 * mean|W|`` (per tensor, or per output channel), keepdim shape.

    Example:
        >>> round(twn_threshold(torch.tensor([1.0, -2.0, 0.0, 1.0])).item(), 6)
        0.7
    """
    return factor * w.abs().mean(dim=_dims(w, per_channel), keepdim=True)


def twn_scale(w: torch.Tensor, delta: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """TWN's ``alpha = mean of |w| over |w| > Delta`` (0 where no weight exceeds Delta).

    Example:
        >>> w = torch.tensor([1.0, -2.0, 0.0, 1.0])
        >>> twn_scale(w, twn_threshold(w)).item()
        1.3333333730697632
    """
    keep = (w.abs() > delta).to(w.dtype)
    dims = _dims(w, per_channel)
    return (w.abs() * keep).sum(dim=dims, keepdim=True) / keep.sum(
        dim=dims, keepdim=True
    ).clamp_min(1)


def ternary_sign(w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``t in {-1, 0, +1}``: ``sign(w)`` where ``|w| > Delta``, else 0.

    Example:
        >>> ternary_sign(torch.tensor([0.5, -0.1, -0.9]), torch.tensor(0.3)).tolist()
        [1.0, 0.0, -1.0]
    """
    return torch.where(w.abs() > delta, torch.sign(w), torch.zeros_like(w))


def twn_quantize(w: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """Final TWN values ``alpha * t`` in float32.

    Example:
        >>> twn_quantize(torch.tensor([1.0, -2.0, 0.0, 1.0])).tolist()
        [1.3333333730697632, -1.3333333730697632, 0.0, 1.3333333730697632]
    """
    w = w.detach().float()
    delta = twn_threshold(w, per_channel)
    return twn_scale(w, delta, per_channel) * ternary_sign(w, delta)


def twn_weight(w: torch.Tensor, per_channel: bool = False) -> torch.Tensor:
    """TWN fake-quant: ``twn_quantize`` forward, identity gradient.

    Example:
        >>> twn_weight(torch.tensor([1.0, 0.0])).tolist()
        [1.0, 0.0]
    """
    return ste(w, twn_quantize(w, per_channel).to(w.dtype))


def ttq_threshold(
    w: torch.Tensor, t: float = 0.05, zero_ratio: float | None = None
) -> torch.Tensor:
    """TTQ's threshold: ``t * max|w|``, or the ``zero_ratio`` quantile of ``|w|``.

    Example:
        >>> round(ttq_threshold(torch.tensor([2.0, -1.0]), t=0.1).item(), 6)
        0.2
    """
    a = w.detach().abs()
    if zero_ratio is not None:
        return torch.quantile(a.flatten().float(), zero_ratio).to(w.dtype)
    return t * a.max()


class _TTQ(torch.autograd.Function):
    @staticmethod
    def forward(ctx, w, wp, wn, delta):
        pos, neg = w > delta, w < -delta
        ctx.save_for_backward(pos, neg, wp, wn)
        return torch.where(pos, wp, torch.where(neg, -wn, torch.zeros_like(w)))

    @staticmethod
    def backward(ctx, g):
        pos, neg, wp, wn = ctx.saved_tensors
        gw = torch.where(pos, wp * g, torch.where(neg, wn * g, g))
        gp = (g * pos).sum().reshape(wp.shape)
        gn = -(g * neg).sum().reshape(wn.shape)
        return gw, gp, gn, None


def ttq_weight(
    w: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor, delta: torch.Tensor
) -> torch.Tensor:
    """TTQ forward ``{-W_n, 0, +W_p}`` with the paper's gradients to w, W_p and W_n.

    Example:
        >>> ttq_weight(torch.tensor([0.5, 0.0, -0.5]), torch.tensor(2.0), torch.tensor(3.0), torch.tensor(0.1)).tolist()
        [2.0, 0.0, -3.0]
    """
    return _TTQ.apply(w, wp, wn, delta)


def ttq_init_scales(w: torch.Tensor, delta: torch.Tensor) -> tuple[float, float]:
    """Initial ``(W_p, W_n)``: mean |w| over the positive / negative sets (TWN-like).

    Example:
        >>> ttq_init_scales(torch.tensor([1.0, 3.0, -1.0, 0.0]), torch.tensor(0.5))
        (2.0, 1.0)
    """
    w = w.detach().float()
    pos, neg = w > delta, w < -delta
    wp = w[pos].mean().item() if pos.any() else float(delta.clamp_min(1e-8))
    wn = (-w[neg]).mean().item() if neg.any() else float(delta.clamp_min(1e-8))
    return wp, wn
