"""The ``quantize`` recipe stage. ``method: kmeans`` is Deep Compression's weight sharing
(Q1) with optional centroid fine-tuning; ``hashed`` (HashedNets, Q13) and ``bfp`` (block
floating point, Q15) are in ``nncompress.recipes.hashed_bfp``; other methods come from the
low-bit quantizer registry when it is installed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from nncompress.errors import ConfigError
from nncompress.quantize.sharing import CentroidFineTuner, SharingConfig, share_weights
from nncompress.recipes.context import RunContext
from nncompress.recipes.hashed_bfp import EXTRA_METHODS, check_method_config
from nncompress.recipes.stages import register_stage
from nncompress.recipes.teacher import (
    StageDistillConfig,
    distill_loss,
    distill_session,
    distill_summary,
)
from nncompress.train.loop import TrainConfig, fit

CODEBOOK_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass
class QuantizeConfig:
    """``method``: kmeans (bits_fc / bits_conv / init; ``finetune`` trains the centroids
    with ``centroid_lr``, default the finetune lr), ``hashed`` or ``bfp`` (their ``params``
    are checked here, see ``nncompress.recipes.hashed_bfp``) or a low-bit method with
    ``params``. ``distill``: the k-means centroid fine-tuning (or the hashed buckets'
    fine-tuning) also learns from the trained dense model (K1, and K2 with ``attention``;
    see ``nncompress.recipes.teacher``). ``bits``: per-layer overrides by module name.
    ``codebook_dtype: float16`` rounds the final centroids to half precision, so the file
    stores each codebook in 2 bytes per centroid (the model evaluated is the rounded one)."""

    method: str = "kmeans"
    bits_fc: int = 5
    bits_conv: int = 8
    init: str = "linear"
    finetune: TrainConfig | None = None
    centroid_lr: float | None = None
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    distill: StageDistillConfig | None = None
    bits: dict[str, int] = field(default_factory=dict)
    codebook_dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.codebook_dtype not in CODEBOOK_DTYPES:
            raise ConfigError(f"quantize: codebook_dtype {self.codebook_dtype!r} not allowed; "
                              f"allowed: {sorted(CODEBOOK_DTYPES)}")
        lowbit = lowbit_methods()
        if self.method != "kmeans" and self.method not in EXTRA_METHODS and self.method not in lowbit:
            raise ConfigError(f"quantize: unknown method {self.method!r}; allowed: "
                              f"{['kmeans', *sorted(EXTRA_METHODS), *sorted(lowbit)]}")
        check_method_config(self)


def lowbit_methods() -> dict[str, Any]:
    """The low-bit quantizer registry, or {} when that module is absent."""
    try:
        from nncompress.quantize.methods import METHODS
    except ImportError:
        return {}
    return dict(METHODS)


@register_stage("quantize", QuantizeConfig, "k-means weight sharing, hashed (Q13), bfp (Q15) or a low-bit quantizer")
def run_quantize(ctx: RunContext, cfg: QuantizeConfig) -> dict[str, Any]:
    """The ``quantize`` stage (attention-transfer hooks, if any, removed at its end)."""
    with distill_session(ctx):
        return _quantize(ctx, cfg)


def _quantize(ctx: RunContext, cfg: QuantizeConfig) -> dict[str, Any]:
    if cfg.method in EXTRA_METHODS:
        return EXTRA_METHODS[cfg.method](ctx, cfg)
    if cfg.method == "kmeans":
        if cfg.params:
            raise ConfigError(f"quantize: method kmeans takes no 'params' (got {sorted(cfg.params)})")
        shared = share_weights(ctx.model, SharingConfig(
            bits_conv=cfg.bits_conv, bits_fc=cfg.bits_fc, init=cfg.init, include=cfg.include,
            exclude=cfg.exclude, seed=ctx.seed, bits=cfg.bits))
        ctx.snapshot("after_sharing")
        if cfg.finetune is not None:
            lr = cfg.centroid_lr if cfg.centroid_lr is not None else cfg.finetune.lr
            fit(ctx.model, ctx.train_data, cfg.finetune, callbacks=[CentroidFineTuner(shared, lr)],
                loss_fn=distill_loss(ctx, cfg.distill, cfg.finetune))
            ctx.snapshot("after_finetune")
        if cfg.codebook_dtype != "float32":
            shared.round_codebooks(ctx.model, CODEBOOK_DTYPES[cfg.codebook_dtype])
        ctx.extras["shared"] = shared
        return {"method": "kmeans", "layers": shared.summary(), "distill": distill_summary(cfg.distill, ctx)}
    if cfg.bits or cfg.codebook_dtype != "float32":
        raise ConfigError(f"quantize: 'bits' and 'codebook_dtype' work with method kmeans only (got method {cfg.method!r})")
    if cfg.distill is not None:
        raise ConfigError(f"quantize: 'distill' works with methods kmeans, hashed and bwnh only (got method {cfg.method!r})")
    methods = lowbit_methods()
    if cfg.method not in methods:
        raise ConfigError(f"quantize: unknown method {cfg.method!r}; allowed: "
                          f"{['kmeans', *sorted(EXTRA_METHODS), *sorted(methods)]}")
    from nncompress.quantize.api import quantize_model

    quantize_model(ctx.model, cfg.method, cfg.params, train_data=ctx.train_data,
                   calib_data=ctx.train_data, train_cfg=cfg.finetune)
    ctx.snapshot(f"after_{cfg.method}")
    return {"method": cfg.method, "params": cfg.params}
