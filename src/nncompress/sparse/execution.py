"""P7: run a pruned model with sparse kernels where that is measured faster.

``to_sparse_inference`` finds the pruned ``nn.Linear`` / ``nn.Conv2d`` layers, captures
each one's input on an example batch, times the dense layer against its CSR version
(interleaved repeats, medians) and swaps in the sparse module where it wins by
``min_speedup``. Only exact ``nn.Linear``/``nn.Conv2d`` instances are replaced: subclasses
may be used through their ``.weight`` by a parent (``MultiheadAttention.out_proj``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.checks import check_choice, check_float
from nncompress.errors import ConfigError
from nncompress.modules import set_submodule
from nncompress.prune.targets import module_of, prunable_weights
from nncompress.sparse.modules import SparseConv2d, SparseLinear, conv2d_unsupported
from nncompress.sparse.threads import check_threads
from nncompress.sparse.timing import interleaved_medians

logger = logging.getLogger(__name__)

MODES = ("auto", "sparse", "dense")
SPARSE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d)


@dataclass
class SparseLayerReport:
    """One layer's measurement and decision (times in ms, at the example batch size)."""

    name: str
    kind: str
    shape: list[int]
    sparsity: float
    nnz: int
    dense_ms: float | None = None
    sparse_ms: float | None = None
    speedup: float | None = None
    threads: int | None = None
    choice: str = "dense"
    reason: str = ""


@dataclass
class SparseReport:
    """What ``to_sparse_inference`` measured and chose."""

    mode: str
    torch_threads: int
    min_speedup: float
    layers: list[SparseLayerReport] = field(default_factory=list)
    max_abs_diff: float | None = None

    @property
    def sparse_layers(self) -> list[str]:
        """Names of the layers now running sparse."""
        return [r.name for r in self.layers if r.choice == "sparse"]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return asdict(self)


