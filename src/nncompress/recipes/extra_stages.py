"""Recipe stages of the training-time sparsity methods (issue 4), structured pruning
(issue 3) and the low-bit quantizers (via the ``quantize`` stage)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nncompress.prune.mask import Masks
from nncompress.prune.targets import prunable_weights
from nncompress.recipes.context import RunContext
from nncompress.recipes.stages import register_stage
from nncompress.train.loop import TrainConfig


@dataclass
class SparseTrainConfig:
    """``method``: gradual (P4), dns (P5), obd/obs (S10), ssl (S11), gsm (S12), csgd (S13)
    or magnitude; ``params`` are the method's own (see ``nncompress.prune.sparse_train``);
    ``train``: the training budget (one-shot obd/obs/magnitude may omit it)."""

    method: str = "gradual"
    params: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig | None = None


@register_stage("sparse_train", SparseTrainConfig, "training-time / second-order sparsity (P4, P5, S10-S13)")
def run_sparse_train(ctx: RunContext, cfg: SparseTrainConfig) -> dict[str, Any]:
    from nncompress.prune.sparse_train import sparse_train

    res = sparse_train(ctx.model, cfg.method, ctx.train_data, cfg.train, **cfg.params)
    ctx.model = res.model
    ctx.masks = Masks.from_zeros(ctx.model, list(prunable_weights(ctx.model)))
    ctx.snapshot(f"after_{cfg.method}")
    return {"method": cfg.method, "sparsity": ctx.masks.sparsity(),
            "total_sparsity": ctx.masks.total_sparsity(),
            "info": {k: v for k, v in res.info.items() if isinstance(v, (int, float, str, list, dict))}}
