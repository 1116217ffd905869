"""Frequency tiers of embedding rows (Q1 extended to tables): the rows the data look up
get a finer k-means codebook than the rows they never use.

An ``nn.Embedding`` only contributes the rows its inputs index. On a text model most of a
30,522-token vocabulary is rare in any one domain (all-MiniLM-L6-v2 on 6,144 Debian
package descriptions looks up 5,615 distinct rows, which cover 97% of the tokens of
held-out descriptions), yet uniform sharing spends the same bits on every row. Here the
rows are counted by hooks on the tables while calibration batches run (``count_row_usage``;
the forward stops once every counted table has seen the batch), split into tiers by a
minimum count (``row_tiers``), and each tier is clustered at its own bit width per block of
``rows_per_codebook`` of its rows (``tiered_codebooks``; ``sharing.share_rows_tiered`` with
k-means). The ``kmeans_tiers`` codec stores the result; ``tier_codebooks_of`` recovers the
codebooks from the values (for a later distillation that trains the centroids).

Rows the calibration data never used get the coarse codebook, so text far from the
calibration domain loses more: calibrate on the text the model will see.

Example:
    >>> emb = nn.Embedding(6, 4)
    >>> counts = count_row_usage(emb, {"weight": emb}, [torch.tensor([[0, 1, 1, 2]])])
    >>> counts["weight"].tolist(), row_tiers(counts["weight"], 1).tolist()
    ([1, 2, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1])
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from nncompress.errors import ConfigError

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


Cluster = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]
"""``cluster(values, bits) -> (codebook (K,), labels (n,))``: a 1-D clustering onto at most
``2^bits`` values (``sharing`` passes its seeded k-means)."""


def _check_tiers(tiers: Any, rows: int, count: int | None = None) -> np.ndarray:
    arr = np.asarray(tiers.detach().cpu() if isinstance(tiers, torch.Tensor) else tiers, dtype=np.int64)
    if arr.shape != (rows,):
        raise ConfigError(f"tiers must give one tier per row ({rows} rows), got shape {list(arr.shape)}")
    if count is not None and arr.size and (arr.min() < 0 or arr.max() >= count):
        raise ConfigError(f"tiers must lie in 0..{count - 1} (one bit width per tier), got "
                          f"{int(arr.min())}..{int(arr.max())}")
    return arr


def tiered_codebooks(weight: torch.Tensor, tiers: Any, bits: Sequence[int], rows_per_codebook: int | None,
                     cluster: Cluster) -> tuple[np.ndarray, np.ndarray]:
    """Cluster a 2-D table per tier: the rows of tier ``t`` (in row order) are clustered per
    block of ``rows_per_codebook`` of them (None: the whole tier) onto ``2^bits[t]`` values.
    Returns ``(codebook, labels)``: every tier's block codebooks, tier after tier, and the
    index of each element (row-major) into that concatenation.

    Example:
        >>> def exact(v, bits):  # each distinct value its own centroid
        ...     cb, lab = np.unique(v, return_inverse=True); return cb, lab
        >>> w = torch.tensor([[0., 1.], [7., 7.], [1., 0.]])
        >>> cb, lab = tiered_codebooks(w, [0, 1, 0], [2, 1], None, exact)
        >>> cb.tolist(), lab.reshape(3, 2).tolist()
        ([0.0, 1.0, 7.0], [[0, 1], [2, 2], [1, 0]])
    """
    vals = weight.detach().cpu().numpy()
    if vals.ndim != 2:
        raise ConfigError(f"tiered_codebooks needs a 2-D table, got shape {list(vals.shape)}")
    tier = _check_tiers(tiers, vals.shape[0], len(bits))
    labels = np.empty(vals.shape, dtype=np.int64)
    books: list[np.ndarray] = []
    offset = 0
    for t, b in enumerate(bits):
        rows = np.flatnonzero(tier == t)
        rpc = int(rows_per_codebook or max(rows.size, 1))
        for start in range(0, rows.size, rpc):
            block = rows[start:start + rpc]
            cb, lab = cluster(vals[block].reshape(-1), int(b))
            labels[block] = (np.asarray(lab, dtype=np.int64) + offset).reshape(block.size, -1)
            books.append(np.asarray(cb, dtype=np.float32))
            offset += len(cb)
    codebook = np.concatenate(books) if books else np.zeros(0, dtype=np.float32)
    return codebook, labels.reshape(-1)


def tier_codebooks_of(weight: torch.Tensor, tiers: Any, rows_per_codebook: int | None) -> tuple[np.ndarray, np.ndarray]:
    """``(codebook, labels)`` of a table whose values already lie on per-tier block codebooks
    (what ``tiered_codebooks`` made and distillation keeps): the distinct values of each
    block of ``rows_per_codebook`` rows of each tier.

    Example:
        >>> cb, _ = tier_codebooks_of(torch.tensor([[1., 2.], [7., 7.], [2., 1.]]), [0, 1, 0], None)
        >>> cb.tolist()
        [1.0, 2.0, 7.0]
    """
    tier = _check_tiers(tiers, int(weight.shape[0]))
    count = int(tier.max()) + 1 if tier.size else 0

    def distinct(v: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
        return np.unique(v, return_inverse=True)
    return tiered_codebooks(weight.float(), tier, [0] * count, rows_per_codebook, distinct)
