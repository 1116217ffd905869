"""Knowledge distillation losses (K1) and attention transfer (K2)."""

from nncompress.distill.attention import (
    AttentionTransferLoss,
    at_loss,
    attention_map,
    attention_transfer_loss_fn,
)
from nncompress.distill.kd import DistillConfig, distillation_loss_fn, frozen_teacher, kd_loss

__all__ = ["AttentionTransferLoss", "DistillConfig", "at_loss", "attention_map", "attention_transfer_loss_fn",
           "distillation_loss_fn", "frozen_teacher", "kd_loss"]
