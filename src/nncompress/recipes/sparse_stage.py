"""The ``sparse_train`` recipe stage: the training-time and second-order sparsity methods
(P4, P5, S10-S13) through ``nncompress.prune.sparse_train``; its options are
``SparseTrainConfig``'s (``method``, the method's ``params``, the ``train`` budget)."""

from __future__ import annotations

from typing import Any

from nncompress.prune.mask import Masks
from nncompress.prune.sparse_train import SparseTrainConfig, sparse_train
from nncompress.prune.targets import prunable_weights
from nncompress.recipes.context import RunContext
from nncompress.recipes.stages import register_stage


@register_stage("sparse_train", SparseTrainConfig, "training-time / second-order sparsity (P4, P5, S10-S13)")
def run_sparse_train(ctx: RunContext, cfg: SparseTrainConfig) -> dict[str, Any]:
    res = sparse_train(ctx.model, cfg, ctx.train_data)
    ctx.model = res.model
    ctx.masks = Masks.from_zeros(ctx.model, list(prunable_weights(ctx.model)))
    ctx.snapshot(f"after_{cfg.method}")
    return {"method": cfg.method, "sparsity": ctx.masks.sparsity(),
            "total_sparsity": ctx.masks.total_sparsity(),
            "info": {k: v for k, v in res.info.items() if isinstance(v, (int, float, str, list, dict))}}
