"""Q1 weight sharing by k-means (Han et al., Deep Compression, arXiv 1510.00149, Sec. 3).

Per layer, the **nonzero** weights are clustered into ``2^b`` groups (paper: b = 8 for conv,
5 for fully connected layers) with Lloyd's k-means (``kmeans_1d``, linear initialisation by
default, the paper's choice); every weight is replaced by its centroid. Pruned zeros are
not clustered and stay exactly zero. The layer is then stored as a codebook of ``K <= 2^b``
float32 values plus one b-bit index per nonzero weight, a compression of

    r = n * 32 / (n * b + 2^b * 32)        (``sharing_ratio``, Eq. 1 of the paper)

Storage convention (``LayerSharing``): ``mask`` (weight shape, bool) marks the shared
positions (the weights that were nonzero), ``labels`` (nnz,) int64 holds the codebook index
of each of them in row-major order (the order of ``weight[mask]``), ``codebook`` (K,) float32
is sorted ascending with unused and duplicate centroids removed, so K can be below 2^b. For
the file format, ``SharedWeights.layer_codebook(name)`` returns the codebook and a
full-shape index tensor with entries in [0, K) at shared positions and -1 at zeros.

Fine-tuning (``CentroidFineTuner``, a training ``Callback``): the gradient of a centroid is
the sum of the gradients of the weights that share it (``centroid_gradient``); the
centroids take a plain SGD step ``c <- c - lr * dL/dc`` (the paper's update, ``step="sum"``;
optional momentum) or, with ``step="mean"`` (``method: kmeans``'s default), ``c <- c - lr *
dL/dc / n_c`` with ``n_c`` the centroid's members (the summed step grows with the cluster:
at 2 bits on LeNet-5, 10^5 weights per centroid, the weights' lr 0.01 diverged to NaN;
the mean step moves a centroid as far as one member weight would move), and every shared weight is rewritten to its centroid after each optimizer step,
so the model always equals ``codebook[labels]`` at shared positions and 0 elsewhere.

Embedding tables (``nn.Embedding``, and a Linear output head tied to one: the Parameter is
shared once) are shared only when ``SharingConfig.bits_emb`` is set: every value of the
table is clustered (a table is dense: its mask is all True), per table or per block of
``rows_per_codebook`` rows, each block with its own ``2^bits_emb`` centroids
(``share_rows``). The blocks' codebooks are concatenated into one ``codebook`` and
``labels`` index it, so fine-tuning and ``apply`` treat them like any layer; the file
stores them with the ``kmeans_rows`` codec (``quantize/rowblock_codec.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.format.codecs import set_codec_hints
from nncompress.modules import select_layers
from nncompress.prune.targets import is_conv, module_of, prunable_weights
from nncompress.quantize import rowblock_codec as _rowblock_codec  # noqa: F401  (registers kmeans_rows)
from nncompress.quantize import tier_codec as _tier_codec  # noqa: F401  (registers kmeans_tiers)
from nncompress.quantize.kmeans1d import INITS, kmeans_1d
from nncompress.quantize.row_tiers import row_tiers, tier_codebooks_of, tiered_codebooks
from nncompress.train.callbacks import Callback

log = logging.getLogger(__name__)
MAX_BITS = 16
EMB_BITS = (2, 8)
RARE_BITS = (1, 7)
"""Allowed index bits of embedding tables (``bits_emb``)."""
EMB_CODEC = "kmeans_rows"
TIER_CODEC = "kmeans_tiers"
CENTROID_STEPS = ("sum", "mean")
"""Centroid fine-tuning steps: ``sum``, the paper's ``c -= lr * sum of member gradients``
(Eq. 3; its size grows with the cluster), or ``mean``, ``c -= lr * mean of member
gradients`` (each centroid moves as one member weight would at ``lr``)."""


def _check_bits(value: Any, what: str) -> int:
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not is_int or not 1 <= value <= MAX_BITS:
        raise ConfigError(f"{what} must be an integer in 1..{MAX_BITS}, got {value!r}")
    return int(value)


@dataclass
class SharingConfig:
    """Weight-sharing settings: bits per conv / fc index, k-means init and layer filter.

    ``include``/``exclude`` are glob patterns over module names, as in ``prunable_weights``.
    ``bits`` overrides the bits of single layers by module name (``{"fc1": 4}``).
    ``max_iter``/``tol``/``seed`` go to ``kmeans_1d``. ``bits_emb`` (2..8; None: embeddings
    left alone) shares every ``nn.Embedding`` selected by ``include``/``exclude``, with one
    codebook per table or per block of ``rows_per_codebook`` rows (>= 1; None: per table).
    ``rare_bits`` (1..7, below ``bits_emb``; None: one tier) shares the rows of a table
    looked up fewer than ``rare_below`` times in the run's data at that width instead
    (frequency tiers, ``nncompress.quantize.row_tiers``; ``share_weights`` needs the counts).

    Example:
        >>> SharingConfig(bits_conv=8, bits_fc=5).bits_fc
        5
    """

    bits_conv: int = 8
    bits_fc: int = 5
    init: str = "linear"
    include: Sequence[str] | None = None
    exclude: Sequence[str] = ()
    max_iter: int = 300
    tol: float = 1e-4
    seed: int = 0
    bits: Mapping[str, int] = field(default_factory=dict)
    bits_emb: int | None = None
    rows_per_codebook: int | None = None
    rare_bits: int | None = None
    rare_below: int = 1

    def __post_init__(self) -> None:
        self.bits_conv = _check_bits(self.bits_conv, "bits_conv")
        self.bits_fc = _check_bits(self.bits_fc, "bits_fc")
        if self.bits_emb is not None:
            self.bits_emb = _check_emb_bits(self.bits_emb, "bits_emb")
        rpc = self.rows_per_codebook
        if rpc is not None and (isinstance(rpc, bool) or not isinstance(rpc, (int, np.integer)) or rpc < 1):
            raise ConfigError(f"rows_per_codebook must be an integer >= 1 (or None: one codebook per "
                              f"table), got {rpc!r}")
        self.bits = {str(k): _check_bits(v, f"bits[{k!r}]") for k, v in dict(self.bits).items()}
        if self.rare_bits is not None:
            lo, hi = RARE_BITS
            top = min(hi, (self.bits_emb or EMB_BITS[1]) - 1)
            if isinstance(self.rare_bits, bool) or not isinstance(self.rare_bits, (int, np.integer)) \
                    or not lo <= self.rare_bits <= top:
                raise ConfigError(f"rare_bits={self.rare_bits!r} not allowed; allowed: an integer in {lo}..{top} "
                                  "(below bits_emb)")
            if self.bits_emb is None:
                raise ConfigError("rare_bits needs bits_emb (the bits of the frequent rows of the tables)")
        if isinstance(self.rare_below, bool) or not isinstance(self.rare_below, (int, np.integer)) \
                or self.rare_below < 1:
            raise ConfigError(f"rare_below={self.rare_below!r} not allowed; allowed: an integer >= 1")
        if self.init not in INITS:
            raise ConfigError(f"unknown k-means init {self.init!r}; allowed: {', '.join(INITS)}")
        if self.max_iter < 1:
            raise ConfigError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.tol < 0:
            raise ConfigError(f"tol must be >= 0, got {self.tol}")


def _check_emb_bits(value: Any, what: str) -> int:
    lo, hi = EMB_BITS
    is_int = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not is_int or not lo <= value <= hi:
        raise ConfigError(f"{what} must be an integer in {lo}..{hi} for embedding tables, got {value!r}")
    return int(value)


def sharing_ratio(n: int, bits: int) -> float:
    """Compression of one layer by sharing: ``n*32 / (n*b + 2^b*32)`` (paper Eq. 1).

    ``n`` weights (the nonzeros), b-bit indices, a codebook of 2^b float32 values.

    Example:
        >>> sharing_ratio(16, 2)  # the paper's 4x4 example: 512 / 160
        3.2
    """
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    if bits < 1:
        raise ConfigError(f"bits must be >= 1, got {bits}")
    return n * 32 / (n * bits + 2**bits * 32)


def centroid_gradient(weight_grads: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """dL/dc_j = sum of dL/dw_i over the weights i with label j (paper Eq. 3).

    ``weight_grads`` (nnz,) and ``labels`` (nnz,) int64 in [0, k); returns (k,).

    Example:
        >>> centroid_gradient(torch.tensor([1., 2., 3.]), torch.tensor([0, 1, 0]), 2).tolist()
        [4.0, 2.0]
    """
    out = torch.zeros(k, dtype=weight_grads.dtype, device=weight_grads.device)  # (k,)
    return out.index_add_(0, labels, weight_grads)


def cluster_sizes(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Members of each of the ``k`` centroids: (k,) int64 counts of ``labels`` (nnz,).

    Example:
        >>> cluster_sizes(torch.tensor([0, 1, 0]), 3).tolist()
        [2, 1, 0]
    """
    return torch.bincount(labels, minlength=k)


