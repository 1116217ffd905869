"""``quantize`` stage methods ``hashed`` (HashedNets, Q13) and ``bfp`` (block floating
point, Q15), plus the registry of these extra methods (``bwnh``, Q13's binary half, is in
``nncompress.recipes.bwnh_method``), reusing ``nncompress.quantize.hashed.hash_model`` and
``nncompress.quantize.bfp``.

``method: hashed``: ``params: {ratio | compression | buckets, seed, sign_hash}``; the
Linear layers (those matched by ``include``/``exclude``, or the keys of ``buckets``) become
``HashedLinear`` layers whose buckets start as the average of the trained weights;
``finetune`` (optionally with ``distill``) then trains the buckets. The file stores the
buckets, biases and seeds; its architecture record (``nncompress.quantize.hashed_arch``)
lets ``nncompress.load`` rebuild the hashed model.

``method: bfp``: ``params: {mantissa_bits, block, biases}``; every weight (and, with
``biases: true``, the bias of the same layers) is rounded to block floating point and
stored with the ``bfp`` codec, which reproduces the rounded tensor exactly. Post-training
only: no ``finetune``.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from nncompress.decompose.api import lowrank_spec
from nncompress.errors import ConfigError
from nncompress.prune.mask import MaskCallback
from nncompress.prune.targets import prunable_weights
from nncompress.quantize.bfp import bfp_round, bfp_storage_bits, check_bfp_args
from nncompress.quantize.hashed import HashedLinear
from nncompress.quantize.hashed_arch import hash_model
from nncompress.recipes.bwnh_method import BWNHParams, run_bwnh
from nncompress.recipes.context import RunContext
from nncompress.recipes.teacher import distill_loss, distill_summary
from nncompress.recipes.validate import from_dict
from nncompress.train.loop import fit

if TYPE_CHECKING:
    from nncompress.recipes.quantize_stage import QuantizeConfig

log = logging.getLogger(__name__)


@dataclass
class HashedParams:
    """``params`` of ``method: hashed``: exactly one of ``ratio`` (real buckets per virtual
    weight, in (0, 1]), ``compression`` (virtual weights per bucket, >= 1; = 1 / ratio) or
    ``buckets`` ({layer: K >= 1}, only those layers hashed); ``seed`` (default: the
    recipe's seed; layer k in module order hashes with seed + k); ``sign_hash``: the
    random-sign hash xi of the paper."""

    ratio: float | None = None
    compression: float | None = None
    buckets: dict[str, int] | None = None
    seed: int | None = None
    sign_hash: bool = True

    def __post_init__(self) -> None:
        given = [k for k in ("ratio", "compression", "buckets") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"method hashed needs exactly one of ratio, compression or buckets, "
                              f"got {given or 'none'}")
        if self.ratio is not None and not 0 < self.ratio <= 1:
            raise ConfigError(f"ratio={self.ratio!r} out of range; allowed: (0, 1]")
        if self.compression is not None and not self.compression >= 1:
            raise ConfigError(f"compression={self.compression!r} out of range; allowed: >= 1")
        for name, k in (self.buckets or {}).items():
            if k < 1:
                raise ConfigError(f"buckets.{name}={k!r} out of range; allowed: an integer in "
                                  f"[1, the layer's in x out]")


@dataclass
class BFPParams:
    """``params`` of ``method: bfp``: ``mantissa_bits`` (signed, 2..24), ``block`` (values
    per shared int8 exponent along the last dimension, >= 1, or null = one per tensor),
    ``biases``: round and store the biases of the same layers that way too."""

    mantissa_bits: int = 8
    block: int | None = 32
    biases: bool = False

    def __post_init__(self) -> None:
        check_bfp_args(self.mantissa_bits, self.block)


def check_method_config(cfg: QuantizeConfig) -> None:
    """Parse-time checks of a ``quantize`` config whose method is ``hashed`` or ``bfp``:
    its ``params`` (keys and ranges) and the options that method does not take."""
    if cfg.method not in EXTRA_METHODS:
        return
    from_dict(PARAMS[cfg.method], cfg.params, "params")
    kmeans_only = [k for k, bad in (("bits", bool(cfg.bits)), ("codebook_dtype", cfg.codebook_dtype != "float32"),
                                    ("centroid_lr", cfg.centroid_lr is not None)) if bad]
    if kmeans_only:
        raise ConfigError(f"{kmeans_only} work with method kmeans only (got method {cfg.method!r})")
    if cfg.method == "bfp" and (cfg.finetune is not None or cfg.distill is not None):
        raise ConfigError("method bfp rounds a trained model (post-training): 'finetune' and 'distill' "
                          "are not allowed; train before the quantize stage")
    if cfg.method in ("hashed", "bwnh") and cfg.distill is not None and cfg.finetune is None:
        raise ConfigError(f"method {cfg.method}: 'distill' acts during training; add a 'finetune' block")
    if cfg.method == "hashed":
        if cfg.params.get("buckets") is not None and (cfg.include is not None or cfg.exclude):
            raise ConfigError("method hashed: give 'buckets' or 'include'/'exclude', not both")


def _matches(name: str, include: list[str] | None, exclude: list[str]) -> bool:
    if include is not None and not any(fnmatch.fnmatch(name, p) for p in include):
        return False
    return not any(fnmatch.fnmatch(name, p) for p in exclude)


def run_hashed(ctx: RunContext, cfg: QuantizeConfig) -> dict[str, Any]:
    """``quantize: {method: hashed}``: ``hash_model`` on the chosen Linear layers, record
    the hashed architecture, then fine-tune the buckets if asked."""
    p = from_dict(HashedParams, cfg.params, "quantize.params")
    linears = {n: m for n, m in ctx.model.named_modules() if type(m) is nn.Linear}
    ratio = p.ratio if p.ratio is not None else (1.0 / p.compression if p.compression is not None else None)
    buckets = dict(p.buckets) if p.buckets is not None else None
    if buckets is None and (cfg.include is not None or cfg.exclude):
        chosen = [n for n in linears if _matches(n, cfg.include, cfg.exclude)]
        if not chosen:
            raise ConfigError(f"quantize: include={cfg.include} / exclude={cfg.exclude} leave no Linear "
                              f"layer to hash; Linear layers: {sorted(linears)}")
        # K as hash_model computes it from ratio, restricted to the chosen layers
        buckets = {n: max(1, round(ratio * linears[n].in_features * linears[n].out_features)) for n in chosen}
        ratio = None
    targets = list(buckets) if buckets is not None else list(linears)
    inside = [t for t in targets for lr in lowrank_spec(ctx.model) if t.startswith(f"{lr}.")]
    if inside:
        raise ConfigError(f"quantize: method hashed cannot hash {inside}, factors of decomposed layers "
                          f"(the file could not rebuild both); exclude them or hash before decompose")
    seed = p.seed if p.seed is not None else ctx.seed
    hash_model(ctx.model, ratio=ratio, buckets=buckets, seed=seed, sign_hash=p.sign_hash)  # records the arch
    ctx.forget_replaced_layers()
    if cfg.finetune is not None:
        callbacks = [MaskCallback(ctx.masks)] if ctx.masks is not None else []
        fit(ctx.model, ctx.train_data, cfg.finetune, callbacks=callbacks,
            loss_fn=distill_loss(ctx, cfg.distill, cfg.finetune), progress=ctx.extras.get("progress", False))
    layers = {n: {"buckets": m.buckets, "virtual": m.in_features * m.out_features,
                  "compression": m.compression(), "seed": m.seed}
              for n, m in ctx.model.named_modules() if isinstance(m, HashedLinear)}
    return {"method": "hashed", "layers": layers, "sign_hash": p.sign_hash,
            "distill": distill_summary(cfg.distill, ctx)}


def run_bfp(ctx: RunContext, cfg: QuantizeConfig) -> dict[str, Any]:
    """``quantize: {method: bfp}``: round the chosen weights (and biases) to block floating
    point in place and store them with the ``bfp`` codec (exact for rounded tensors)."""
    p = from_dict(BFPParams, cfg.params, "quantize.params")
    weights = prunable_weights(ctx.model, cfg.include, cfg.exclude)
    tensors: dict[str, torch.Tensor] = dict(weights)
    if p.biases:
        params = dict(ctx.model.named_parameters())
        for name in weights:
            bias = f"{name[: -len('weight')]}bias"
            if bias in params:
                tensors[bias] = params[bias]
    layers = {}
    with torch.no_grad():
        for name, t in tensors.items():
            t.copy_(bfp_round(t, p.mantissa_bits, p.block))
            ctx.codecs[name] = ("bfp", {"mantissa_bits": p.mantissa_bits, "block": p.block})
            bits = bfp_storage_bits(tuple(t.shape), p.mantissa_bits, p.block)
            layers[name] = {"bits": bits, "bits_per_value": bits / max(t.numel(), 1)}
    ctx.snapshot("after_bfp")
    total_bits = sum(v["bits"] for v in layers.values())
    total_values = sum(t.numel() for t in tensors.values())
    return {"method": "bfp", "mantissa_bits": p.mantissa_bits, "block": p.block, "layers": layers,
            "bits_per_value": total_bits / max(total_values, 1)}


PARAMS: dict[str, type] = {"hashed": HashedParams, "bfp": BFPParams, "bwnh": BWNHParams}
EXTRA_METHODS: dict[str, Callable[[RunContext, Any], dict[str, Any]]] = {
    "hashed": run_hashed, "bfp": run_bfp, "bwnh": run_bwnh}
__all__ = ["EXTRA_METHODS", "BFPParams", "HashedParams", "check_method_config", "run_bfp", "run_hashed"]
