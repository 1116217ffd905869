"""The ``decompose`` recipe stage: low-rank factorisation of named layers (L1-L5) through
``nncompress.decompose.decompose``, with optional fine-tuning (and distillation).

The replacements are recorded on the model, so the saved ``.nnc`` file carries its
``lowrank`` record and ``nncompress.load`` rebuilds the decomposed model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nncompress.analysis.accounting import count_parameters
from nncompress.decompose.api import DecomposeConfig, decompose
from nncompress.prune.mask import MaskCallback
from nncompress.recipes.context import RunContext
from nncompress.recipes.stages import register_stage
from nncompress.recipes.teacher import (
    StageDistillConfig,
    check_distill,
    distill_loss,
    distill_session,
    distill_summary,
)
from nncompress.train.loop import TrainConfig, fit


@dataclass
class DecomposeStageConfig(DecomposeConfig):
    """``nncompress.decompose.DecomposeConfig`` (``layers``) plus training after it."""

    finetune: TrainConfig | None = None
    """Training after the factorisation (masks of earlier pruning kept on the untouched
    layers)."""
    distill: StageDistillConfig | None = None
    """The fine-tuning also learns from the trained dense model (K1/K2, as in ``prune``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_distill(self.distill, self.finetune)


@register_stage("decompose", DecomposeStageConfig, "low-rank factorisation of layers (L1-L5: svd, separable, "
                                                   "tucker2, cp, btd)")
def run_decompose(ctx: RunContext, cfg: DecomposeStageConfig) -> dict[str, Any]:
    """Factorise ``cfg.layers`` in place, then fine-tune if asked."""
    before = count_parameters(ctx.model)["parameters"]
    _, report = decompose(ctx.model, cfg, example_input=ctx.example_input)
    ctx.forget_replaced_layers()
    ctx.snapshot("after_decompose")
    with distill_session(ctx):
        if cfg.finetune is not None:
            callbacks = [MaskCallback(ctx.masks)] if ctx.masks is not None else []
            fit(ctx.model, ctx.train_data, cfg.finetune, callbacks=callbacks,
                loss_fn=distill_loss(ctx, cfg.distill, cfg.finetune), progress=ctx.extras.get("progress", False))
            ctx.snapshot("after_decompose_finetune")
        summary = distill_summary(cfg.distill, ctx)
    return {**report.as_dict(), "parameters_before": before,
            "parameters_after": count_parameters(ctx.model)["parameters"], "distill": summary}
