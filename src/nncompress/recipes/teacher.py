"""The teacher of the ``distill`` option of recipe stages (K1 during compression).

The teacher is a frozen copy of the model after the recipe's first ``train`` stage (the
trained dense model), kept only when some stage distils. A recipe without a train stage
distils from the model as it is when the first distilling stage starts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from nncompress.distill.kd import DistillConfig, distillation_loss_fn, frozen_teacher
from nncompress.recipes.context import RunContext
from nncompress.train.loop import TrainConfig

log = logging.getLogger(__name__)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def keep_trained_teacher(ctx: RunContext) -> None:
    """After a train stage: keep a frozen copy as the teacher if a stage will need one."""
    if ctx.keep_teacher and ctx.teacher is None:
        ctx.teacher = frozen_teacher(ctx.model)


def teacher_of(ctx: RunContext) -> nn.Module:
    """The run's teacher; without one, a frozen copy of the current model becomes it."""
    if ctx.teacher is None:
        log.info("distill: no train stage kept a teacher; the model as it is now becomes the teacher")
        ctx.teacher = frozen_teacher(ctx.model)
    return ctx.teacher


def distill_loss(ctx: RunContext, distill: DistillConfig | None, train: TrainConfig | None) -> LossFn | None:
    """The ``loss_fn`` for ``fit`` under ``train``: None (plain cross-entropy) without
    ``distill``, else KD from the run's teacher with the train config's label smoothing
    on the hard term (so ``alpha: 0`` trains exactly as without distillation).

    Example:
        >>> fit(ctx.model, ctx.train_data, cfg, loss_fn=distill_loss(ctx, DistillConfig(), cfg))  # doctest: +SKIP
    """
    if distill is None or train is None:
        return None
    return distillation_loss_fn(teacher_of(ctx), distill.alpha, distill.temperature, train.label_smoothing)


def distill_summary(distill: DistillConfig | None) -> dict[str, float] | None:
    """What the stage report records about distillation."""
    return None if distill is None else {"alpha": distill.alpha, "temperature": distill.temperature}
