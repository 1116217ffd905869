"""Binary weights and activations: BinaryConnect/BNN (Q4), BWN and XNOR-Net (Q5).

* BinaryConnect / BNN (Courbariaux et al. 2015, Hubara et al. 2016): ``w_b = sign(w)``
  (deterministic) or +1 with probability ``hard_sigmoid(w)`` (stochastic); backward is the
  straight-through estimator with the gradient cancelled where ``|w| > 1``.
* BWN (Rastegari et al. 2016): ``W ~ alpha * sign(W)``, ``alpha = mean|W|`` per output
  filter; the gradient is ``dC/dW = dC/dW~ (1/n + alpha 1{|W| <= 1})`` (the 1/n term comes
  through alpha, the rest through the clipped STE).
* XNOR-Net: inputs binarised too, with their own scale. The paper's K is the channel mean
  of |I| box-filtered over each k x k window and applied to the conv output; here the scale
  multiplies the binarised input instead (``I ~ mean_c|I| * sign(I)`` per position for
  convs, ``mean|I|`` per sample for Linear). It equals the paper's K when the scale is
  constant over a window.

Sign convention: ``sign(0) = -1`` (see ``binary_sign``).
"""

from __future__ import annotations

import torch

from nncompress.quantize.ste import binary_sign, sign_ste, ste, stochastic_sign


def channel_mean_abs(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """BWN's ``alpha = mean|W|`` per output channel (shape ``(C, 1, ...)``) or per tensor.

    Example:
        >>> channel_mean_abs(torch.tensor([[1.0, -3.0], [0.5, 0.5]])).flatten().tolist()
        [2.0, 0.5]
    """
    if not per_channel or w.dim() < 2:
        return w.abs().mean().reshape([1] * w.dim())
    return w.abs().mean(dim=tuple(range(1, w.dim())), keepdim=True)


def binarize_weight(
    w: torch.Tensor,
    stochastic: bool = False,
    clip_grad: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """BinaryConnect/BNN weight: +-1 forward, clipped STE backward.

    Example:
        >>> binarize_weight(torch.tensor([0.2, -0.1])).tolist()
        [1.0, -1.0]
    """
    if stochastic:
        wb = stochastic_sign(w.detach(), generator)
        grad_mask = (w.abs() <= 1).to(w.dtype) if clip_grad else torch.ones_like(w)
        return ste(w * grad_mask, wb)  # value wb, gradient 1{|w| <= 1}
    return sign_ste(w, clip_grad)


def bwn_weight(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """BWN fake-quant: ``alpha * sign(w)`` with ``alpha = mean|w|`` (differentiable).

    Example:
        >>> bwn_weight(torch.tensor([[1.0, -3.0]])).tolist()
        [[2.0, -2.0]]
    """
    return channel_mean_abs(w, per_channel) * sign_ste(w)


def bwn_quantize(w: torch.Tensor, per_channel: bool = True) -> torch.Tensor:
    """Final BWN values ``alpha * sign(w)`` in float32 (no gradient).

    Example:
        >>> bwn_quantize(torch.tensor([[0.0, 2.0]])).tolist()
        [[-1.0, 1.0]]
    """
    w = w.detach().float()
    return channel_mean_abs(w, per_channel) * binary_sign(w)


def xnor_activation(x: torch.Tensor) -> torch.Tensor:
    """XNOR-Net input binarisation ``beta * sign(x)``, ``beta = mean_c |x|`` per position
    for ``(B, C, H, W)`` inputs and per sample for ``(B, F)`` inputs; clipped STE for the
    sign, beta differentiable.

    Example:
        >>> xnor_activation(torch.tensor([[1.0, -3.0]])).tolist()
        [[2.0, -2.0]]
    """
    if x.dim() == 4:
        beta = x.abs().mean(dim=1, keepdim=True)  # (B, 1, H, W)
    else:
        beta = x.abs().flatten(1).mean(dim=1).reshape([-1] + [1] * (x.dim() - 1))  # (B, 1)
    return beta * sign_ste(x)
