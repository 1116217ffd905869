"""S10 Optimal Brain Surgeon (Hassibi & Stork 1993) and layer-wise OBS (Dong et al. 2017).

Pure math on a weight vector w with inverse Hessian H^-1 of a quadratic loss model:

* saliency of weight q: ``L_q = w_q^2 / (2 [H^-1]_qq)`` (the loss increase of removing it);
* compensating update: ``dw = -(w_q / [H^-1]_qq) H^-1 e_q`` (sets w_q to exactly 0);
* inverse-Hessian downdate after removing q (the inverse of H restricted to the remaining
  weights, padded with zeros): ``H^-1 <- H^-1 - H^-1 e_q e_q^T H^-1 / [H^-1]_qq``.

Layer-wise OBS: for a Linear (or Conv2d via ``unfold``) layer ``y = W x`` the error
``sum_n ||(W - W') x_n||^2 / N`` is a quadratic whose Hessian is the same
``H = X X^T / N`` for every output row, and rows are independent. H is dampened,
``H + damp * mean(diag H) * I``, and taken block-diagonal with blocks of ``block_size``
inputs (exact when the layer has at most ``block_size`` inputs). Every (row, block) unit
is pruned greedily one weight at a time with the update and downdate above, vectorised
over units. To let rows reach different sparsities at one layer target, a first pass
removes everything and records each unit's OBS saliencies in removal order; their
running maxima are thresholded over the whole layer (the k smallest) which gives each
unit its count; a second pass prunes each unit to its count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from nncompress.checks import check_float, check_int
from nncompress.errors import ConfigError
from nncompress.modules import calibration_batches, layer_inputs_2d
from nncompress.prune.magnitude import check_sparsity
from nncompress.prune.mask import Masks
from nncompress.prune.targets import prunable_weights

log = logging.getLogger(__name__)


def obs_saliency(weight: torch.Tensor, hinv_diag: torch.Tensor) -> torch.Tensor:
    """``w_q^2 / (2 [H^-1]_qq)`` element-wise.

    Example:
        >>> obs_saliency(torch.tensor([2.0, 1.0]), torch.tensor([0.5, 1.0])).tolist()
        [4.0, 0.5]
    """
    return weight ** 2 / (2.0 * hinv_diag)


def obs_update(weight: torch.Tensor, hinv: torch.Tensor, q: int) -> torch.Tensor:
    """Remove weight q and compensate: ``w - (w_q / [H^-1]_qq) H^-1 e_q`` (entry q exactly 0).

    Example:
        >>> obs_update(torch.tensor([1.0, 2.0]), torch.eye(2), 0).tolist()
        [0.0, 2.0]
    """
    out = weight - (weight[q] / hinv[q, q]) * hinv[:, q]  # (d,)
    out[q] = 0.0
    return out


def obs_downdate(hinv: torch.Tensor, q: int) -> torch.Tensor:
    """Inverse Hessian of the remaining weights after removing q (row/column q become 0).

    Example:
        >>> obs_downdate(torch.tensor([[2.0, 1.0], [1.0, 2.0]]), 0).tolist()
        [[0.0, 0.0], [0.0, 1.5]]
    """
    col = hinv[:, q]  # (d,)
    return hinv - torch.outer(col, col) / hinv[q, q]


def obs_prune_vector(weight: torch.Tensor, hinv: torch.Tensor, n_prune: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy OBS on one vector: remove ``n_prune`` weights one by one (least saliency
    first), updating the others and downdating H^-1. Returns (new weight, kept mask).

    Example:
        >>> w, keep = obs_prune_vector(torch.tensor([3.0, 0.1, 2.0]), torch.eye(3), 1)
        >>> keep.tolist()
        [True, False, True]
    """
    w, h = weight.clone(), hinv.clone()
    removed = torch.zeros_like(w, dtype=torch.bool)
    for _ in range(n_prune):
        sal = torch.where(removed, torch.full_like(w, math.inf), obs_saliency(w, h.diagonal()))
        q = int(sal.argmin())
        w = obs_update(w, h, q)
        h = obs_downdate(h, q)
        removed[q] = True
    return w, ~removed


