"""K1 knowledge distillation (Hinton et al. 2015, arXiv 1503.02531)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.checks import check_float


def _check(alpha: float, temperature: float) -> None:
    check_float(alpha, "alpha", 0, 1)
    check_float(temperature, "temperature", 0, lo_open=True)


@dataclass(frozen=True)
class DistillConfig:
    """Distillation from a frozen teacher while a compression stage trains: the loss is
    ``(1 - alpha) CE + alpha T^2 KL`` (``kd_loss``) with ``temperature`` T.

    Example:
        >>> DistillConfig(alpha=0.7, temperature=3.0).alpha
        0.7
    """

    alpha: float = 0.5
    """Weight of the teacher's soft targets, in [0, 1] (0 = plain cross-entropy)."""
    temperature: float = 4.0
    """Softmax temperature T of both models' logits (> 0)."""

    def __post_init__(self) -> None:
        _check(self.alpha, self.temperature)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float = 0.5, temperature: float = 4.0, label_smoothing: float = 0.0) -> torch.Tensor:
    """``(1 - alpha) CE(student, labels) + alpha T^2 KL(softmax(t/T) || softmax(s/T))``.

    The ``T^2`` factor keeps the soft term's gradient scale independent of T;
    ``label_smoothing`` applies to the hard (CE) term only.

    Example:
        >>> z = torch.randn(4, 10)
        >>> float(kd_loss(z, z, z.argmax(1), alpha=1.0))
        0.0
    """
    _check(alpha, temperature)
    hard = F.cross_entropy(student_logits, labels, label_smoothing=label_smoothing)
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft


def frozen_teacher(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with gradients off: a teacher that training
    the original can never change.

    Example:
        >>> teacher = frozen_teacher(model)  # doctest: +SKIP
    """
    return _freeze(copy.deepcopy(model))


def _freeze(teacher: nn.Module) -> nn.Module:
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def distillation_loss_fn(teacher: nn.Module, alpha: float = 0.5, temperature: float = 4.0,
                         label_smoothing: float = 0.0
                         ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``loss_fn(logits, y, x)`` for ``fit`` that distils from a frozen ``teacher``
    (kept in eval mode, no gradient).

    Example:
        >>> fit(student, data, cfg, loss_fn=distillation_loss_fn(teacher))  # doctest: +SKIP
    """
    _check(alpha, temperature)
    _freeze(teacher)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x)
        return kd_loss(logits, t, y, alpha, temperature, label_smoothing)

    return loss_fn
