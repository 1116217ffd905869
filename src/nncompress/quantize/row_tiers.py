"""Frequency tiers of embedding rows (Q1 extended to tables): the rows the data look up
get a finer k-means codebook than the rows they never use.

An ``nn.Embedding`` only contributes the rows its inputs index. On a text model most of a
30,522-token vocabulary is rare in any one domain (all-MiniLM-L6-v2 on 6,144 Debian
package descriptions looks up 5,615 distinct rows, which cover 97% of the tokens of
held-out descriptions), yet uniform sharing spends the same bits on every row. Here the
rows are counted by hooks on the tables while calibration batches run (``count_row_usage``;
the forward stops once every counted table has seen the batch), split into tiers by a
minimum count (``row_tiers``), and each tier is shared by k-means at its own bit width per
block of ``rows_per_codebook`` of its rows (``share_rows_tiered``). The ``kmeans_tiers``
codec stores the result; ``sharing_of_tiers`` recovers the sharing from the values (for
a later distillation that trains the centroids).

Rows the calibration data never used get the coarse codebook, so text far from the
calibration domain loses more: calibrate on the text the model will see.

Example:
    >>> emb = nn.Embedding(6, 4)
    >>> counts = count_row_usage(emb, {"weight": emb}, [torch.tensor([[0, 1, 1, 2]])])
    >>> counts["weight"].tolist(), row_tiers(counts["weight"], 1).tolist()
    ([1, 2, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.quantize.kmeans1d import kmeans_1d

MAX_COUNT_BATCHES = 100_000
"""A bound on the batches counted (an endless iterable stops here)."""


class _AllSeen(Exception):
    """Raised by the last hook of a batch: the rest of the forward is not needed."""


def _attention_mask(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            return mask
    return None


@torch.no_grad()
def count_row_usage(model: nn.Module, tables: Mapping[str, nn.Embedding], batches: Iterable[Any],
                    max_batches: int = MAX_COUNT_BATCHES) -> dict[str, torch.Tensor]:
    """How often each row of each table is looked up while ``batches`` run through
    ``model`` (``run_batch`` convention: dict, tuple with inputs first, or a tensor).

    ``tables``: name -> ``nn.Embedding`` module of ``model``; the result maps the same names
    to int64 counts of shape ``(num_embeddings,)``. Positions whose ``attention_mask`` (a
    dict batch's, when its shape is the lookup's) is 0 are not counted. The model runs in
    eval mode only as far as the last counted table of each batch.

    Example:
        >>> emb = nn.Embedding(3, 2)
        >>> count_row_usage(emb, {"w": emb}, [torch.tensor([2, 2])])["w"].tolist()
        [0, 0, 2]
    """
    # imported here: oneshot imports sharing, which imports this module
    from nncompress.quantize.oneshot.calibration import run_batch

    for name, mod in tables.items():
        if not isinstance(mod, nn.Embedding):
            raise ConfigError(f"count_row_usage: {name!r} is a {type(mod).__name__}, not an nn.Embedding")
    counts = {n: torch.zeros(m.num_embeddings, dtype=torch.int64) for n, m in tables.items()}
    seen: set[str] = set()
    mask_now: list[torch.Tensor | None] = [None]

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            ids = args[0].detach().cpu().long()
            mask = mask_now[0]
            if mask is not None and tuple(mask.shape) == tuple(ids.shape):
                ids = ids[mask.cpu().bool()]
            counts[name] += torch.bincount(ids.reshape(-1), minlength=counts[name].numel())[:counts[name].numel()]
            seen.add(name)
            if len(seen) == len(counts):
                raise _AllSeen
        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in tables.items()]
    was_training = model.training
    model.eval()
    n = 0
    try:
        for batch in batches:
            if n >= max_batches:
                break
            seen.clear()
            mask_now[0] = _attention_mask(batch)
            try:
                run_batch(model, batch)
            except _AllSeen:
                pass
            n += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if n == 0:
        raise ConfigError("count_row_usage: no batches given (frequency tiers need the run's data)")
    return counts


def row_tiers(counts: torch.Tensor, min_count: int) -> torch.Tensor:
    """Tier of each row: 0 (frequent) when looked up at least ``min_count`` times, else 1.

    Example:
        >>> row_tiers(torch.tensor([5, 0, 1]), 2).tolist()
        [0, 1, 1]
    """
    if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
        raise ConfigError(f"rare_below={min_count!r} not allowed; allowed: an integer >= 1")
    return (counts < min_count).to(torch.int64)


def _block_kmeans(vals: np.ndarray, bits: int, rpc: int, cfg: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """k-means codebook (sorted, compacted) and labels of each block of ``rpc`` rows of ``vals``."""
    from nncompress.quantize.sharing import _compact

    books, labels = [], []
    for start in range(0, vals.shape[0], rpc):
        block = vals[start:start + rpc].reshape(-1)
        res = kmeans_1d(block, 2**bits, init=cfg.init, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed)
        cb, lab = _compact(res.centroids, res.labels)
        books.append(cb)
        labels.append(lab)
    return books, labels


def share_rows_tiered(weight: torch.Tensor, tiers: torch.Tensor, bits: Sequence[int],
                      rows_per_codebook: int | None, cfg: Any):
    """Share a 2-D table per tier: the rows of tier ``t`` (in row order) are clustered per
    block of ``rows_per_codebook`` of them (None: the whole tier) onto ``2^bits[t]``
    centroids. Returns a ``LayerSharing`` whose codebook is every tier's block codebooks,
    tier after tier; ``cfg`` is a ``SharingConfig`` (k-means init, iterations, seed).

    Example:
        >>> from nncompress.quantize.sharing import SharingConfig
        >>> w = torch.tensor([[0., 1., 1.], [4., 5., 9.], [0., 1., 0.]])
        >>> s = share_rows_tiered(w, torch.tensor([0, 1, 0]), [2, 1], None, SharingConfig())
        >>> s.codebook.tolist(), s.values().reshape(3, 3)[1].tolist()  # the rare row: 1 bit
        ([0.0, 1.0, 4.5, 9.0], [4.5, 4.5, 9.0])
    """
    from nncompress.quantize.sharing import LayerSharing

    w = weight.detach()
    if w.dim() != 2:
        raise ConfigError(f"share_rows_tiered needs a 2-D table, got shape {list(w.shape)}")
    tier = tiers.detach().cpu().long()
    if tier.shape != (w.shape[0],):
        raise ConfigError(f"tiers must give one tier per row ({w.shape[0]} rows), got shape {list(tier.shape)}")
    if tier.numel() and (tier.min() < 0 or tier.max() >= len(bits)):
        raise ConfigError(f"tiers must lie in 0..{len(bits) - 1} (one bit width per tier), got "
                          f"{int(tier.min())}..{int(tier.max())}")
    vals = w.cpu().numpy()
    labels = np.empty(vals.shape, dtype=np.int64)
    books: list[np.ndarray] = []
    offset = 0
    for t, b in enumerate(bits):
        rows = np.flatnonzero(tier.numpy() == t)
        if rows.size == 0:
            continue
        rpc = rows_per_codebook or rows.size
        cbs, labs = _block_kmeans(vals[rows], int(b), rpc, cfg)
        sub = np.empty((rows.size, vals.shape[1]), dtype=np.int64)
        for i, (cb, lab) in enumerate(zip(cbs, labs, strict=True)):
            sub[i * rpc:(i + 1) * rpc] = (lab + offset).reshape(-1, vals.shape[1])
            books.append(cb)
            offset += cb.size
        labels[rows] = sub
    codebook = np.concatenate(books).astype(np.float32) if books else np.zeros(0, dtype=np.float32)
    return LayerSharing(torch.from_numpy(codebook).to(w.device), torch.from_numpy(labels.reshape(-1)).to(w.device),
                        torch.ones(w.shape, dtype=torch.bool, device=w.device), int(max(bits)))


def sharing_of_tiers(weight: torch.Tensor, tiers: Any, rows_per_codebook: int | None, bits: int = 8):
    """The ``LayerSharing`` of a table whose values already lie on per-tier block codebooks
    (what ``share_rows_tiered`` made and distillation keeps): the distinct values of each
    block of ``rows_per_codebook`` rows of each tier become its codebook.

    Example:
        >>> w = torch.tensor([[1., 2.], [7., 7.], [2., 1.]])
        >>> sharing_of_tiers(w, [0, 1, 0], None).codebook.tolist()
        [1.0, 2.0, 7.0]
    """
    from nncompress.quantize.sharing import LayerSharing

    w = weight.detach()
    tier = torch.as_tensor(np.asarray(tiers), dtype=torch.int64).cpu()
    if tier.shape != (w.shape[0],):
        raise ConfigError(f"tiers must give one tier per row ({w.shape[0]} rows), got shape {list(tier.shape)}")
    labels = torch.empty(w.shape, dtype=torch.int64)
    books, offset = [], 0
    for t in range(int(tier.max()) + 1 if tier.numel() else 0):
        rows = torch.nonzero(tier == t).flatten()
        if rows.numel() == 0:
            continue
        rpc = int(rows_per_codebook or rows.numel())
        for start in range(0, rows.numel(), rpc):
            block = rows[start:start + rpc]
            cb, lab = torch.unique(w[block].float().cpu().reshape(-1), return_inverse=True)
            labels[block] = (lab + offset).reshape(block.numel(), -1)
            books.append(cb)
            offset += cb.numel()
    codebook = torch.cat(books) if books else torch.zeros(0)
    return LayerSharing(codebook.to(w.device), labels.reshape(-1).to(w.device),
                        torch.ones(w.shape, dtype=torch.bool, device=w.device), bits)
