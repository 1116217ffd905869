"""Calibration capture for any ``nn.Module``: per Linear / Conv2d layer, the input Hessian
``H = 2/n sum_x x x^T`` of the layer's output error ``||W X - W' X||^2`` (``n`` input
rows), accumulated batch by batch without keeping activations.

Batches follow the package's convention: a Tensor (``model(b)``), a tuple/list (inputs
first: ``model(b[0])``) or a dict of tokenizer output (``model(**b)``). A Conv2d layer's
rows are its im2col patches (``nncompress.modules.layer_inputs_2d``). For a dict batch
with an ``attention_mask`` of shape (N, L), a layer input of shape (N, L, d) contributes
only the rows of real tokens (padding is not calibration data).

* :func:`capture_hessians` -- one pass, the H of every named layer (parallel mode; or of
  one group in sequential mode, stopping the forward once the group has been seen);
* :func:`input_groups` -- layers that read the same input tensor (q/k/v of an attention
  block) in the order they run; sequential compression calibrates group by group.

Example:
    >>> m = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> hs = capture_hessians(m, [torch.randn(8, 4)])
    >>> sorted(hs), tuple(hs["0"].shape)
    (['0', '2'], (4, 4))
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.modules import layer_inputs_2d

log = logging.getLogger(__name__)
LAYER_TYPES = (nn.Linear, nn.Conv2d)


class _GroupDone(Exception):
    """Raised from a hook to end a forward pass once every hooked layer has run."""


def batch_size_of(batch: Any) -> int:
    """Samples in a batch (a Tensor, a tuple/list with inputs first, or a dict).

    Example:
        >>> batch_size_of({"input_ids": torch.zeros(3, 7)}), batch_size_of((torch.zeros(5, 2), None))
        (3, 5)
    """
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, (tuple, list)) and batch:
        return batch_size_of(batch[0])
    if isinstance(batch, Mapping) and batch:
        first = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
        if first is not None:
            return int(first.shape[0])
    raise ConfigError(f"a calibration batch must be a Tensor, a tuple/list or a dict of tensors, "
                      f"got {type(batch).__name__}")


def _cut(batch: Any, n: int) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch[:n]
    if isinstance(batch, (tuple, list)):
        return type(batch)(_cut(b, n) if isinstance(b, torch.Tensor) else b for b in batch)
    return {k: (v[:n] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def limit_batches(batches: Iterable[Any], n_samples: int | None) -> Iterator[Any]:
    """The batches until ``n_samples`` samples (all when None), the last one cut to fit.

    Example:
        >>> [len(b) for b in limit_batches([torch.zeros(4, 1)] * 3, 6)]
        [4, 2]
    """
    seen = 0
    for batch in batches:
        if n_samples is not None and seen >= n_samples:
            return
        size = batch_size_of(batch)
        if n_samples is not None and seen + size > n_samples:
            batch, size = _cut(batch, n_samples - seen), n_samples - seen
        seen += size
        yield batch


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def run_batch(model: nn.Module, batch: Any) -> Any:
    """Call ``model`` on a batch by the package's convention (``model(**b)`` for a dict,
    ``model(b[0])`` for a tuple/list, ``model(b)`` for a Tensor), on the model's device.

    Example:
        >>> run_batch(nn.Identity(), (torch.ones(1), torch.zeros(1))).tolist()
        [1.0]
    """
    param = next(model.parameters(), None)
    if param is not None:
        batch = _to(batch, param.device)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def _token_mask(batch: Any) -> torch.Tensor | None:
    if isinstance(batch, Mapping):
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            return mask
    return None


def _rows(module: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None and isinstance(module, nn.Linear) and x.dim() == 3 and tuple(x.shape[:2]) == tuple(mask.shape):
        return x[mask.to(x.device).bool()]  # (real tokens, d)
    return layer_inputs_2d(module, x, "one-shot calibration")


def layer_modules(model: nn.Module, names: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """``{name: module}`` of the named Linear/Conv2d layers (all of them when None).

    Example:
        >>> list(layer_modules(nn.Sequential(nn.Linear(2, 2), nn.ReLU())))
        ['0']
    """
    found = {n: m for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}
    if names is None:
        return found
    missing = [n for n in names if n not in found]
    if missing:
        raise ConfigError(f"no Linear/Conv2d layer named {missing}; layers: {sorted(found)}")
    return {n: found[n] for n in names}


@torch.no_grad()
def capture_hessians(
    model: nn.Module,
    batches: Iterable[Any],
    layers: Sequence[str] | None = None,
    *,
    n_samples: int | None = None,
    dtype: torch.dtype = torch.float64,
    stop_early: bool = False,
) -> dict[str, torch.Tensor]:
    """``{layer name: H (d, d)}`` with ``H = 2/n sum x x^T`` over every input row ``x`` the
    layer saw while ``model`` ran on ``batches`` (up to ``n_samples`` samples).

    Only the running sums (``dtype``) are kept: memory is one H per named layer plus one
    batch's activations. ``stop_early`` ends each forward pass as soon as every named layer
    has run once (the rest of the model is not needed; a layer that runs twice in one
    forward then sees only its first call). The model runs in eval mode and is restored.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2))
        >>> capture_hessians(m, [torch.ones(4, 2)])["0"].tolist()
        [[2.0, 2.0], [2.0, 2.0]]
    """
    mods = layer_modules(model, layers)
    sums = {n: None for n in mods}
    counts = dict.fromkeys(mods, 0)
    seen: set[str] = set()
    current: dict[str, Any] = {"mask": None}

    def make_hook(name):
        def hook(mod, inputs):
            rows = _rows(mod, inputs[0].detach(), current["mask"]).to(dtype)  # (n, d)
            part = rows.T @ rows
            sums[name] = part if sums[name] is None else sums[name].add_(part)
            counts[name] += rows.shape[0]
            seen.add(name)
            if stop_early and len(seen) == len(mods):
                raise _GroupDone
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in mods.items()]
    was_training = model.training
    model.eval()
    try:
        for batch in limit_batches(batches, n_samples):
            current["mask"] = _token_mask(batch)
            seen.clear()
            try:
                run_batch(model, batch)
            except _GroupDone:
                pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    out = {}
    for name, s in sums.items():
        if s is None or counts[name] == 0:
            raise ConfigError(f"layer {name!r} received no calibration input (is it used in the forward pass?)")
        out[name] = s.mul_(2.0 / counts[name])
    return out


@torch.no_grad()
def input_groups(model: nn.Module, batch: Any, layers: Sequence[str] | None = None) -> list[list[str]]:
    """The named layers grouped by the input tensor they read, in the order they first run
    on ``batch`` (q, k and v of an attention block form one group). Layers that never run
    come last, each alone.

    Example:
        >>> class Two(nn.Module):
        ...     def __init__(self):
        ...         super().__init__(); self.a, self.b = nn.Linear(2, 2), nn.Linear(2, 2)
        ...     def forward(self, x): return self.a(x) + self.b(x)
        >>> input_groups(Two(), torch.zeros(1, 2))
        [['a', 'b']]
    """
    mods = layer_modules(model, layers)
    order: list[tuple[str, torch.Tensor]] = []

    def make_hook(name):
        def hook(mod, inputs):
            if all(n != name for n, _ in order):
                order.append((name, inputs[0]))
        return hook

    handles = [m.register_forward_pre_hook(make_hook(n)) for n, m in mods.items()]
    was_training = model.training
    model.eval()
    try:
        run_batch(model, batch)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    groups: list[list[str]] = []
    tensors: list[torch.Tensor] = []
    for name, x in order:
        for g, t in zip(groups, tensors):
            if t is x:
                g.append(name)
                break
        else:
            groups.append([name])
            tensors.append(x)
    ran = {n for n, _ in order}
    groups += [[n] for n in mods if n not in ran]
    return groups
