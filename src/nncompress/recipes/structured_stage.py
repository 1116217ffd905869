"""The ``structured`` recipe stage: filter/channel (and residual block) pruning with
physical removal (S1-S9, S14, S5) through ``nncompress.prune.structured.structured_prune``.

Its options are ``StructuredPruneConfig``'s fields plus the stage's scoring sample size
and distillation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from nncompress.checks import check_int
from nncompress.prune.structured import StructuredPruneConfig, structured_prune
from nncompress.prune.targets import prunable_weights
from nncompress.recipes.context import RunContext
from nncompress.recipes.stages import register_stage
from nncompress.recipes.teacher import (
    StageDistillConfig,
    check_distill,
    distill_loss,
    distill_summary,
)


@dataclass
class StructuredStageConfig(StructuredPruneConfig):
    """``nncompress.prune.structured.StructuredPruneConfig`` plus the sample it scores on
    and distillation during the fine-tuning."""

    samples: int = 512
    """Size of the random training sample (seeded by the recipe's seed) the data-driven
    criteria and block removal score on."""
    distill: StageDistillConfig | None = None
    """The fine-tuning also learns from the run's teacher, the trained dense model (K1;
    ``attention`` is not allowed: channels change under its hooks)."""

    def __post_init__(self) -> None:
        check_distill(self.distill, self.finetune, attention=False)
        super().__post_init__()
        check_int(self.samples, "samples", 1)


@register_stage("structured", StructuredStageConfig, "filter/channel pruning with physical removal")
def run_structured(ctx: RunContext, cfg: StructuredStageConfig) -> dict[str, Any]:
    g = torch.Generator().manual_seed(ctx.seed)
    idx = torch.randperm(len(ctx.train_data), generator=g)[: cfg.samples].tolist()
    xs, ys = zip(*(ctx.train_data[i] for i in idx))
    res = structured_prune(ctx.model, cfg, (torch.stack(xs), torch.tensor(ys)), example_inputs=ctx.example_input,
                           train_data=ctx.train_data, loss_fn=distill_loss(ctx, cfg.distill, cfg.finetune),
                           progress=ctx.progress.fits(lambda i: f"step {i + 1} fine-tune"))
    ctx.model = res.model
    ctx.masks = None  # shapes changed; later stages start from the smaller dense model
    ctx.snapshot(f"after_structured_{cfg.criterion}")
    return {"criterion": cfg.criterion, "dense": res.dense, "pruned": res.pruned,
            "mac_reduction": res.mac_reduction,
            "shapes": {n: list(p.shape) for n, p in prunable_weights(ctx.model).items()},
            "distill": distill_summary(cfg.distill), "fade_epochs": cfg.fade_epochs,
            "removed_blocks": res.blocks}
