"""One-shot second-order compression of one layer: pure tensor math on ``(W, H)``.

The layer ``y = W x`` (W: (rows, d)) is compressed to ``W'`` minimising the output error
``tr((W - W') H (W - W')^T)`` with ``H = 2/n sum x x^T`` of its calibration inputs. Rows
share H and are solved together, column by column (OBQ / GPTQ / SparseGPT, Frantar &
Alistarh 2022-2023): with ``U`` the upper Cholesky factor of the damped inverse Hessian
``(H + damp * mean(diag H) * I)^-1 = U^T U``, column ``i`` is set to its compressed value
``q`` (on the grid, or 0 when pruned) and the error is spread over the columns not yet
fixed, ``W[:, j] -= (w_i - q_i) / U_ii * U_ij`` for ``j > i`` -- the optimal (OBS) update
of the remaining weights for that column, with the inverse Hessian of the remaining
columns read off ``U`` instead of being downdated. Columns go in blocks of ``block_size``:
updates inside a block are applied at once per column, the rest of the matrix gets one
lazy matrix product per block.

What each column becomes:

* unstructured sparsity: per block, the entries with the smallest ``w^2 / U_ii^2`` (the
  OBS saliency) are pruned, so the mask adapts to the updated weights (SparseGPT); the
  counts per block add up to exactly ``round(sparsity * rows * d)``;
* ``N:M``: in every group of ``M`` consecutive inputs of a row, ``N`` are kept;
* uniform grid (:class:`UniformGrid`): ``(code - zero) * scale`` with ``bits``-bit codes,
  per row (``group_size=None``: parameters from the whole dense row) or per group of
  ``group_size`` input columns (parameters chosen when the group starts, from its
  updated weights); scales are rounded to float16 first, so a file storing fp16 scales
  decodes to exactly these weights;
* codebook grid (:class:`CodebookGrid`): the nearest centroid; after the pass the
  centroids may be refitted by least squares with the assignments fixed
  (:func:`refit_codebook`), kept only when the error falls.

Dead inputs (``diag H == 0``) get weight 0. ``act_order`` handles columns by decreasing
``diag H`` (and puts them back at the end); groups are then fixed up front from the
dense weights (static groups) so that each group still covers consecutive inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from nncompress.errors import ConfigError

FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -24


@dataclass(frozen=True)
class UniformGrid:
    """``(code - zero) * scale`` with codes in ``0 .. 2^bits - 1``; ``symmetric``: zero is
    ``2^(bits-1)`` and the range ``[-max|w|, max|w|]``; ``group_size``: inputs per scale
    (None: one scale per row).

    Example:
        >>> UniformGrid(4, group_size=128).levels
        16
    """

    bits: int
    symmetric: bool = False
    group_size: int | None = None

    @property
    def levels(self) -> int:
        return 2 ** self.bits


@dataclass(frozen=True)
class CodebookGrid:
    """A non-uniform grid: the sorted values (K,) of a k-means codebook, or one sorted
    codebook per block of output rows, (blocks, K) with ``rows_per_codebook`` rows each
    (a block's shorter codebook padded by repeating its last value).

    Example:
        >>> CodebookGrid(torch.tensor([-1.0, 0.5])).codebook.numel()
        2
    """

    codebook: torch.Tensor
    rows_per_codebook: int | None = None

    def per_row(self, rows: int) -> torch.Tensor:
        """The codebook of every row, (rows, K) (a per-layer codebook: (1, K))."""
        if self.codebook.dim() == 1:
            return self.codebook.unsqueeze(0)
        block = torch.arange(rows) // self.rows_per_codebook
        return self.codebook[block]


Grid = UniformGrid | CodebookGrid


@dataclass
class SolveResult:
    """The compressed layer: ``weight`` (rows, d) float32; ``mask`` (rows, d) bool kept
    entries (None without sparsity); uniform grid: ``scales`` (rows, groups) float32 holding
    float16 values and ``zeros`` (rows, groups) int64; codebook grid: the final
    ``codebook`` (K,); ``error`` the relative output error ``tr(E H E^T) / tr(W H W^T)``."""

    weight: torch.Tensor
    mask: torch.Tensor | None
    scales: torch.Tensor | None
    zeros: torch.Tensor | None
    codebook: torch.Tensor | None
    error: float


# ---- grids ---------------------------------------------------------------------------------


def fp16_scale(scale: torch.Tensor) -> torch.Tensor:
    """Scales rounded to float16 values (kept float32), inside fp16's positive range.

    Example:
        >>> fp16_scale(torch.tensor([0.1, 0.0])).tolist()
        [0.0999755859375, 1.0]
    """
    s = torch.where(scale > 0, scale, torch.ones_like(scale)).float()
    return s.clamp(FP16_TINY, FP16_MAX).half().float()


def uniform_params(x: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``(scale (rows,) float32 with fp16 values, zero (rows,) int64)`` covering
    ``[min(x, 0), max(x, 0)]`` of each row of ``x`` (rows, n); 0 is always on the grid.

    Example:
        >>> s, z = uniform_params(torch.tensor([[-1.0, 2.0]]), 2, False)
        >>> s.tolist(), z.tolist()
        ([1.0], [1])
    """
    maxq = 2 ** bits - 1
    lo = x.min(1).values.clamp(max=0).float()  # (rows,)
    hi = x.max(1).values.clamp(min=0).float()
    if symmetric:
        amax = torch.maximum(-lo, hi)
        scale = fp16_scale(2 * amax / maxq)
        zero = torch.full_like(scale, 2 ** (bits - 1), dtype=torch.int64)
    else:
        scale = fp16_scale((hi - lo) / maxq)
        zero = torch.round(-lo / scale).clamp(0, maxq).to(torch.int64)
    return scale, zero


def uniform_codes(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Nearest codes (int64) of ``x`` (rows, n) for per-row ``scale``/``zero`` (rows,) or
    (rows, n).

    Example:
        >>> uniform_codes(torch.tensor([[0.9, -3.0]]), torch.tensor([1.0]), torch.tensor([1]), 2).tolist()
        [[2, 0]]
    """
    s = scale if scale.dim() == x.dim() else scale.unsqueeze(-1)
    z = zero if zero.dim() == x.dim() else zero.unsqueeze(-1)
    return (torch.round(x.float() / s) + z).clamp(0, 2 ** bits - 1).to(torch.int64)


def uniform_dequant(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """``(code - zero) * scale`` in float32 (the codec decodes with this very expression).

    Example:
        >>> uniform_dequant(torch.tensor([[2, 0]]), torch.tensor([1.0]), torch.tensor([1])).tolist()
        [[1.0, -1.0]]
    """
    s = scale if scale.dim() == codes.dim() else scale.unsqueeze(-1)
    z = zero if zero.dim() == codes.dim() else zero.unsqueeze(-1)
    return (codes - z).float() * s.float()


def nearest_centroid(x: torch.Tensor, codebook: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, labels) of the nearest entry of the sorted ``codebook`` for each entry of x.

    Example:
        >>> v, i = nearest_centroid(torch.tensor([0.1, 0.9]), torch.tensor([0.0, 1.0]))
        >>> v.tolist(), i.tolist()
        ([0.0, 1.0], [0, 1])
    """
    cb = codebook.to(x.dtype)
    if cb.dim() == 2 and cb.shape[0] == 1:
        cb = cb[0]
    if cb.dim() == 1:
        mids = (cb[1:] + cb[:-1]) / 2
        labels = torch.bucketize(x.contiguous(), mids)
        return cb[labels], labels
    # one sorted codebook per row of x: (rows, K); x is (rows,) or (rows, n)
    mids = (cb[:, 1:] + cb[:, :-1]) / 2  # (rows, K-1)
    xx = x.unsqueeze(-1) if x.dim() == 1 else x
    labels = torch.searchsorted(mids.contiguous(), xx.contiguous())  # (rows, n)
    vals = torch.gather(cb, 1, labels)
    return (vals.squeeze(-1), labels.squeeze(-1)) if x.dim() == 1 else (vals, labels)


# ---- Hessian helpers -----------------------------------------------------------------------


def relative_error(w: torch.Tensor, q: torch.Tensor, h: torch.Tensor) -> float:
    """``tr((W - Q) H (W - Q)^T) / tr(W H W^T)``: the relative output error
    ``||WX - QX||^2 / ||WX||^2`` over the calibration inputs that gave ``H``.

    Example:
        >>> relative_error(torch.ones(1, 2), torch.zeros(1, 2), torch.eye(2))
        1.0
    """
    h = h.double()
    e = (w.double() - q.double())
    num = float(((e @ h) * e).sum())
    den = float(((w.double() @ h) * w.double()).sum())
    return num / den if den > 0 else (0.0 if num == 0 else math.inf)


def inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor ``U`` of ``(H + damp * mean(diag H) * I)^-1 = U^T U``
    (float64). ``h`` must have no zero diagonal entry (see :func:`solve_layer`).

    Example:
        >>> inverse_cholesky(torch.eye(2) * 4, 0.0).diagonal().tolist()
        [0.5, 0.5]
    """
    h = h.double()
    d = h.shape[0]
    eye = torch.eye(d, dtype=h.dtype, device=h.device)
    hd = h + damp * float(h.diagonal().mean()) * eye
    for extra in (0.0, 1e-6, 1e-4, 1e-2):
        chol, info = torch.linalg.cholesky_ex(hd + extra * float(hd.diagonal().mean()) * eye)
        if int(info) == 0:
            break
    else:
        raise ConfigError("the damped Hessian is not positive definite; raise damp")
    hinv = torch.cholesky_inverse(chol)
    return torch.linalg.cholesky(hinv, upper=True)


def _aligned_block(block_size: int, group_size: int | None, m: int | None) -> int:
    unit = math.lcm(group_size or 1, m or 1)
    return max(unit, (block_size // unit) * unit)


# ---- the column loop -----------------------------------------------------------------------


@torch.no_grad()
def solve_layer(
    w: torch.Tensor,
    h: torch.Tensor,
    *,
    grid: Grid | None = None,
    sparsity: float = 0.0,
    nm: tuple[int, int] | None = None,
    block_size: int = 128,
    damp: float = 0.01,
    act_order: bool = False,
    refit: bool = True,
    dtype: torch.dtype = torch.float32,
) -> SolveResult:
    """Compress ``w`` (rows, d) given its input Hessian ``h`` (d, d); see the module
    docstring. ``sparsity`` in [0, 1) and ``nm`` (N kept of every M) may be combined with a
    ``grid`` (joint sparsity + quantization). ``dtype``: the column loop's precision (the
    Cholesky factor is computed in float64 either way).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> w = torch.randn(8, 16, generator=g)
        >>> # correlated inputs (rank 4 plus noise): where OBS's compensation pays off
        >>> x = torch.randn(16, 4, generator=g) @ torch.randn(4, 256, generator=g) + 0.1 * torch.randn(16, 256, generator=g)
        >>> h = 2 * x @ x.T / 256
        >>> solve_layer(w, h, grid=UniformGrid(4)).error < relative_error(w, rtn_layer(w, grid=UniformGrid(4)), h)
        True
    """
    rows, d = w.shape
    if h.shape != (d, d):
        raise ConfigError(f"Hessian of shape {tuple(h.shape)} does not fit a weight with {d} inputs")
    if not 0.0 <= sparsity < 1.0:
        raise ConfigError(f"sparsity must be in [0, 1), got {sparsity!r}")
    if nm is not None and (act_order or d % nm[1]):
        raise ConfigError(f"N:M sparsity needs the inputs ({d}) to be a multiple of M={nm[1]} and no act_order")
    group = grid.group_size if isinstance(grid, UniformGrid) else None
    if group is not None and d % group:
        raise ConfigError(f"group_size={group} must divide the layer's {d} inputs")
    h0 = h
    W = w.detach().double().clone()  # (rows, d)
    H = h.detach().double().clone()  # (d, d)
    dead = H.diagonal() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    perm = torch.argsort(H.diagonal(), descending=True) if act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    col_of = perm if perm is not None else torch.arange(d)  # position -> original input

    uniform = isinstance(grid, UniformGrid)
    scales = zeros = None
    if uniform:
        n_groups = d // group if group else 1
        scales = torch.empty(rows, n_groups, dtype=torch.float32)
        zeros = torch.empty(rows, n_groups, dtype=torch.int64)
        if group is None:
            scales[:, 0], zeros[:, 0] = uniform_params(W, grid.bits, grid.symmetric)
        elif act_order:  # static groups over the original columns, from the dense weights
            w_orig = torch.empty_like(W)
            w_orig[:, col_of] = W
            for g in range(n_groups):
                scales[:, g], zeros[:, g] = uniform_params(w_orig[:, g * group:(g + 1) * group], grid.bits,
                                                           grid.symmetric)
    codebook = grid.per_row(rows).to(dtype) if isinstance(grid, CodebookGrid) else None

    U = inverse_cholesky(H, damp).to(dtype)  # (d, d) upper
    W = W.to(dtype)
    Q = torch.zeros_like(W)
    keep = torch.ones(rows, d, dtype=torch.bool)
    n_total = round(sparsity * rows * d)
    bsz = _aligned_block(block_size, None if act_order else group, nm[1] if nm else None)

    for i1 in range(0, d, bsz):
        i2 = min(i1 + bsz, d)
        W1 = W[:, i1:i2].clone()  # (rows, B)
        U1 = U[i1:i2, i1:i2]
        diag1 = U1.diagonal()  # (B,)
        E1 = torch.zeros_like(W1)
        keep1 = torch.ones_like(W1, dtype=torch.bool)
        if sparsity > 0:
            k = round(sparsity * rows * i2) - round(sparsity * rows * i1) if i2 < d else \
                n_total - round(sparsity * rows * i1)
            if k > 0:
                score = (W1 ** 2 / diag1 ** 2).reshape(-1)
                keep1.view(-1)[torch.topk(score, k, largest=False).indices] = False
        for i in range(i2 - i1):
            col = i1 + i
            wcol = W1[:, i]  # (rows,)
            if nm is not None and i % nm[1] == 0:
                score = W1[:, i:i + nm[1]] ** 2 / diag1[i:i + nm[1]] ** 2  # (rows, M)
                drop = torch.topk(score, nm[1] - nm[0], dim=1, largest=False).indices
                keep1[:, i:i + nm[1]].scatter_(1, drop, False)
            if uniform:
                g = int(col_of[col]) // group if group else 0
                if group and not act_order and col % group == 0:
                    scales[:, g], zeros[:, g] = uniform_params(W1[:, i:i + group], grid.bits, grid.symmetric)
                codes = uniform_codes(wcol.unsqueeze(1), scales[:, g], zeros[:, g], grid.bits)
                q = uniform_dequant(codes, scales[:, g], zeros[:, g]).squeeze(1).to(dtype)
            elif codebook is not None:
                q = nearest_centroid(wcol, codebook)[0]
            else:
                q = wcol.clone()
            q = torch.where(keep1[:, i], q, torch.zeros_like(q))
            Q[:, col] = q
            err = (wcol - q) / diag1[i]  # (rows,)
            W1[:, i:] -= err.unsqueeze(1) * U1[i, i:].unsqueeze(0)
            E1[:, i] = err
        keep[:, i1:i2] = keep1
        W[:, i2:] -= E1 @ U[i1:i2, i2:]

    if perm is not None:
        inv = torch.argsort(perm)
        Q, keep = Q[:, inv], keep[:, inv]
    Q[:, dead] = 0.0
    out = Q.float()
    if codebook is not None:
        cbf = codebook.float()
        out, codebook = _maybe_refit(w, out, h0, cbf[0] if cbf.shape[0] == 1 else cbf, keep, refit)
    has_mask = sparsity > 0 or nm is not None
    return SolveResult(out, keep if has_mask else None, scales, zeros, codebook,
                       relative_error(w, out, h0))


# ---- codebook refit --------------------------------------------------------------------------


def refit_codebook(w: torch.Tensor, labels: torch.Tensor, h: torch.Tensor, k: int,
                   max_chunk_elements: int = 1 << 25) -> torch.Tensor:
    """Centroids ``c`` (k,) minimising ``sum_r (w_r - c[L_r])^T H (w_r - c[L_r])`` with the
    assignments ``labels`` (rows, d) fixed (``-1``: a pruned entry, held at 0). Solves the
    normal equations ``G c = b``, ``G = sum_r S_r^T H S_r``, ``b = sum_r S_r^T H w_r`` with
    ``S_r`` the one-hot assignment matrix of row r; unused centroids stay NaN.

    Example:
        >>> refit_codebook(torch.tensor([[1.0, 3.0]]), torch.tensor([[0, 0]]), torch.eye(2), 1).tolist()
        [2.0]
    """
    rows, d = w.shape
    h = h.double()
    kk = k + 1  # slot k collects pruned entries
    lab = torch.where(labels < 0, torch.full_like(labels, k), labels)
    G = torch.zeros(kk, kk, dtype=torch.float64)
    b = torch.zeros(kk, dtype=torch.float64)
    hw = w.double() @ h  # (rows, d): (H w_r)^T
    b.index_add_(0, lab.reshape(-1), hw.reshape(-1))
    chunk = max(1, max_chunk_elements // (d * d))
    for r0 in range(0, rows, chunk):
        lr = lab[r0:r0 + chunk]  # (c, d)
        c = lr.shape[0]
        y = torch.zeros(c, d, kk, dtype=torch.float64)  # y[r, i, l] = sum_{j: L_rj = l} H_ij
        y.scatter_add_(2, lr.unsqueeze(1).expand(c, d, d), h.unsqueeze(0).expand(c, d, d))
        z = torch.zeros(c, kk, kk, dtype=torch.float64)
        z.scatter_add_(1, lr.unsqueeze(2).expand(c, d, kk), y)
        G += z.sum(0)
    G, b = G[:k, :k], b[:k]
    used = G.diagonal() > 0
    out = torch.full((k,), math.nan, dtype=torch.float64)
    if used.any():
        sub = G[used][:, used]
        ridge = 1e-12 * float(sub.diagonal().mean())
        out[used] = torch.linalg.solve(sub + ridge * torch.eye(int(used.sum()), dtype=torch.float64), b[used])
    return out.float()


def _maybe_refit(w, q, h, codebook, keep, refit):
    if codebook.dim() == 2:  # (rows, K): per-row-block codebooks are not refitted
        return q, codebook
    if not refit or codebook.numel() < 1:
        return q, codebook
    _, labels = nearest_centroid(q, codebook)
    labels = torch.where(keep & (q != 0), labels, torch.full_like(labels, -1)) if keep is not None else labels
    new = refit_codebook(w, labels, h, codebook.numel())
    new = torch.where(torch.isnan(new), codebook, new).half().float()  # fp16-exact centroids
    q_new = torch.where(labels >= 0, new[labels.clamp(min=0)], torch.zeros_like(q))
    if relative_error(w, q_new, h) < relative_error(w, q, h):
        return q_new, new
    return q, codebook


# ---- round to nearest (the baseline) -----------------------------------------------------------


@torch.no_grad()
def rtn_layer(w: torch.Tensor, *, grid: Grid | None = None, sparsity: float = 0.0,
              nm: tuple[int, int] | None = None) -> torch.Tensor:
    """The baseline on the same grid: magnitude pruning (per layer, or per group of M),
    then every weight to its nearest grid value (uniform parameters from the dense row or
    group). Returns (rows, d) float32.

    Example:
        >>> rtn_layer(torch.tensor([[0.4, -1.0]]), grid=UniformGrid(2, symmetric=True)).tolist()
        [[0.66650390625, -1.3330078125]]
    """
    w = w.detach().float()
    rows, d = w.shape
    keep = torch.ones_like(w, dtype=torch.bool)
    if sparsity > 0:
        k = round(sparsity * rows * d)
        keep.view(-1)[torch.topk(w.abs().reshape(-1), k, largest=False).indices] = False
    if nm is not None:
        grouped = w.abs().reshape(rows, d // nm[1], nm[1])
        drop = torch.topk(grouped, nm[1] - nm[0], dim=2, largest=False).indices
        keep &= torch.ones_like(grouped, dtype=torch.bool).scatter_(2, drop, False).reshape(rows, d)
    if isinstance(grid, UniformGrid):
        g = grid.group_size or d
        parts = w.reshape(rows * (d // g), g)
        s, z = uniform_params(parts, grid.bits, grid.symmetric)
        q = uniform_dequant(uniform_codes(parts, s, z, grid.bits), s, z).reshape(rows, d)
    elif isinstance(grid, CodebookGrid):
        q = nearest_centroid(w, grid.per_row(rows).float())[0]
    else:
        q = w.clone()
    return torch.where(keep, q, torch.zeros_like(q))
