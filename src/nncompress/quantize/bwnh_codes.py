"""BWNH's math on one weight matrix (Q13, Hu, Wang & Cheng, AAAI 2018): the codes ``B``
and per-filter scales ``alpha`` minimising ``||W X - diag(alpha) B X||_F^2`` through the
Gram matrix ``M = X X^T`` (closed-form ``alpha``, discrete cyclic coordinate descent on
``B``). Pure functions of tensors; the model-level binarisation is ``nncompress.quantize.bwnh``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from nncompress.errors import ConfigError
from nncompress.quantize.ste import binary_sign

# ---- pure functions on one weight matrix ---------------------------------------------


def check_iters(iters: int) -> int:
    """``iters`` if it is an int >= 1, else a ConfigError naming it."""
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ConfigError(f"iters={iters!r} is not allowed; use an int >= 1")
    return iters


def _check_weight(w: torch.Tensor) -> torch.Tensor:
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or w.numel() == 0:
        shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ConfigError(f"W of shape {shape} is not allowed; use a non-empty 2-D (n_out, d) tensor")
    if not torch.isfinite(w).all():
        raise ConfigError("W holds NaN or inf values; only finite weights can be binarised")
    return w


def gram(x: torch.Tensor) -> torch.Tensor:
    """``M = X X^T`` in float64 for a ``(d, m)`` input sample ``X``.

    Example:
        >>> gram(torch.tensor([[1.0, 2.0], [0.0, 1.0]])).tolist()
        [[5.0, 2.0], [2.0, 1.0]]
    """
    if not isinstance(x, torch.Tensor) or x.dim() != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(f"X of shape {shape} is not allowed; use a 2-D (d, m) tensor")
    if x.shape[1] == 0:
        raise ConfigError(f"X of shape {tuple(x.shape)} has no samples (m = 0); use m >= 1 columns")
    if not torch.isfinite(x).all():
        raise ConfigError("X holds NaN or inf values; only finite inputs can be used")
    x = x.detach().to(torch.float64)
    return x @ x.T


def _check_gram(w: torch.Tensor, m: torch.Tensor) -> None:
    d = w.shape[1]
    if m.dim() != 2 or tuple(m.shape) != (d, d):
        raise ConfigError(
            f"input sample of dimension {tuple(m.shape)} does not match W of shape "
            f"{tuple(w.shape)}; X must be (d, m) with d = {d}"
        )


def bwnh_objective_gram(
    w: torch.Tensor, m: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor
) -> float:
    """``||W X - diag(alpha) B X||_F^2`` from the Gram matrix ``M = X X^T`` (float64)."""
    diff = w.detach().to(torch.float64) - alpha.to(torch.float64)[:, None] * b.to(torch.float64)
    return float(((diff @ m) * diff).sum())


def bwnh_objective(w: torch.Tensor, x: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> float:
    """The BWNH reconstruction error ``||W X - diag(alpha) B X||_F^2`` (float64).

    Example:
        >>> w = torch.tensor([[1.0, -3.0]]); x = torch.eye(2)
        >>> bwnh_objective(w, x, torch.tensor([[1.0, -1.0]]), torch.tensor([2.0]))
        2.0
    """
    _check_weight(w)
    m = gram(x)
    _check_gram(w, m)
    return bwnh_objective_gram(w, m, b, alpha)


def bwnh_alpha_gram(w: torch.Tensor, m: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Closed-form scales ``a_i = b_i^T M w_i / b_i^T M b_i`` (0 where ``b_i^T M b_i = 0``),
    float64, shape ``(n,)``."""
    w64, b64 = w.detach().to(torch.float64), b.to(torch.float64)
    bm = b64 @ m  # (n, d)
    num = (bm * w64).sum(dim=1)
    den = (bm * b64).sum(dim=1)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float64).tiny), 0.0)


