"""Straight-through estimators and gradient tricks shared by the low-bit quantizers.

Each function is forward-exact (it returns the quantized value) and defines its own
backward; they are the "method's own gradient" of catalogue Q4-Q11.
"""

from __future__ import annotations

import torch


class _SignSTE(torch.autograd.Function):
    """sign with the BNN straight-through estimator: grad * 1{|x| <= 1} (Hubara et al.)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, clip: bool) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.clip = clip
        return binary_sign(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        if ctx.clip:
            grad = grad * (x.abs() <= 1).to(grad.dtype)
        return grad, None


def binary_sign(x: torch.Tensor) -> torch.Tensor:
    """+1 where ``x > 0`` else -1 (zero maps to -1, so a ReLU output gives a real bit).

    Example:
        >>> binary_sign(torch.tensor([-0.5, 0.0, 2.0])).tolist()
        [-1.0, -1.0, 1.0]
    """
    return torch.where(x > 0, 1.0, -1.0).to(x.dtype)


def sign_ste(x: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """``binary_sign(x)`` forward; backward passes the gradient where ``|x| <= 1``
    (``clip=True``, BNN) or everywhere (``clip=False``).

    Example:
        >>> x = torch.tensor([0.5, 2.0], requires_grad=True)
        >>> sign_ste(x).sum().backward(); x.grad.tolist()
        [1.0, 0.0]
    """
    return _SignSTE.apply(x, clip)


def stochastic_sign(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """BinaryConnect's stochastic binarisation: +1 with probability
    ``hard_sigmoid(x) = clip((x + 1) / 2, 0, 1)``, else -1 (no gradient: wrap in an STE).

    Example:
        >>> stochastic_sign(torch.tensor([5.0, -5.0])).tolist()
        [1.0, -1.0]
    """
    p = ((x + 1) / 2).clamp(0, 1)
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return torch.where(u < p, 1.0, -1.0).to(x.dtype)


def ste(x: torch.Tensor, xq: torch.Tensor) -> torch.Tensor:
    """Value of ``xq`` with the gradient of ``x`` (identity straight-through estimator).

    Example:
        >>> x = torch.tensor([0.4], requires_grad=True)
        >>> ste(x, x.round()).item()
        0.0
    """
    return x + (xq - x).detach()


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity backward.

    Example:
        >>> round_ste(torch.tensor([1.4, 2.6])).tolist()
        [1.0, 3.0]
    """
    return ste(x, torch.round(x))


class _QuantizeGrad(torch.autograd.Function):
    """Identity forward; backward quantizes the gradient to ``bits`` bits (DoReFa eq. 12)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, bits: int, generator) -> torch.Tensor:
        ctx.bits = bits
        ctx.generator = generator
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return dorefa_grad_quantize(grad, ctx.bits, ctx.generator), None, None


def dorefa_grad_quantize(
    grad: torch.Tensor, bits: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """DoReFa gradient quantization, per sample (dim 0):
    ``2 max|g| [quantize_k(g / (2 max|g|) + 1/2 + N(k)) - 1/2]`` with uniform noise
    ``N(k) ~ U(-0.5, 0.5) / (2^k - 1)``.

    Example:
        >>> g = torch.tensor([[0.5, -0.5]])
        >>> dorefa_grad_quantize(g, 8).abs().max().item() <= 0.5 + 1e-6
        True
    """
    if grad.dim() == 0:
        return grad
    levels = 2**bits - 1
    dims = tuple(range(1, grad.dim()))
    m = grad.abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) if dims else grad.abs().max()
    noise = (
        torch.rand(grad.shape, generator=generator, dtype=grad.dtype, device=grad.device) - 0.5
    ) / levels
    v = (grad / (2 * m) + 0.5 + noise).clamp(0, 1)
    return 2 * m * (torch.round(v * levels) / levels - 0.5)


def quantize_grad(
    x: torch.Tensor, bits: int | None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Identity on ``x``; its gradient is DoReFa-quantized to ``bits`` bits (None: exact).

    Example:
        >>> quantize_grad(torch.ones(2), 8).tolist()
        [1.0, 1.0]
    """
    if bits is None or not x.requires_grad:
        return x
    return _QuantizeGrad.apply(x, bits, generator)
