"""Knowledge distillation losses."""

from nncompress.distill.kd import distillation_loss_fn, kd_loss

__all__ = ["distillation_loss_fn", "kd_loss"]
