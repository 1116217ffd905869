"""One-shot second-order compression of a whole model (OBQ / GPTQ / SparseGPT, the S10
layer-wise OBS scaled up): ``oneshot_compress(model, OneShotConfig(...), batches)``.

Every selected Linear / Conv2d layer is compressed by :func:`nncompress.quantize.oneshot.solver.
solve_layer` from its input Hessian (:mod:`nncompress.quantize.oneshot.calibration`). Sequential
mode (default) calibrates each group of layers reading the same input (q/k/v) on the
outputs of the layers already compressed, re-running the model per group and keeping only
that group's H; parallel mode takes every H from the dense model in one pass.

The weights are changed in place; the result carries the masks of pruned weights, the
k-means codebooks as ``SharedWeights`` (so ``CentroidFineTuner`` and distillation can
fine-tune the centroids), the codec hints ``save`` uses (``kmeans_rows`` for dense codebook layers, ``deep`` for pruned ones, ``gptq``
for uniform grids: b-bit codes with fp16 scales, decoding to exactly these weights), and
per layer the relative output error ``||WX - W'X||^2 / ||WX||^2`` next to that of
round-to-nearest on the same grid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.checks import check_choice, check_float, check_int
from nncompress.errors import ConfigError
from nncompress.format import set_codec_hints
from nncompress.modules import select_layers
from nncompress.prune.mask import Masks
from nncompress.quantize.kmeans1d import kmeans_1d
from nncompress.quantize.oneshot.calibration import (
    LAYER_TYPES,
    batch_size_of,
    capture_hessians,
    input_groups,
    limit_batches,
)
from nncompress.quantize.oneshot.solver import (
    CodebookGrid,
    Grid,
    UniformGrid,
    relative_error,
    rtn_layer,
    solve_layer,
)
from nncompress.quantize.sharing import LayerSharing, SharedWeights, sharing_of

log = logging.getLogger(__name__)
GRIDS = ("uniform", "kmeans")
HESSIAN_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def parse_nm(value: str | None) -> tuple[int, int] | None:
    """``"N:M"`` -> ``(N, M)`` with ``0 < N < M`` (N kept of every M inputs); None passes.

    Example:
        >>> parse_nm("2:4")
        (2, 4)
    """
    if value is None:
        return None
    parts = str(value).split(":") if isinstance(value, str) else []
    try:
        n, m = (int(p) for p in parts)
    except ValueError:
        n = m = None
    if n is None or not 0 < n < m:
        raise ConfigError(f"nm must be 'N:M' with integers 0 < N < M (N kept of every M), got {value!r}")
    return n, m


@dataclass
class OneShotConfig:
    """Settings of one-shot second-order compression.

    Example:
        >>> OneShotConfig(bits=4, group_size=128).grid
        'uniform'
    """

    bits: int | None = None
    """Bits per weight of the quantization grid, 2..8 (None: no quantization)."""
    sparsity: float = 0.0
    """Fraction of each layer's weights pruned, in [0, 1) (SparseGPT's adaptive mask)."""
    nm: str | None = None
    """Semi-structured sparsity 'N:M': N weights kept in every M consecutive inputs."""
    group_size: int | None = None
    """Inputs per scale of the uniform grid (None: one scale per output channel)."""
    symmetric: bool = False
    """Uniform grid symmetric around 0 (zero point 2^(bits-1)) instead of min/max."""
    grid: str = "uniform"
    """'uniform' (affine b-bit codes) or 'kmeans' (the layer's 2^bits k-means centroids)."""
    refit: bool = False
    """k-means grid: refit the centroids by least squares on the calibration inputs after
    the pass, kept when it lowers their error (on all-MiniLM-L6-v2 it lowered the layer
    errors but cost held-out embedding cosine, so it is off by default)."""
    rows_per_codebook: int | None = None
    """k-means grid: one codebook per block of this many output rows (None: one per layer);
    each block's fp16 codebook costs ``2^bits x 16`` bits in the file."""
    damp: float = 0.01
    """Dampening added to H, as a fraction of its mean diagonal, in (0, 1)."""
    block_size: int = 128
    """Columns per block of the lazy-update loop."""
    act_order: bool = False
    """Handle columns by decreasing diag H (GPTQ's act-order)."""
    sequential: bool = True
    """Calibrate each layer group on the outputs of the layers already compressed."""
    include: list[str] | None = None
    """Glob patterns of the Linear/Conv2d layers to compress (default: all)."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of layers left as they are."""
    n_samples: int | None = 256
    """Calibration samples (None: every batch given)."""
    hessian_dtype: str = "float64"
    """Accumulator of H: 'float64' or 'float32'."""

    def __post_init__(self) -> None:
        if self.bits is not None:
            self.bits = check_int(self.bits, "bits", 2, 8)
        self.sparsity = check_float(self.sparsity, "sparsity", 0, 1, hi_open=True)
        self.nm_pair = parse_nm(self.nm)
        if self.group_size is not None:
            self.group_size = check_int(self.group_size, "group_size", 1)
        check_choice(self.grid, GRIDS, "grid")
        self.damp = check_float(self.damp, "damp", 0, 1, lo_open=True, hi_open=True)
        self.block_size = check_int(self.block_size, "block_size", 1)
        if self.n_samples is not None:
            self.n_samples = check_int(self.n_samples, "n_samples", 1)
        check_choice(self.hessian_dtype, tuple(HESSIAN_DTYPES), "hessian_dtype")
        if self.bits is None and self.sparsity == 0 and self.nm_pair is None:
            raise ConfigError("one-shot compression needs bits (2..8), sparsity in (0, 1) or nm 'N:M'; got none")
        if self.sparsity > 0 and self.nm_pair is not None:
            raise ConfigError(f"give sparsity ({self.sparsity}) or nm ({self.nm!r}), not both")
        if self.rows_per_codebook is not None:
            self.rows_per_codebook = check_int(self.rows_per_codebook, "rows_per_codebook", 1)
            if self.grid != "kmeans":
                raise ConfigError(f"rows_per_codebook={self.rows_per_codebook} needs grid 'kmeans'")
        if self.group_size is not None and (self.bits is None or self.grid != "uniform"):
            raise ConfigError(f"group_size={self.group_size} needs bits and grid 'uniform' (got bits={self.bits}, "
                              f"grid={self.grid!r})")
        if self.nm_pair is not None and self.act_order:
            raise ConfigError("act_order cannot be combined with nm (N:M groups follow the input order)")
        if self.include is not None:
            self.include = [str(p) for p in self.include]
        self.exclude = [str(p) for p in self.exclude]

    def solver_grid(self, w: torch.Tensor) -> Grid | None:
        """The grid of one layer: uniform, or the 2^bits k-means centroids (fp16 values) of
        its nonzero weights."""
        if self.bits is None:
            return None
        if self.grid == "uniform":
            return UniformGrid(self.bits, self.symmetric, self.group_size)
        rows = w.shape[0]
        rpc = self.rows_per_codebook or rows
        books = []
        for start in range(0, rows, rpc):
            block = w[start:start + rpc]
            vals = block[block != 0].double().cpu().numpy()
            cb = torch.from_numpy(kmeans_1d(vals, 2 ** self.bits).centroids).float() if vals.size else torch.zeros(1)
            books.append(torch.unique(cb.half().float()))
        if len(books) == 1:
            return CodebookGrid(books[0])
        k = max(b.numel() for b in books)
        padded = torch.stack([torch.cat([b, b[-1:].expand(k - b.numel())]) for b in books])  # (blocks, K)
        return CodebookGrid(padded, rpc)


@dataclass
class OneShotResult:
    """What ``oneshot_compress`` did: ``masks`` of pruned weights (None without sparsity),
    ``shared`` codebooks of the k-means grid (None otherwise), ``errors[layer] = {"obs",
    "rtn"}`` relative output errors, a JSON-able ``summary``."""

    masks: Masks | None
    shared: SharedWeights | None
    errors: dict[str, dict[str, float]]
    summary: dict[str, Any]


def select_oneshot_layers(model: nn.Module, config: OneShotConfig) -> dict[str, nn.Module]:
    """The Linear/Conv2d layers the config selects; ``ConfigError`` for a pattern that names
    no layer (listing them) or a layer the solver cannot take, before any work.

    Example:
        >>> list(select_oneshot_layers(nn.Sequential(nn.Linear(4, 4)), OneShotConfig(bits=4)))
        ['0']
    """
    every = select_layers(model, types=LAYER_TYPES)
    for what, patterns in (("include", config.include or []), ("exclude", config.exclude)):
        for p in patterns:
            if not select_layers(model, [p], types=LAYER_TYPES):
                raise ConfigError(f"{what} pattern {p!r} matches no Linear/Conv2d layer; layers: {list(every)}")
    chosen = select_layers(model, config.include, config.exclude, types=LAYER_TYPES)
    if not chosen:
        raise ConfigError(f"no layer selected (include={config.include}, exclude={config.exclude}); "
                          f"layers: {list(every)}")
    for name, mod in chosen.items():
        d = mod.weight[0].numel()
        if isinstance(mod, nn.Conv2d) and (mod.groups != 1 or isinstance(mod.padding, str)
                                           or mod.padding_mode != "zeros"):
            raise ConfigError(f"layer {name!r}: one-shot compression takes Conv2d with groups=1 and numeric "
                              f"zero padding")
        if config.group_size is not None and d % config.group_size:
            raise ConfigError(f"group_size={config.group_size} must divide the {d} inputs of layer {name!r}")
        if config.nm_pair is not None and d % config.nm_pair[1]:
            raise ConfigError(f"nm {config.nm!r}: M={config.nm_pair[1]} must divide the {d} inputs of layer {name!r}")
    return chosen


@torch.no_grad()
def oneshot_compress(model: nn.Module, config: OneShotConfig, batches: Iterable[Any]) -> OneShotResult:
    """Compress the selected layers of ``model`` in place from calibration ``batches``
    (Tensors, tuples/lists or tokenizer dicts; see the module docstring).

    Example:
        >>> model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
        >>> res = oneshot_compress(model, OneShotConfig(bits=4), [torch.randn(64, 16)])
        >>> sorted(res.errors), res.errors["0"]["obs"] <= res.errors["0"]["rtn"]
        (['0', '2'], True)
    """
    start = time.perf_counter()
    layers = select_oneshot_layers(model, config)
    data = list(limit_batches(batches, config.n_samples))
    if not data:
        raise ConfigError("oneshot_compress got no calibration batch")
    dtype = HESSIAN_DTYPES[config.hessian_dtype]
    names = list(layers)
    if config.sequential:
        groups = input_groups(model, data[0], names)
    else:
        groups = [names]
    masks: dict[str, torch.Tensor] = {}
    shared: dict[str, LayerSharing] = {}
    errors: dict[str, dict[str, float]] = {}
    hints: dict[str, Any] = {}
    t_calib = 0.0
    for group in groups:
        t0 = time.perf_counter()
        hs = capture_hessians(model, data, group, dtype=dtype, stop_early=config.sequential)
        t_calib += time.perf_counter() - t0
        for name in group:
            _compress_layer(name, layers[name], hs.pop(name), config, masks, shared, errors, hints)
    if hints:
        set_codec_hints(model, hints)
    seconds = time.perf_counter() - start
    obs = [e["obs"] for e in errors.values()]
    rtn = [e["rtn"] for e in errors.values()]
    summary = {
        "config": {k: v for k, v in asdict(config).items()},
        "layers": len(errors), "groups": len(groups), "samples": sum(batch_size_of(b) for b in data),
        "mean_error_obs": sum(obs) / len(obs), "mean_error_rtn": sum(rtn) / len(rtn),
        "seconds": seconds, "calibration_seconds": t_calib,
    }
    log.info("one-shot: %d layers in %.1f s, mean relative error %.3g (round-to-nearest %.3g)",
             len(errors), seconds, summary["mean_error_obs"], summary["mean_error_rtn"])
    return OneShotResult(Masks(masks) if masks else None, SharedWeights(shared) if shared else None,
                         errors, summary)


def _compress_layer(name, module, h, config, masks, shared, errors, hints) -> None:
    p = module.weight
    w2d = p.detach().reshape(p.shape[0], -1).float().cpu()  # (out, d)
    grid = config.solver_grid(w2d)
    res = solve_layer(w2d, h.cpu(), grid=grid, sparsity=config.sparsity, nm=config.nm_pair,
                      block_size=config.block_size, damp=config.damp, act_order=config.act_order,
                      refit=config.refit)
    rtn = relative_error(w2d, rtn_layer(w2d, grid=grid, sparsity=config.sparsity, nm=config.nm_pair), h)
    errors[name] = {"obs": res.error, "rtn": rtn}
    pname = f"{name}.weight"
    p.copy_(res.weight.view_as(p).to(p.dtype))
    if res.mask is not None:
        masks[pname] = res.mask.view(p.shape).to(p.device)
    if isinstance(grid, CodebookGrid):
        if grid.rows_per_codebook is not None and p.dim() == 2:  # a codebook per block of rows
            shared[pname] = sharing_of(p, int(config.bits), grid.rows_per_codebook)
            hints[pname] = ("kmeans_rows", {"rows_per_codebook": grid.rows_per_codebook})
        else:
            shared[pname] = sharing_of(p, int(config.bits))
            # a dense 2-D layer: codebook + indices, no positions (kmeans_rows); else deep (CSR)
            hints[pname] = ("kmeans_rows", {}) if res.mask is None and p.dim() == 2 else ("deep", {})
    elif isinstance(grid, UniformGrid):
        hints[pname] = ("gptq", {"bits": grid.bits, "group_size": grid.group_size, "scales": res.scales,
                                 "zeros": res.zeros})
    log.info("one-shot %s: relative error %.4g (round-to-nearest %.4g)", name, res.error, rtn)
