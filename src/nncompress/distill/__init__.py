"""Knowledge distillation losses (K1), attention transfer (K2) and label-free distillation
of a compressed student (``unlabelled``)."""

from nncompress.distill.attention import (
    AttentionTransferLoss,
    at_loss,
    attention_map,
    attention_transfer_loss_fn,
)
from nncompress.distill.kd import DistillConfig, distillation_loss_fn, frozen_teacher, kd_loss
from nncompress.distill.relational import relational_loss, similarity_matrix
from nncompress.distill.unlabelled import (
    DistillReport,
    UnlabelledDistillConfig,
    cosine_loss,
    distill_unlabelled,
    masked_mse,
    pool_embeddings,
    soft_target_loss,
)

__all__ = ["AttentionTransferLoss", "DistillConfig", "DistillReport", "UnlabelledDistillConfig", "at_loss",
           "attention_map", "attention_transfer_loss_fn", "cosine_loss", "distill_unlabelled",
           "distillation_loss_fn", "frozen_teacher", "kd_loss", "masked_mse", "pool_embeddings",
           "relational_loss", "similarity_matrix", "soft_target_loss"]
