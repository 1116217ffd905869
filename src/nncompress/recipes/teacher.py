"""The teacher of the ``distill`` option of recipe stages (K1, and K2 attention transfer,
during compression).

The teacher is a frozen copy of the model after the recipe's first ``train`` stage (the
trained dense model), kept only when some stage distils. A recipe without a train stage
distils from the model as it is when the first distilling stage starts.

``distill: {alpha, temperature, attention: {beta, p, layers}}``: with ``attention`` the
loss is K1's ``(1 - alpha) CE + alpha T^2 KL`` plus the attention-transfer term of
``nncompress.distill.attention.AttentionTransferLoss`` at the given (student, teacher)
layer pairs (``alpha: 0`` = cross-entropy + attention transfer only).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nncompress.distill.attention import AttentionTransferLoss
from nncompress.distill.kd import DistillConfig, distillation_loss_fn, frozen_teacher
from nncompress.errors import ConfigError
from nncompress.recipes.context import RunContext
from nncompress.train.loop import TrainConfig

log = logging.getLogger(__name__)
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
_LOSSES_KEY = "attention_losses"  # ctx.extras: AT losses whose student hooks are live


@dataclass(frozen=True)
class AttentionConfig:
    """K2 attention transfer inside ``distill:``: the student's attention maps at some
    layers match the teacher's.

    Example:
        >>> AttentionConfig(layers=["conv1", ["conv2", "conv2"]]).pairs
        [('conv1', 'conv1'), ('conv2', 'conv2')]
    """

    layers: list[str | list[str]]
    """Module names whose outputs ``(B, C, H, W)`` are matched: a name used for student and
    teacher alike, or a ``[student_layer, teacher_layer]`` pair (layers of equal H x W)."""
    beta: float = 1000.0
    """Weight of the attention term (>= 0; the paper's 1000)."""
    p: float = 2.0
    """Exponent of the attention map (> 0)."""

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("attention.layers must name at least one layer, e.g. [conv1, conv2]")
        for i, entry in enumerate(self.layers):
            if isinstance(entry, (list, tuple)) and (len(entry) != 2 or not all(isinstance(s, str) for s in entry)):
                raise ConfigError(f"attention.layers[{i}]={entry!r} not allowed; use a layer name or "
                                  f"a [student_layer, teacher_layer] pair")
        if self.beta < 0:
            raise ConfigError(f"attention.beta={self.beta!r} out of range; allowed: >= 0 (paper: 1000)")
        if not self.p > 0:
            raise ConfigError(f"attention.p={self.p!r} out of range; allowed: > 0 (paper: 2)")
        object.__setattr__(self, "layers", [e if isinstance(e, str) else list(e) for e in self.layers])

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """``(student_layer, teacher_layer)`` pairs."""
        return [(e, e) if isinstance(e, str) else (e[0], e[1]) for e in self.layers]


@dataclass(frozen=True)
class StageDistillConfig(DistillConfig):
    """The ``distill:`` option of recipe stages: K1 knowledge distillation from the run's
    teacher, plus optional K2 attention transfer."""

    attention: AttentionConfig | None = None
    """Also match attention maps at these layers (``AttentionConfig``)."""


def check_distill(distill: StageDistillConfig | None, finetune: TrainConfig | None, *,
                  attention: bool = True) -> None:
    """The ``distill:`` option acts during a stage's training: it needs the ``finetune``
    block; ``attention=False`` for stages whose layers change shape under the hooks."""
    if distill is None:
        return
    if finetune is None:
        raise ConfigError("'distill' acts during training; add a 'finetune' block")
    if not attention and distill.attention is not None:
        raise ConfigError("distill.attention is not allowed (the pruned layers change shape under its hooks); "
                          "use alpha/temperature (K1)")


class RecordedAttentionLoss(AttentionTransferLoss):
    """``AttentionTransferLoss`` that also sums the attention term it adds (for the report
    and to show the term is used)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.term_sum = 0.0
        self.steps = 0

    def at_term(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        at, t_logits = super().at_term(x)
        self.term_sum += float(at.detach())
        self.steps += 1
        return at, t_logits

    @property
    def mean_term(self) -> float | None:
        """Mean attention term over the training steps so far (None before the first)."""
        return self.term_sum / self.steps if self.steps else None


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


def _check_pairs(loss: AttentionTransferLoss, student: nn.Module, x: torch.Tensor) -> None:
    """One forward pass on ``x`` (eval mode, no gradient) so that a bad layer pair (no
    4-D output, different H x W) fails before any training."""
    was_training = student.training
    student.eval()
    try:
        with torch.no_grad():
            student(x)
            loss.at_term(x)
        loss.term_sum, loss.steps = 0.0, 0
    except ConfigError:
        loss.remove()
        raise
    finally:
        student.train(was_training)


def distill_loss(ctx: RunContext, distill: DistillConfig | None, train: TrainConfig | None) -> LossFn | None:
    """The ``loss_fn`` for ``fit`` under ``train``: the recipe's ``loss:`` (None: plain
    cross-entropy) without ``distill``, else KD from the run's teacher with the train config's label smoothing
    on the hard term (so ``alpha: 0`` trains exactly as without distillation), plus the
    attention-transfer term when ``distill.attention`` is set. The attention loss hooks
    the student; :func:`distill_session` (or :func:`release_distill`) removes the hooks.

    Example:
        >>> fit(ctx.model, ctx.train_data, cfg, loss_fn=distill_loss(ctx, DistillConfig(), cfg))  # doctest: +SKIP
    """
    if distill is None or train is None:
        return ctx.loss_fn  # the recipe's 'loss:' (None: cross-entropy)
    teacher = teacher_of(ctx)  # before hooking the student: a copy must not carry its hooks
    attention = getattr(distill, "attention", None)
    if attention is None:
        return distillation_loss_fn(teacher, distill.alpha, distill.temperature, train.label_smoothing)
    loss = RecordedAttentionLoss(ctx.model, teacher, attention.pairs, beta=attention.beta, p=attention.p,
                                 kd=DistillConfig(distill.alpha, distill.temperature),
                                 label_smoothing=train.label_smoothing)
    _check_pairs(loss, ctx.model, ctx.example_input)
    ctx.extras.setdefault(_LOSSES_KEY, []).append(loss)
    return loss


def release_distill(ctx: RunContext) -> None:
    """Remove the student hooks of every attention loss made by :func:`distill_loss`."""
    for loss in ctx.extras.pop(_LOSSES_KEY, []):
        loss.remove()


@contextmanager
def distill_session(ctx: RunContext) -> Iterator[None]:
    """Around a stage that distils: on leaving (also on error), the attention losses'
    hooks are removed from the model."""
    try:
        yield
    finally:
        release_distill(ctx)


def distill_summary(distill: DistillConfig | None, ctx: RunContext | None = None) -> dict[str, Any] | None:
    """What the stage report records about distillation (with ``ctx``: also the mean
    attention term of the losses the stage made so far)."""
    if distill is None:
        return None
    out: dict[str, Any] = {"alpha": distill.alpha, "temperature": distill.temperature}
    attention = getattr(distill, "attention", None)
    if attention is not None:
        losses = ctx.extras.get(_LOSSES_KEY, []) if ctx is not None else []
        steps = sum(loss.steps for loss in losses)
        out["attention"] = {"beta": attention.beta, "p": attention.p,
                            "pairs": [list(p) for p in attention.pairs], "steps": steps,
                            "mean_term": sum(loss.term_sum for loss in losses) / steps if steps else None}
    return out