@torch.no_grad()
def obs_prune_units(
    w: torch.Tensor, hinv: torch.Tensor, counts: torch.Tensor, forced: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Greedy OBS on ``U`` independent units sharing one inverse Hessian, vectorised.

    Args:
        w: (U, d) weights. hinv: (d, d) shared inverse Hessian. counts: (U,) removals per
        unit. forced: (U, d) entries removed first regardless of saliency (earlier masks).
    Returns:
        (new weights (U, d), kept mask (U, d), saliencies (U, max count) in removal
        order, ``-1`` for forced removals, 0 past a unit's count).
    """
    u, d = w.shape
    w = w.clone()
    hc = hinv.unsqueeze(0).repeat(u, 1, 1)  # (U, d, d)
    removed = torch.zeros(u, d, dtype=torch.bool, device=w.device)
    forced = forced if forced is not None else torch.zeros_like(removed)
    k_max = int(counts.max()) if counts.numel() else 0
    inc = torch.zeros(u, k_max, dtype=w.dtype, device=w.device)
    ar = torch.arange(u, device=w.device)
    for j in range(k_max):
        active = counts > j  # (U,)
        diag = hc.diagonal(dim1=1, dim2=2)  # (U, d)
        sal = w ** 2 / (2.0 * diag.clamp_min(torch.finfo(w.dtype).tiny))
        sal = torch.where(forced & ~removed, torch.full_like(sal, -1.0), sal)
        sal = torch.where(removed, torch.full_like(sal, math.inf), sal)
        q = sal.argmin(1)  # (U,)
        col = hc[ar, :, q]  # (U, d) column q of each unit's H^-1
        hqq = col[ar, q].clamp_min(torch.finfo(w.dtype).tiny)  # (U,)
        scale = torch.where(active, 1.0 / hqq, torch.zeros_like(hqq))  # (U,)
        w -= (w[ar, q] * scale).unsqueeze(1) * col
        hc.baddbmm_(col.unsqueeze(2), (col * scale.unsqueeze(1)).unsqueeze(1), alpha=-1.0)
        w[ar[active], q[active]] = 0.0
        removed[ar[active], q[active]] = True
        inc[:, j] = torch.where(active, sal[ar, q], torch.zeros_like(hqq))
    w[removed] = 0.0  # later updates leave round-off (~1e-17) on removed entries
    return w, ~removed, inc


def damped_inverse(h: torch.Tensor, damp: float) -> torch.Tensor:
    """``(H + damp * mean(diag H) * I)^-1`` through a Cholesky factorisation.

    Example:
        >>> damped_inverse(torch.eye(2, dtype=torch.float64) * 2, 0.0).diagonal().round(decimals=6).tolist()
        [0.5, 0.5]
    """
    check_float(damp, "damp", 0)
    d = h.shape[0]
    mean_diag = float(h.diagonal().mean())
    hd = h + (damp * mean_diag if mean_diag > 0 else 1e-8) * torch.eye(d, dtype=h.dtype, device=h.device)
    return torch.cholesky_inverse(torch.linalg.cholesky(hd))


@torch.no_grad()
def layer_hessian(model: nn.Module, module: nn.Module, data, *, n_samples: int | None = 1024,
                  batch_size: int = 256) -> torch.Tensor:
    """``H = X X^T / M`` (float64) of ``module``'s inputs over the calibration data,
    accumulated with running sums over batches."""
    state: dict[str, torch.Tensor | int] = {"h": 0, "m": 0}

    def hook(mod, inputs):
        rows = layer_inputs_2d(mod, inputs[0].detach(), "layer-wise OBS").double()  # (M, d)
        state["h"] = state["h"] + rows.T @ rows
        state["m"] = state["m"] + rows.shape[0]

    handle = module.register_forward_pre_hook(hook)
    was_training = model.training
    model.eval()
    device = module.weight.device
    try:
        for x, _ in calibration_batches(data, batch_size, n_samples):
            model(x.to(device))
    finally:
        handle.remove()
        model.train(was_training)
    if not state["m"]:
        raise ConfigError("layer_hessian got no samples")
    return state["h"] / state["m"]


@torch.no_grad()
def obs_prune_matrix(
    w2d: torch.Tensor, h: torch.Tensor, sparsity: float, *, damp: float = 0.01, block_size: int = 128,
    forced: torch.Tensor | None = None, max_unit_batch_bytes: int = 64 << 20,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-wise OBS of a (rows, d) weight with input Hessian ``h`` (d, d) to ``sparsity``.

    Returns (new weight, kept mask), both (rows, d). See the module docstring.

    Example:
        >>> w, keep = obs_prune_matrix(torch.randn(4, 8), torch.eye(8, dtype=torch.float64), 0.5)
        >>> int(keep.sum())
        16
    """
    check_sparsity(sparsity)
    check_int(block_size, "block_size", 1)
    rows, d = w2d.shape
    forced = forced if forced is not None else torch.zeros(rows, d, dtype=torch.bool)
    forced = forced.to(w2d.device)
    blocks = [(b, min(b + block_size, d)) for b in range(0, d, block_size)]
    hinvs = [damped_inverse(h[b0:b1, b0:b1], damp) for b0, b1 in blocks]
    w64 = w2d.detach().double()

    def run(counts_per_block: list[torch.Tensor]):
        outs, keeps, incs = [], [], []
        for (b0, b1), hinv, counts in zip(blocks, hinvs, counts_per_block):
            bs = b1 - b0
            step = max(1, max_unit_batch_bytes // (bs * bs * 8))
            wo, ko, io = [], [], []
            for r0 in range(0, rows, step):
                sl = slice(r0, min(r0 + step, rows))
                a, k, i = obs_prune_units(w64[sl, b0:b1], hinv, counts[sl], forced[sl, b0:b1])
                wo.append(a), ko.append(k), io.append(F.pad(i, (0, bs - i.shape[1])))
            outs.append(torch.cat(wo)), keeps.append(torch.cat(ko)), incs.append(torch.cat(io))
        return outs, keeps, incs

    full = [torch.full((rows,), b1 - b0, dtype=torch.long, device=w2d.device) for b0, b1 in blocks]
    _, _, incs = run(full)  # saliency of every removal, in greedy order
    paths = torch.cat([torch.cummax(i, dim=1).values for i in incs], dim=1)  # (rows, d) monotone per unit
    n_prune = max(int(round(sparsity * rows * d)), int(forced.sum()))
    flat = paths.reshape(-1)
    chosen = torch.zeros_like(flat, dtype=torch.bool)
    if n_prune > 0:
        chosen[torch.argsort(flat, stable=True)[:n_prune]] = True
    chosen = chosen.view(rows, d)
    counts, off = [], 0
    for b0, b1 in blocks:
        counts.append(chosen[:, off:off + b1 - b0].sum(1))
        off += b1 - b0
    outs, keeps, _ = run(counts)
    return torch.cat(outs, 1).to(w2d.dtype), torch.cat(keeps, 1)


@torch.no_grad()
def obs_prune(
    model: nn.Module,
    data: Dataset | DataLoader,
    sparsity: float | dict[str, float],
    *,
    n_samples: int | None = 1024,
    batch_size: int = 256,
    damp: float = 0.01,
    block_size: int = 128,
    sequential: bool = True,
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    previous: Masks | None = None,
) -> Masks:
    """One-shot layer-wise OBS of every Linear/Conv2d layer to ``sparsity`` (per layer).

    With ``sequential=True`` each layer's input Hessian is measured with the layers
    before it already pruned (in module order), so later layers compensate earlier
    errors. ``previous`` masks stay pruned. Weights are updated in place.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g))
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> masks = obs_prune(model, data, 0.75, n_samples=64)
        >>> {name: round(float((~m).float().mean()), 2) for name, m in masks.items()}
        {'0.weight': 0.75, '2.weight': 0.75}
    """
    weights = prunable_weights(model, include, exclude, types=(nn.Linear, nn.Conv2d))
    targets = {n: (sparsity.get(n, sparsity.get("default")) if isinstance(sparsity, dict) else sparsity)
               for n in weights}
    hs: dict[str, torch.Tensor] = {}
    if not sequential:
        for name in weights:
            hs[name] = layer_hessian(model, model.get_submodule(name.rsplit(".", 1)[0]), data,
                                     n_samples=n_samples, batch_size=batch_size)
    masks: dict[str, torch.Tensor] = {}
    for name, p in weights.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        s = targets[name]
        if s is None:
            masks[name] = torch.ones_like(p, dtype=torch.bool)
            continue
        h = hs.get(name)
        if h is None:
            h = layer_hessian(model, module, data, n_samples=n_samples, batch_size=batch_size)
        w2d = p.detach().reshape(p.shape[0], -1)  # (out, d)
        forced = ~previous[name].reshape_as(w2d) if previous is not None and name in previous else None
        new_w, keep = obs_prune_matrix(w2d, h.to(w2d.device), float(s), damp=damp,
                                       block_size=block_size, forced=forced)
        p.copy_(new_w.view_as(p))
        masks[name] = keep.view_as(p)
        log.info("OBS %s: sparsity %.4f", name, 1 - float(keep.float().mean()))
    return Masks(masks)
