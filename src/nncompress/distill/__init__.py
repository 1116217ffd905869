"""Knowledge distillation losses."""

from nncompress.distill.kd import DistillConfig, distillation_loss_fn, frozen_teacher, kd_loss

__all__ = ["DistillConfig", "distillation_loss_fn", "frozen_teacher", "kd_loss"]
