"""K1 knowledge distillation (Hinton et al. 2015, arXiv 1503.02531)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from nncompress.errors import ConfigError


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
            alpha: float = 0.5, temperature: float = 4.0) -> torch.Tensor:
    """``(1 - alpha) CE(student, labels) + alpha T^2 KL(softmax(t/T) || softmax(s/T))``.

    The ``T^2`` factor keeps the soft term's gradient scale independent of T.

    Example:
        >>> z = torch.randn(4, 10)
        >>> float(kd_loss(z, z, z.argmax(1), alpha=1.0))
        0.0
    """
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {alpha}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    hard = F.cross_entropy(student_logits, labels)
    soft = F.kl_div(F.log_softmax(student_logits / temperature, dim=1),
                    F.log_softmax(teacher_logits / temperature, dim=1),
                    reduction="batchmean", log_target=True)
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft


def distillation_loss_fn(teacher: nn.Module, alpha: float = 0.5, temperature: float = 4.0
                         ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """A ``loss_fn(logits, y, x)`` for ``fit`` that distils from a frozen ``teacher``
    (kept in eval mode, no gradient).

    Example:
        >>> fit(student, data, cfg, loss_fn=distillation_loss_fn(teacher))  # doctest: +SKIP
    """
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)

    def loss_fn(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t = teacher(x)
        return kd_loss(logits, t, y, alpha, temperature)

    return loss_fn
