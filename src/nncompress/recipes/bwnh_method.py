"""``quantize: {method: bwnh}``: binary weights via hashing (Q13, Hu et al. 2018) in a recipe.

``params: {iters, sample, calib_images, sequential}``: ``bwnh_binarize`` fits each chosen
Linear/Conv layer's binary codes and per-filter scales to its inputs on the first
``calib_images`` training images (``include``/``exclude`` choose the layers); ``finetune``
(optionally with ``distill``) then trains the binary network through BWN's straight-through
estimator, and ``finalize`` freezes it (1-bit signs plus one scale per filter in the file).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader

from nncompress.errors import ConfigError
from nncompress.prune.mask import MaskCallback
from nncompress.prune.targets import prunable_weights
from nncompress.quantize.api import finalize
from nncompress.quantize.bwnh import bwnh_binarize, bwnh_stats
from nncompress.recipes.context import RunContext
from nncompress.recipes.teacher import distill_loss, distill_summary
from nncompress.recipes.validate import from_dict
from nncompress.train.loop import fit

if TYPE_CHECKING:
    from nncompress.recipes.quantize_stage import QuantizeConfig


@dataclass
class BWNHParams:
    """``params`` of ``method: bwnh``: ``iters`` (coordinate-descent sweeps, >= 1),
    ``sample`` (input columns per layer used to fit, >= 1, or null = all), ``calib_images``
    (training images of the calibration pass, >= 1), ``sequential`` (fit each layer on the
    inputs of the already-binarised earlier layers, the paper's layer-wise scheme)."""

    iters: int = 10
    sample: int | None = 16384
    calib_images: int = 1024
    sequential: bool = True

    def __post_init__(self) -> None:
        for key, value in (("iters", self.iters), ("calib_images", self.calib_images), ("sample", self.sample)):
            if value is None and key == "sample":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{key}={value!r} out of range; allowed: an integer >= 1"
                                  + (" or null (all columns)" if key == "sample" else ""))


def calibration_images(data: Any, n: int) -> torch.Tensor:
    """The first ``n`` inputs of a dataset (unshuffled), as one tensor."""
    x, _ = next(iter(DataLoader(data, batch_size=n, shuffle=False)))
    return x


def run_bwnh(ctx: RunContext, cfg: QuantizeConfig) -> dict[str, Any]:
    """Binarise the chosen layers with BWNH, fine-tune if asked, then finalize."""
    p = from_dict(BWNHParams, cfg.params, "quantize.params")
    layers = [n[: -len(".weight")] for n in prunable_weights(ctx.model, cfg.include, cfg.exclude)]
    bwnh_binarize(ctx.model, calibration_images(ctx.train_data, p.calib_images), layers=layers,
                  iters=p.iters, sample=p.sample, sequential=p.sequential, seed=ctx.seed)
    stats = {n: s.relative() for n, s in bwnh_stats(ctx.model).items()}
    if cfg.finetune is not None:
        callbacks = [MaskCallback(ctx.masks)] if ctx.masks is not None else []
        fit(ctx.model, ctx.train_data, cfg.finetune, callbacks=callbacks,
            loss_fn=distill_loss(ctx, cfg.distill, cfg.finetune), progress=ctx.extras.get("progress", False))
    finalize(ctx.model)
    ctx.snapshot("after_bwnh")
    return {"method": "bwnh", "layers": layers, "relative_error": stats, "params": cfg.params,
            "distill": distill_summary(cfg.distill, ctx)}