def bwnh_alpha(w: torch.Tensor, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Least-squares per-filter scales for fixed codes ``B``:
    ``a_i = (B_i X)(W_i X)^T / ||B_i X||^2`` (float64, shape ``(n,)``).

    Example:
        >>> bwnh_alpha(torch.tensor([[1.0, -3.0]]), torch.eye(2), torch.tensor([[1.0, -1.0]])).tolist()
        [2.0]
    """
    _check_weight(w)
    m = gram(x)
    _check_gram(w, m)
    return bwnh_alpha_gram(w, m, b)


@dataclass
class BWNHResult:
    """Codes ``B`` (``{-1, +1}``, W's dtype), scales ``alpha`` (``(n,)``, W's dtype) and the
    objective after the initial scale step and after each iteration (``history``)."""

    codes: torch.Tensor
    alpha: torch.Tensor
    history: list[float] = field(default_factory=list)
    iters_run: int = 0

    @property
    def objective(self) -> float:
        """The final ``||W X - diag(alpha) B X||_F^2``."""
        return self.history[-1]


def _dcc_sweep(
    w_m: torch.Tensor, m: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, block: int = 64
) -> int:
    """One discrete cyclic coordinate descent sweep over the ``d`` input coordinates (in
    place on ``b``, all filters at once); returns how many bits changed. ``(M b_i)_k`` is
    computed for a block of coordinates with one matrix product and corrected for the bits
    changed earlier in the block, which gives the exact sequential update."""
    d = m.shape[0]
    diag = torch.diagonal(m)
    changed = 0
    for start in range(0, d, block):
        stop = min(start + block, d)
        r = b @ m[:, start:stop]  # (n, K): (M b_i)_k for the current codes
        for k in range(start, stop):
            old = b[:, k]
            g = alpha * (w_m[:, k] - alpha * (r[:, k - start] - diag[k] * old))
            new = torch.where(g > 0, 1.0, torch.where(g < 0, -1.0, old)).to(b.dtype)
            delta = new - old  # 0 or +-2
            n_flip = int(torch.count_nonzero(delta))
            if n_flip:
                r += delta[:, None] * m[k, start:stop][None, :]
                b[:, k] = new
                changed += n_flip
    return changed


def bwnh_solve_gram(w: torch.Tensor, m: torch.Tensor, iters: int = 10) -> BWNHResult:
    """BWNH for one layer from its weights ``W`` (``n x d``) and the Gram matrix
    ``M = X X^T`` (``d x d``) of its input sample; see the module docstring. Stops early
    when a sweep changes no bit. ``alpha`` is returned non-negative (a filter whose
    least-squares scale is negative has its codes negated, which changes nothing).

    Example:
        >>> w = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
        >>> r = bwnh_solve_gram(w, gram(torch.randn(6, 32, generator=torch.Generator().manual_seed(1))))
        >>> r.history[-1] <= r.history[0]
        True
    """
    _check_weight(w)
    check_iters(iters)
    _check_gram(w, m)
    m = m.detach().to(torch.float64)
    w64 = w.detach().to(torch.float64)
    w_m = w64 @ m  # (n, d): (M w_i)_k
    b = binary_sign(w64)

    def scale_step() -> torch.Tensor:
        a = bwnh_alpha_gram(w64, m, b)
        neg = a < 0
        if neg.any():
            b[neg] = -b[neg]
            a = a.abs()
        return a

    alpha = scale_step()
    history = [bwnh_objective_gram(w64, m, b, alpha)]
    run = 0
    for _ in range(iters):
        changed = _dcc_sweep(w_m, m, b, alpha)
        run += 1
        alpha = scale_step()
        history.append(bwnh_objective_gram(w64, m, b, alpha))
        if changed == 0:
            break
    return BWNHResult(b.to(w.dtype), alpha.to(w.dtype), history, run)


def bwnh_codes(w: torch.Tensor, x: torch.Tensor, iters: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """BWNH codes and scales of one layer: ``(B, alpha)`` with ``B`` in ``{-1, +1}``
    (shape of ``W``, ``n x d``) and ``alpha >= 0`` (``(n,)``) approximately minimising
    ``||W X - diag(alpha) B X||_F^2`` for the input sample ``X`` (``d x m``).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> w, x = torch.randn(3, 5, generator=g), torch.randn(5, 40, generator=g)
        >>> b, alpha = bwnh_codes(w, x, iters=5)
        >>> sorted(set(b.flatten().tolist())), alpha.shape
        ([-1.0, 1.0], torch.Size([3]))
    """
    _check_weight(w)
    check_iters(iters)
    res = bwnh_solve_gram(w, gram(x), iters)
    return res.codes, res.alpha


def bwn_objective(w: torch.Tensor, x: torch.Tensor) -> float:
    """The same reconstruction error for BWN's ``mean|W_i| * sign(W_i)`` (the baseline).

    Example:
        >>> bwn_objective(torch.tensor([[1.0, -3.0]]), torch.eye(2))
        2.0
    """
    _check_weight(w)
    m = gram(x)
    _check_gram(w, m)
    return bwnh_objective_gram(w, m, binary_sign(w.detach()), w.detach().abs().mean(dim=1))
