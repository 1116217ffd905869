"""The ``distill`` recipe stage: label-free distillation (K1 extended,
``nncompress.distill.unlabelled``) of the compressed model towards the model as it was
before the recipe's first compressing stage, on the recipe's training data (labels, if
any, are ignored: a text recipe's ``train`` passages).

What earlier stages fixed stays exact: pruned weights (the run's masks) stay 0; weights
shared on a codebook (k-means sharing, ``method: gptq`` on a k-means grid, embedding
tables) keep their labels while their centroids train (``recover_sharing`` finds them by
their codec hints); weights stored on a uniform integer grid (``method: gptq`` with the
uniform grid) are frozen, as are the ``freeze`` globs. Every other parameter (biases,
LayerNorms, product-quantization codewords) trains; parameters the file stores as fp16
(e.g. PQ codebooks) are rounded to fp16 values after training, so that the file holds
exactly the distilled model. Options: the fields of ``UnlabelledDistillConfig``
(including the ``relational`` term: ``weights: {relational: 1.0}``).

Example (YAML):
    - distill: {loss: cosine, epochs: 1, lr: 1e-4, centroid_lr: 1e-4}
    - distill: {loss: cosine, weights: {relational: 1.0}, relational_mode: mse}
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch

from nncompress.distill.unlabelled import UnlabelledDistillConfig, distill_unlabelled
from nncompress.format.codecs import codec_hints, normalise_choice
from nncompress.quantize.sharing import recover_sharing
from nncompress.recipes.context import RunContext
from nncompress.recipes.stages import register_stage
from nncompress.recipes.teacher import teacher_of

log = logging.getLogger(__name__)
FROZEN_CODECS = ("gptq", "int", "binary", "pow2", "shift", "bfp")
"""Codecs whose stored parameters (scales, exponents) fix the values: weights hinted to
one of them are frozen during distillation."""
FP16_CODECS = ("fp16",)
"""Codecs that store a float parameter at half precision: rounded to it after training."""


@register_stage("distill", UnlabelledDistillConfig,
                "label-free distillation of the compressed model to the model before compression "
                "(options: UnlabelledDistillConfig fields)")
def run_distill(ctx: RunContext, cfg: UnlabelledDistillConfig) -> dict[str, Any]:
    """Distil ``ctx.model`` towards the run's teacher on ``ctx.train_data``."""
    teacher = teacher_of(ctx)
    shared = recover_sharing(ctx.model)
    frozen = [n for n, c in codec_hints(ctx.model).items() if normalise_choice(c)[0] in FROZEN_CODECS]
    if frozen:
        cfg = replace(cfg, freeze=(*cfg.freeze, *frozen))
    log.info("distill: %d shared tensors train their centroids, %d frozen", len(shared), len(frozen))
    report = distill_unlabelled(ctx.model, teacher, ctx.train_data, cfg, shared=shared or None,
                                masks=ctx.masks, progress=ctx.progress.fits("distillation"))
    rounded = _round_half(ctx.model)
    return {"steps": report.steps, "seconds": round(report.seconds, 1),
            "loss_first": report.step_losses[0] if report.step_losses else None,
            "loss_last": report.step_losses[-1] if report.step_losses else None,
            "shared_tensors": len(shared), "frozen_tensors": len(frozen), "rounded_fp16": rounded}


@torch.no_grad()
def _round_half(model: torch.nn.Module) -> int:
    """Round the parameters hinted to an fp16 codec to fp16 values; how many there were."""
    hinted = [n for n, c in codec_hints(model).items() if normalise_choice(c)[0] in FP16_CODECS]
    params = dict(model.named_parameters())
    for name in hinted:
        if name in params:
            params[name].copy_(params[name].to(torch.float16).to(params[name].dtype))
    return len(hinted)
