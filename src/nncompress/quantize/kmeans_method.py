"""Deep Compression's weight sharing (Q1) as a quantizer: k-means per layer
(``share_weights``), optional centroid fine-tuning (``CentroidFineTuner``), optional
half-precision codebooks. The ``deep`` codec stores the result (``auto`` picks it)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.modules import select_layers
from nncompress.quantize.registry import (
    QuantizerConfig,
    QuantizeResult,
    QuantizeRun,
    register_quantizer,
)
from nncompress.quantize.row_tiers import count_row_usage
from nncompress.quantize.sharing import (
    CENTROID_STEPS,
    CentroidFineTuner,
    SharingConfig,
    share_weights,
)
from nncompress.train.batches import make_loader

COUNT_BATCH = 64
"""Batch size of the pass that counts table lookups (frequency tiers)."""
CODEBOOK_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class KMeansConfig(QuantizerConfig):
    """Options of ``method: kmeans`` (Q1).

    Example:
        >>> KMeansConfig(bits_fc=4, bits={"fc1": 3}).sharing(seed=0).bits
        {'fc1': 3}
    """

    bits_fc: int = 5
    """Index bits of Linear layers (2^bits centroids), 1..16."""
    bits_conv: int = 8
    """Index bits of Conv layers, 1..16."""
    init: str = "linear"
    """k-means initialisation (``nncompress.quantize.kmeans1d.INITS``)."""
    bits: dict[str, int] = field(default_factory=dict)
    """Per-layer index bits by module name, overriding ``bits_fc``/``bits_conv``."""
    include: list[str] | None = None
    """Glob patterns of the layers to share (default: every Linear/Conv layer)."""
    exclude: list[str] = field(default_factory=list)
    """Glob patterns of layers left alone."""
    centroid_lr: float | None = None
    """Learning rate of the centroids during the run's fine-tuning (> 0; default: its lr)."""
    centroid_step: str = "mean"
    """Centroid update of the fine-tuning: ``mean`` (default) moves each centroid by
    ``centroid_lr`` times the mean gradient of its weights, as one of them would move, so
    the weights' learning rate is stable for the centroids whatever the cluster sizes;
    ``sum`` is the paper's ``centroid_lr`` times the sum (Eq. 3), whose step grows with the
    cluster (at 2 bits on LeNet-5, 10^5 weights per centroid: lr 0.01 diverged to NaN), so it
    needs a centroid_lr about 1/(weights per centroid) of the weights' lr."""
    bits_emb: int | None = None
    """Index bits of embedding tables (``nn.Embedding``, tied heads once), 2..8; None
    (default) leaves them alone."""
    rows_per_codebook: int | None = None
    """Rows of an embedding table per codebook (>= 1); None: one codebook per table."""
    rare_bits: int | None = None
    """Frequency tiers (``nncompress.quantize.row_tiers``): the rows of each shared table
    looked up fewer than ``rare_below`` times on the run's calibration and training data get
    this many index bits (1..7, below ``bits_emb``), the others ``bits_emb``; stored by the
    ``kmeans_tiers`` codec. None (default): every row at ``bits_emb``."""
    rare_below: int = 1
    """Lookups below which a row is rare (>= 1; 1: the rows the data never use)."""
    codebook_dtype: str = "float32"
    """``float16`` rounds the final centroids to half precision, so the file stores each
    codebook in 2 bytes per centroid (the model evaluated is the rounded one)."""

    def __post_init__(self) -> None:
        self.sharing(seed=0)  # bits and init, checked by SharingConfig
        if self.codebook_dtype not in CODEBOOK_DTYPES:
            raise ConfigError(f"codebook_dtype {self.codebook_dtype!r} not allowed; allowed: {sorted(CODEBOOK_DTYPES)}")
        if self.centroid_step not in CENTROID_STEPS:
            raise ConfigError(f"centroid_step {self.centroid_step!r} not allowed; allowed: {', '.join(CENTROID_STEPS)}")
        if self.centroid_lr is not None and not self.centroid_lr > 0:
            raise ConfigError(f"centroid_lr={self.centroid_lr!r} out of range; allowed: > 0")

    def training(self) -> str:
        return "optional"

    def sharing(self, seed: int) -> SharingConfig:
        """The ``SharingConfig`` of these options (k-means seeded with ``seed``)."""
        return SharingConfig(bits_conv=self.bits_conv, bits_fc=self.bits_fc, init=self.init, include=self.include,
                             exclude=self.exclude, seed=seed, bits=self.bits, bits_emb=self.bits_emb,
                             rows_per_codebook=self.rows_per_codebook, rare_bits=self.rare_bits,
                             rare_below=self.rare_below)


@register_quantizer(KMeansConfig, name="kmeans")
def quantize_kmeans(model: nn.Module, config: KMeansConfig, run: QuantizeRun) -> QuantizeResult:
    """Share the weights, fine-tune the centroids when the run has ``finetune``, round the
    codebooks if asked. Summary: per layer n, bits, codebook size and the paper's ratio."""
    sharing = config.sharing(run.seed)
    counts = _row_counts(model, sharing, run) if sharing.rare_bits is not None else None
    shared = share_weights(model, sharing, row_counts=counts)
    run.mark("after_sharing")
    if run.finetune is not None:
        lr = config.centroid_lr if config.centroid_lr is not None else run.finetune.lr
        run.fit(model, run.finetune, [CentroidFineTuner(shared, lr, step=config.centroid_step)])
        run.mark("after_finetune")
    if config.codebook_dtype != "float32":
        shared.round_codebooks(model, CODEBOOK_DTYPES[config.codebook_dtype])
    return QuantizeResult(model, {"layers": shared.summary()})


def _row_counts(model: nn.Module, sharing: SharingConfig, run: QuantizeRun) -> dict[str, torch.Tensor]:
    """Lookups per row of each selected embedding table on the run's calibration and
    training data (``row_tiers.count_row_usage``), by parameter name."""
    mods = select_layers(model, sharing.include, sharing.exclude, (nn.Embedding,))
    tables = {f"{n}.weight" if n else "weight": m for n, m in mods.items()}
    sources = [d for d in (run.calib_data, run.train_data) if d is not None]
    if not tables:
        raise ConfigError("rare_bits: no nn.Embedding table selected (include/exclude)")
    if not sources:
        raise ConfigError("rare_bits counts how often the data look up each table row; the run has no "
                          "calibration or training data")
    batches = itertools.chain.from_iterable(make_loader(d, COUNT_BATCH) for d in sources)
    return count_row_usage(model, tables, batches)