@dataclass
class LayerSharing:
    """Codebook (K,) float32, labels (nnz,) int64 of the masked positions, mask (shape) bool."""

    codebook: torch.Tensor
    labels: torch.Tensor
    mask: torch.Tensor
    bits: int

    def values(self) -> torch.Tensor:
        """The shared weight values (nnz,) = ``codebook[labels]``."""
        return self.codebook[self.labels]


def _compact(centroids: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop unused centroids, cast to float32, merge equal values; relabel. Sorted output."""
    used = np.unique(labels)  # (K_used,) sorted
    cb32 = centroids[used].astype(np.float32)
    remap = np.full(centroids.size, -1, dtype=np.int64)
    remap[used] = np.arange(used.size)
    codebook, inverse = np.unique(cb32, return_inverse=True)
    return codebook, inverse.reshape(-1)[remap[labels]]


class SharedWeights(Mapping[str, LayerSharing]):
    """Parameter name -> ``LayerSharing``; the result of ``share_weights``."""

    def __init__(self, layers: Mapping[str, LayerSharing]):
        self._layers = dict(layers)

    def __getitem__(self, key: str) -> LayerSharing:
        return self._layers[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Rewrite each shared weight in place: ``codebook[labels]`` at the mask, 0 elsewhere."""
        params = dict(model.named_parameters())
        for name, layer in self._layers.items():
            w = params[name]
            if tuple(w.shape) != tuple(layer.mask.shape):
                raise ConfigError(f"{name}: weight shape {tuple(w.shape)} differs from the shared "
                                  f"layer's {tuple(layer.mask.shape)}")
            vals = layer.values().to(device=w.device, dtype=w.dtype)  # (nnz,)
            w.zero_()
            w.masked_scatter_(layer.mask.to(w.device), vals)

    @torch.no_grad()
    def round_codebooks(self, model: nn.Module, dtype: torch.dtype = torch.float16) -> None:
        """Round every centroid to ``dtype`` (kept as float32 values) and rewrite the weights,
        so the ``deep`` codec can store the codebooks at that width losslessly."""
        for layer in self._layers.values():
            layer.codebook.copy_(layer.codebook.to(dtype).to(layer.codebook.dtype))
        self.apply(model)

    def layer_codebook(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(codebook (K,) float32, index int64 of the weight's shape): index in [0, K) at
        shared (nonzero) positions, -1 at zeros. What the ``deep`` codec stores.

        Example:
            >>> model = nn.Sequential(nn.Linear(8, 4))
            >>> shared = share_weights(model, SharingConfig(bits_fc=2))
            >>> cb, idx = shared.layer_codebook("0.weight")
            >>> w = torch.where(idx >= 0, cb[idx.clamp(min=0)], 0.0)
            >>> torch.equal(w, model[0].weight), cb.numel() <= 4
            (True, True)
        """
        layer = self._layers[name]
        index = torch.full(layer.mask.shape, -1, dtype=torch.int64, device=layer.labels.device)
        index[layer.mask] = layer.labels
        return layer.codebook.detach().clone(), index

    def summary(self) -> dict[str, dict[str, float]]:
        """Per layer: nonzeros n, bits b, codebook size K and the paper's ratio r(n, b)."""
        return {
            name: {"n": float(layer.labels.numel()), "bits": float(layer.bits),
                   "codebook_size": float(layer.codebook.numel()),
                   "ratio": sharing_ratio(layer.labels.numel(), layer.bits)}
            for name, layer in self._layers.items()
        }

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict of tensors and ints (checkpoint-safe)."""
        return {n: {"codebook": l.codebook, "labels": l.labels, "mask": l.mask, "bits": l.bits}
                for n, l in self._layers.items()}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Mapping[str, Any]]) -> SharedWeights:
        """Inverse of ``state_dict``."""
        return cls({n: LayerSharing(s["codebook"].clone(), s["labels"].clone(), s["mask"].clone(),
                                    int(s["bits"])) for n, s in state.items()})


def share_layer(weight: torch.Tensor, bits: int, cfg: SharingConfig) -> LayerSharing:
    """Cluster the nonzeros of one weight tensor into at most 2^bits shared values.

    Example:
        >>> share_layer(torch.tensor([0., 1., 1.1, 5.]), 1, SharingConfig()).codebook.tolist()
        [1.0499999523162842, 5.0]
    """
    bits = _check_bits(bits, "bits")
    w = weight.detach()
    mask = w != 0  # (shape) bool
    vals = w[mask].cpu().numpy()  # (nnz,) row-major order
    if vals.size == 0:
        log.warning("weight sharing: tensor has no nonzero weight; nothing to cluster")
        empty = torch.zeros(0, dtype=torch.float32, device=w.device)
        return LayerSharing(empty, torch.zeros(0, dtype=torch.int64, device=w.device), mask, bits)
    res = kmeans_1d(vals, 2**bits, init=cfg.init, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed)
    codebook, labels = _compact(res.centroids, res.labels)
    if (codebook == 0).any():
        log.warning("weight sharing: a centroid is exactly 0; its weights become zeros")
    return LayerSharing(torch.from_numpy(codebook).to(w.device),
                        torch.from_numpy(labels).to(w.device), mask, bits)


def share_rows_tiered(weight: torch.Tensor, tiers: torch.Tensor, bits: Sequence[int],
                      rows_per_codebook: int | None, cfg: SharingConfig) -> LayerSharing:
    """Share a 2-D table per frequency tier (``row_tiers.tiered_codebooks`` with this
    config's seeded k-means): tier ``t``'s rows per block of ``rows_per_codebook`` of them
    onto ``2^bits[t]`` centroids; the mask is all True.

    Example:
        >>> w = torch.tensor([[0., 1., 1.], [4., 5., 9.], [0., 1., 0.]])
        >>> s = share_rows_tiered(w, torch.tensor([0, 1, 0]), [2, 1], None, SharingConfig())
        >>> s.codebook.tolist(), s.values().reshape(3, 3)[1].tolist()  # the rare row: 1 bit
        ([0.0, 1.0, 4.5, 9.0], [4.5, 4.5, 9.0])
    """
    def cluster(values: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
        res = kmeans_1d(values, 2**b, init=cfg.init, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed)
        return _compact(res.centroids, res.labels)
    codebook, labels = tiered_codebooks(weight, tiers, bits, rows_per_codebook, cluster)
    w = weight.detach()
    return LayerSharing(torch.from_numpy(codebook).to(w.device), torch.from_numpy(labels).to(w.device),
                        torch.ones(w.shape, dtype=torch.bool, device=w.device), int(max(bits)))


def sharing_of_tiers(weight: torch.Tensor, tiers: Any, rows_per_codebook: int | None, bits: int = 8) -> LayerSharing:
    """The ``LayerSharing`` of a table already on per-tier block codebooks
    (``row_tiers.tier_codebooks_of``).

    Example:
        >>> sharing_of_tiers(torch.tensor([[1., 2.], [7., 7.], [2., 1.]]), [0, 1, 0], None).codebook.tolist()
        [1.0, 2.0, 7.0]
    """
    codebook, labels = tier_codebooks_of(weight, tiers, rows_per_codebook)
    w = weight.detach()
    return LayerSharing(torch.from_numpy(codebook.astype(np.float32)).to(w.device), torch.from_numpy(labels).to(w.device),
                        torch.ones(w.shape, dtype=torch.bool, device=w.device), bits)


def share_rows(weight: torch.Tensor, bits: int, rows_per_codebook: int | None,
               cfg: SharingConfig) -> LayerSharing:
    """Cluster every value of a 2-D table (an embedding) per block of rows.

    Each block of ``rows_per_codebook`` rows (None: the whole table) gets its own k-means
    codebook of at most ``2^bits`` centroids; the codebooks are concatenated block after
    block (each sorted) and ``labels`` index the concatenation, so ``values()`` works as for
    any layer. The mask is all True: a table is dense and its zeros are clustered too.

    Example:
        >>> w = torch.tensor([[0., 1.], [1., 1.], [5., 6.], [5., 5.]])
        >>> share_rows(w, 2, 2, SharingConfig()).codebook.tolist()
        [0.0, 1.0, 5.0, 6.0]
    """
    bits = _check_emb_bits(bits, "bits_emb")
    w = weight.detach()
    if w.dim() != 2:
        raise ConfigError(f"share_rows needs a 2-D table, got shape {list(w.shape)}")
    rows = w.shape[0]
    rpc = rows_per_codebook or max(rows, 1)
    vals = w.cpu().numpy()
    books, labels = [], []
    offset = 0
    for start in range(0, max(rows, 1), rpc):
        block = vals[start:start + rpc].reshape(-1)  # (rpc * cols,) row-major
        if block.size == 0:
            continue
        res = kmeans_1d(block, 2**bits, init=cfg.init, max_iter=cfg.max_iter, tol=cfg.tol, seed=cfg.seed)
        cb, lab = _compact(res.centroids, res.labels)
        books.append(cb)
        labels.append(lab + offset)
        offset += cb.size
    codebook = np.concatenate(books) if books else np.zeros(0, dtype=np.float32)
    label = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
    mask = torch.ones(w.shape, dtype=torch.bool, device=w.device)
    return LayerSharing(torch.from_numpy(codebook.astype(np.float32)).to(w.device),
                        torch.from_numpy(label.astype(np.int64)).to(w.device), mask, bits)


def _embedding_weights(model: nn.Module, cfg: SharingConfig) -> dict[str, nn.Parameter]:
    """Canonical parameter name -> weight of each selected ``nn.Embedding``."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    found = select_layers(model, cfg.include, cfg.exclude, (nn.Embedding,))
    return {canonical[id(m.weight)]: m.weight for m in found.values() if id(m.weight) in canonical}


def _aliases(model: nn.Module, param: torch.Tensor) -> list[str]:
    """Every state-dict name of ``param`` (a tied table has several)."""
    return [n for n, t in model.state_dict(keep_vars=True).items() if t is param]


def _tiers_of(name: str, weight: torch.Tensor, row_counts: Mapping[str, torch.Tensor] | None,
              cfg: SharingConfig) -> torch.Tensor:
    """The frequency tier of each row of table ``name`` (``row_tiers.row_tiers``)."""
    counts = (row_counts or {}).get(name)
    if counts is None:
        raise ConfigError(f"rare_bits needs the lookups per row of table {name!r} (row_counts; a recipe "
                          "counts them on its calibration and training data)")
    if tuple(counts.shape) != (int(weight.shape[0]),):
        raise ConfigError(f"row_counts[{name!r}] has shape {list(counts.shape)}; the table has "
                          f"{int(weight.shape[0])} rows")
    return row_tiers(counts, int(cfg.rare_below))


def share_weights(model: nn.Module, cfg: SharingConfig | None = None,
                  row_counts: Mapping[str, torch.Tensor] | None = None) -> SharedWeights:
    """Q1: replace the nonzero weights of each Linear/Conv layer by their k-means centroid.

    Conv layers get ``2^bits_conv`` clusters, the others ``2^bits_fc``. With
    ``cfg.bits_emb`` the ``nn.Embedding`` tables are shared too (``share_rows``: every
    value, per table or per block of ``rows_per_codebook`` rows) and marked for the
    ``kmeans_rows`` codec; a Parameter tied between an Embedding and a Linear head is
    shared once, as a table. With ``cfg.rare_bits`` each table's rows are split into
    frequency tiers by ``row_counts`` (table parameter name -> lookups per row, e.g.
    ``row_tiers.count_row_usage``) and stored by the ``kmeans_tiers`` codec. The model is
    edited in place; the returned ``SharedWeights`` holds codebooks and labels.

    Example:
        >>> model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
        >>> shared = share_weights(model, SharingConfig(bits_conv=8, bits_fc=3))
        >>> sorted(shared), len(torch.unique(model[0].weight)) <= 2**3
        (['0.weight', '2.weight'], True)
    """
    cfg = cfg or SharingConfig()
    layers: dict[str, LayerSharing] = {}
    tables = _embedding_weights(model, cfg) if cfg.bits_emb is not None else {}
    table_ids = {id(p) for p in tables.values()}
    try:
        weights = prunable_weights(model, cfg.include, cfg.exclude)
    except ConfigError:
        if not tables:
            raise
        weights = {}
    weights = {n: w for n, w in weights.items() if id(w) not in table_ids}
    modules = {n.rsplit(".", 1)[0] for n in weights}
    table_modules = {n.rsplit(".", 1)[0] for n in tables}
    unknown = sorted(set(cfg.bits) - modules - table_modules)
    if unknown:
        raise ConfigError(f"bits names {unknown}, not shared layers of this model; allowed: "
                          f"{sorted(modules | table_modules)}")
    hints: dict[str, Any] = {}
    for name, w in tables.items():
        module = name.rsplit(".", 1)[0]
        bits = cfg.bits.get(module, cfg.bits_emb)
        rpc = cfg.rows_per_codebook or max(int(w.shape[0]), 1)
        if cfg.rare_bits is not None:
            tied = _aliases(model, w)
            if len(tied) > 1:
                raise ConfigError(f"rare_bits: table {name!r} is tied to {sorted(set(tied) - {name})} (an output "
                                  "head scores every row, so rows the inputs never look up still matter); "
                                  "exclude it or leave rare_bits unset")
            tiers = _tiers_of(name, w, row_counts, cfg)
            layers[name] = share_rows_tiered(w, tiers, [bits, min(cfg.rare_bits, bits - 1)], cfg.rows_per_codebook,
                                             cfg)
            hint: tuple[str, dict[str, Any]] = (TIER_CODEC, {"tiers": tiers.tolist(), "rows_per_codebook": int(rpc)})
            log.info("table %s: %d of %d rows frequent (%d bits), the rest %d bits", name,
                     int((tiers == 0).sum()), tiers.numel(), bits, min(cfg.rare_bits, bits - 1))
        else:
            layers[name] = share_rows(w, bits, cfg.rows_per_codebook, cfg)
            hint = (EMB_CODEC, {"rows_per_codebook": int(rpc)})
        for alias in _aliases(model, w):
            hints[alias] = hint
        log.info("shared table %s: %d values -> %d centroids (%d bits, %d rows per codebook)",
                 name, w.numel(), layers[name].codebook.numel(), bits, rpc)
    for name, w in weights.items():
        module = name.rsplit(".", 1)[0]
        bits = cfg.bits.get(module, cfg.bits_conv if is_conv(module_of(model, name)) else cfg.bits_fc)
        layers[name] = share_layer(w, bits, cfg)
        log.info("shared %s: %d nonzeros -> %d centroids (%d bits)", name,
                 layers[name].labels.numel(), layers[name].codebook.numel(), bits)
    shared = SharedWeights(layers)
    shared.apply(model)
    if hints:
        set_codec_hints(model, hints)
    return shared


@dataclass
class _TunerState:
    ref_lr: float | None = None
    restored: bool = False
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    momentum: dict[str, torch.Tensor] = field(default_factory=dict)


class CentroidFineTuner(Callback):
    """Fine-tunes the shared centroids during ``fit`` (paper Sec. 3.3).

    After backward, the gradient of each centroid is collected as the sum of its weights'
    gradients, and **the gradients of the shared weights are then set to zero**, so the main
    optimizer never moves them on its own (its weight decay and momentum may still touch
    them, but every shared weight is rewritten to ``codebook[labels]`` after each optimizer
    step, so no such change survives). The centroids take ``c <- c - lr * m * (dL/dc)``
    (SGD, optionally with heavy-ball ``momentum``; ``step="mean"`` divides ``dL/dc`` by the
    centroid's member count, see ``CENTROID_STEPS``), where ``m`` is the current LR-schedule
    factor of the main optimizer (``group lr / lr at fit start``) when ``follow_schedule``.
    Biases and unshared layers keep training with the main optimizer. The codebooks of
    ``shared`` are updated in place, so ``shared.layer_codebook`` is current after ``fit``.

    Example:
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(8, 3))
        >>> data = torch.utils.data.TensorDataset(torch.randn(32, 8, generator=g), torch.randint(0, 3, (32,), generator=g))
        >>> shared = share_weights(model, SharingConfig(bits_fc=2))
        >>> before = shared["0.weight"].codebook.clone()
        >>> _ = fit(model, data, TrainConfig(epochs=1, batch_size=8), callbacks=[CentroidFineTuner(shared, lr=1e-2)])
        >>> torch.equal(model[0].weight, shared["0.weight"].values().view(3, 8)), torch.equal(before, shared["0.weight"].codebook)
        (True, False)
    """

    def __init__(self, shared: SharedWeights, lr: float, momentum: float = 0.0,
                 follow_schedule: bool = True, step: str = "sum"):
        if not lr > 0:
            raise ConfigError(f"centroid lr must be > 0, got {lr!r}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"momentum must be in [0, 1), got {momentum!r}")
        if step not in CENTROID_STEPS:
            raise ConfigError(f"centroid step {step!r} not allowed; allowed: {', '.join(CENTROID_STEPS)}")
        self.step = step
        self.shared = shared
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.follow_schedule = follow_schedule
        self._params: dict[str, nn.Parameter] = {}
        self._state = _TunerState()

    def on_fit_begin(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        params = dict(model.named_parameters())
        missing = [n for n in self.shared if n not in params]
        if missing:
            raise ConfigError(f"shared layers {missing} are not parameters of the model")
        self._params = {n: params[n] for n in self.shared}
        for name, layer in self.shared.items():  # follow the model's device
            dev = self._params[name].device
            layer.codebook, layer.labels = layer.codebook.to(dev), layer.labels.to(dev)
            layer.mask = layer.mask.to(dev)
        if not self._state.restored or self._state.ref_lr is None:
            self._state.ref_lr = float(optimizer.param_groups[0]["lr"])
        self._state.restored = False
        self.shared.apply(model)

    def after_backward(self, model: nn.Module) -> None:
        for name, p in self._params.items():
            layer = self.shared[name]
            if p.grad is None:
                self._state.grads[name] = torch.zeros_like(layer.codebook)
                continue
            grad = p.grad.to_dense() if p.grad.is_sparse else p.grad  # sparse embedding grads
            g = grad[layer.mask].to(layer.codebook.dtype)  # (nnz,)
            grad_c = centroid_gradient(g, layer.labels, layer.codebook.numel())  # (K,)
            if self.step == "mean":
                grad_c = grad_c / cluster_sizes(layer.labels, layer.codebook.numel()).clamp(min=1).to(grad_c.dtype)
            self._state.grads[name] = grad_c
            if p.grad.is_sparse:
                p.grad = None  # the optimizer skips it; apply() rewrites the table anyway
            else:
                p.grad.zero_()

    @torch.no_grad()
    def after_optimizer_step(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        factor = 1.0
        if self.follow_schedule and self._state.ref_lr:
            factor = float(optimizer.param_groups[0]["lr"]) / self._state.ref_lr
        for name, grad in self._state.grads.items():
            step = grad
            if self.momentum > 0:
                buf = self._state.momentum.get(name)
                buf = grad.clone() if buf is None else buf.mul_(self.momentum).add_(grad)
                self._state.momentum[name] = buf
                step = buf
            self.shared[name].codebook.sub_(self.lr * factor * step)
        self._state.grads.clear()
        self.shared.apply(model)

    def state_dict(self) -> dict[str, Any]:
        return {"shared": self.shared.state_dict(), "ref_lr": self._state.ref_lr,
                "momentum": dict(self._state.momentum)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "shared" not in state:
            return
        restored = SharedWeights.from_state_dict(state["shared"])
        for name, layer in restored.items():  # keep the caller's SharedWeights object current
            self.shared[name].codebook = layer.codebook
            self.shared[name].labels = layer.labels
            self.shared[name].mask = layer.mask
            self.shared[name].bits = layer.bits
        self._state.ref_lr = state.get("ref_lr")
        self._state.momentum = {k: v.clone() for k, v in state.get("momentum", {}).items()}
        self._state.restored = True


def recover_sharing(model: nn.Module, bits: int = 8) -> SharedWeights:
    """The ``SharedWeights`` of a model whose shared weights are marked by their codec
    hints (``deep`` or ``kmeans_rows``, as ``method: gptq`` on a k-means grid and the
    embedding sharing set them) or hold at most 256 distinct nonzero values (more than 1024
    weights; ``share_weights`` of Linear/Conv layers): each such parameter's distinct nonzero
    values (``deep``) or distinct values per block of ``rows_per_codebook`` rows
    (``kmeans_rows``) become its codebook. A later stage (distillation) can then train the
    centroids with every weight kept on its codebook. ``bits`` is only recorded.

    Example:
        >>> m = nn.Linear(64, 32); shared = share_weights(m, SharingConfig(bits_fc=1))
        >>> recover_sharing(m)["weight"].codebook.numel() <= 2  # 2,048 weights, 2 values
        True
    """
    from nncompress.format.codecs import codec_hints, normalise_choice

    params = dict(model.named_parameters())
    hints = {n: normalise_choice(c) for n, c in codec_hints(model).items()}
    for name, p in params.items():  # shared without a hint (share_weights: ``auto`` picks deep)
        if name not in hints and p.dim() >= 2 and p.numel() > 1024 \
                and torch.unique(p.detach()[p.detach() != 0]).numel() <= 256:
            hints[name] = ("deep", {})
    layers: dict[str, LayerSharing] = {}
    for name, (codec, opts) in hints.items():
        if name not in params or codec not in ("deep", EMB_CODEC, TIER_CODEC):
            continue
        w = params[name].detach()
        if codec == TIER_CODEC:
            if w.dim() == 2 and opts.get("tiers") is not None:
                layers[name] = sharing_of_tiers(w, opts["tiers"], opts.get("rows_per_codebook"), bits)
            continue
        if codec == EMB_CODEC and w.dim() != 2:
            continue
        layer = sharing_of(w, bits, opts.get("rows_per_codebook") if codec == EMB_CODEC else None,
                           dense=codec == EMB_CODEC)
        if layer.codebook.numel() <= 1 << 16:  # more distinct values than any codebook: not shared
            layers[name] = layer
    return SharedWeights(layers)


def sharing_of(weight: torch.Tensor, bits: int, rows_per_codebook: int | None = None,
               dense: bool = False) -> LayerSharing:
    """The ``LayerSharing`` of a weight whose values already lie on codebooks: its distinct
    nonzero values (``dense``: every value, zeros included) per block of
    ``rows_per_codebook`` rows (None: one block) become the joined codebook.

    Example:
        >>> sharing_of(torch.tensor([[0., 2.], [2., 0.]]), 1).codebook.tolist()
        [2.0]
    """
    w = weight.detach()
    if rows_per_codebook is None and not dense:
        mask = w != 0
        codebook, labels = torch.unique(w[mask].float(), return_inverse=True)
        return LayerSharing(codebook, labels.to(torch.int64), mask, bits)
    rows = w.shape[0]
    rpc = int(rows_per_codebook or max(rows, 1))
    books, labs, offset = [], [], 0
    for start in range(0, rows, rpc):
        cb, lab = torch.unique(w[start:start + rpc].float().reshape(-1), return_inverse=True)
        books.append(cb)
        labs.append(lab + offset)
        offset += cb.numel()
    return LayerSharing(torch.cat(books), torch.cat(labs).to(torch.int64), torch.ones_like(w, dtype=torch.bool),
                        bits)