def _call(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


def _capture_inputs(model: nn.Module, names: Iterable[str], example_input: Any) -> tuple[
        dict[str, torch.Tensor], Any]:
    """First positional input of each named module on one forward pass, and the output."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    for name in names:
        def hook(_mod, args, _name=name):
            if _name not in captured and args and torch.is_tensor(args[0]):
                captured[_name] = args[0].detach()
        handles.append(model.get_submodule(name).register_forward_pre_hook(hook))
    try:
        with torch.inference_mode():
            out = _call(model, example_input)
    finally:
        for h in handles:
            h.remove()
    return captured, out


def _sparse_version(mod: nn.Module, threads: int | None) -> nn.Module:
    if isinstance(mod, nn.Linear):
        return SparseLinear.from_dense(mod, threads)
    return SparseConv2d.from_dense(mod, threads)


def _unsupported(mod: nn.Module) -> str | None:
    if type(mod) not in SPARSE_TYPES:
        return f"{type(mod).__name__} is not exactly nn.Linear/nn.Conv2d"
    if isinstance(mod, nn.Conv2d):
        return conv2d_unsupported(mod)
    return None


def _max_abs_diff(a: Any, b: Any) -> float | None:
    if torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape:
        return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        diffs = [_max_abs_diff(a[k], b[k]) for k in a if k in b]
    elif isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        diffs = [_max_abs_diff(x, y) for x, y in zip(a, b)]
    else:
        return None
    diffs = [d for d in diffs if d is not None]
    return max(diffs) if diffs else None


def to_sparse_inference(
    model: nn.Module,
    example_input: Any,
    mode: str = "auto",
    *,
    min_speedup: float = 1.1,
    repeats: int = 30,
    warmup: int = 3,
    sparse_threads: Sequence[int | None] = (None, 1),
    include: Iterable[str] | None = None,
    exclude: Iterable[str] = (),
    inplace: bool = False,
) -> tuple[nn.Module, SparseReport]:
    """Replace pruned Linear/Conv2d layers by CSR versions where they run faster.

    Args:
        model: any module; put in eval mode (the sparse modules are inference-only).
        example_input: a tensor, a tuple of positional inputs or a dict of keyword inputs,
            with the batch size you will run at (the choice depends on it).
        mode: ``auto`` (measure; sparse where ``dense_ms / sparse_ms >= min_speedup``),
            ``sparse`` (every supported pruned layer) or ``dense`` (none; report only).
        repeats, warmup: interleaved timing repeats per layer (medians are compared).
        sparse_threads: thread counts tried for each sparse layer (``None`` = torch's
            current count); the fastest is kept on the module.
        include, exclude: glob patterns over module names, as in ``prunable_weights``.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        ``(model, report)``; the report has one row per Linear/Conv layer (sparsity, dense
        and sparse ms, speedup, choice, reason) and the max |difference| of the outputs on
        ``example_input``.

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.prune.magnitude import magnitude_prune
        >>> model = build_model("lenet300"); _ = magnitude_prune(model, sparsity=0.95)
        >>> fast, report = to_sparse_inference(model, torch.randn(1, 1, 28, 28), mode="sparse", repeats=2)
        >>> report.sparse_layers, report.max_abs_diff < 1e-4  # mode="auto" keeps only faster layers
        (['fc1', 'fc2', 'fc3'], True)
    """
    check_choice(mode, MODES, "mode")
    check_float(min_speedup, "min_speedup", 0, lo_open=True)
    if not sparse_threads:
        raise ConfigError("sparse_threads must name at least one thread count (None = current)")
    for t in sparse_threads:
        check_threads(t)
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    report = SparseReport(mode=mode, torch_threads=torch.get_num_threads(),
                          min_speedup=float(min_speedup))

    weights = prunable_weights(model, include, exclude)
    rows: dict[str, SparseLayerReport] = {}
    for pname, w in weights.items():
        name = pname.rsplit(".", 1)[0]
        mod = module_of(model, pname)
        nnz = int((w != 0).sum())
        row = SparseLayerReport(name=name, kind=type(mod).__name__, shape=list(w.shape),
                                sparsity=1.0 - nnz / max(w.numel(), 1), nnz=nnz)
        why = _unsupported(mod)
        if why is not None:
            row.reason = f"unsupported: {why}"
        elif nnz == w.numel():
            row.reason = "not pruned"
        rows[name] = row
    report.layers = list(rows.values())
    todo = [n for n, r in rows.items() if not r.reason]

    inputs, dense_out = _capture_inputs(model, todo, example_input)
    for name in todo:
        row = rows[name]
        if name not in inputs:
            row.reason = "not called by example_input"
            continue
        dense = model.get_submodule(name)
        x = inputs[name]
        threads = dict.fromkeys(None if t == report.torch_threads else t for t in sparse_threads)
        candidates = {f"sparse@{t}": _sparse_version(dense, t) for t in threads}
        fns = {"dense": lambda m=dense: m(x)}
        fns.update({k: (lambda m=m: m(x)) for k, m in candidates.items()})
        ms = interleaved_medians(fns, repeats=repeats, warmup=warmup)
        best = min(candidates, key=lambda k: ms[k])
        row.dense_ms, row.sparse_ms = ms["dense"], ms[best]
        row.speedup = ms["dense"] / ms[best]
        row.threads = candidates[best].threads
        if mode == "sparse" or (mode == "auto" and row.speedup >= min_speedup):
            row.choice = "sparse"
            row.reason = "forced" if mode == "sparse" else f"{row.speedup:.2f}x >= {min_speedup}"
            set_submodule(model, name, candidates[best])
        else:
            row.reason = "mode=dense" if mode == "dense" else f"{row.speedup:.2f}x < {min_speedup}"
        logger.info("%s: sparsity %.3f dense %.3f ms sparse %.3f ms -> %s", name, row.sparsity,
                    row.dense_ms, row.sparse_ms, row.choice)

    with torch.inference_mode():
        report.max_abs_diff = _max_abs_diff(dense_out, _call(model, example_input))
    return model, report


def load_sparse(path: str | Path, example_input: Any, model: nn.Module | None = None,
                mode: str = "auto", **kwargs: Any) -> tuple[nn.Module, SparseReport]:
    """Load a ``.nnc`` file for inference with sparse kernels where they are faster.

    ``nncompress.load(path, model)`` followed by ``to_sparse_inference`` on the loaded model
    (in place); ``kwargs`` go to ``to_sparse_inference``.

    Example:
        >>> import tempfile; from pathlib import Path
        >>> import nncompress
        >>> from nncompress.models import build_model
        >>> path = Path(tempfile.mkdtemp()) / "lenet300.nnc"
        >>> _ = nncompress.save(build_model("lenet300"), path)
        >>> model, report = load_sparse(path, torch.randn(1, 1, 28, 28), mode="dense", repeats=2)
        >>> type(model).__name__, report.sparse_layers
        ('LeNet300100', [])
    """
    from nncompress.format import load

    loaded = load(path, model=model)
    return to_sparse_inference(loaded, example_input, mode, inplace=True, **kwargs)
