"""The ``decompose`` recipe stage: low-rank factorisation of named layers (L1-L5) through
``nncompress.decompose.decompose``, with optional fine-tuning (and distillation).

The replacements are recorded on the model, so the saved ``.nnc`` file carries its
``lowrank`` record and ``nncompress.load`` rebuilds the decomposed model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nncompress.analysis.accounting import count_parameters
from nncompress.decompose.api import METHODS, LowRankConfig, decompose
from nncompress.errors import ConfigError
from nncompress.prune.mask import MaskCallback
from nncompress.recipes.context import RunContext
from nncompress.recipes.stages import register_stage
from nncompress.recipes.teacher import (
    StageDistillConfig,
    distill_loss,
    distill_session,
    distill_summary,
)
from nncompress.train.loop import TrainConfig, fit


@dataclass
class DecomposeConfig:
    """``layers``: module name or glob (``conv*``) -> ``{method, rank | energy | ratio}``
    with ``method`` one of svd (L1, Linear), separable (L2), tucker2 (L3), cp (L4) or btd
    (L5, with ``groups``) — ``nncompress.decompose.LowRankConfig``'s fields. ``rank``: an
    integer >= 1 (tucker2/btd: also ``[rank_out, rank_in]``); ``energy``: kept fraction of
    the squared singular values, in (0, 1] (svd, separable, tucker2); ``ratio``: target
    parameter fraction of the layer, in (0, 1]. ``finetune``: training after the
    factorisation (masks of earlier pruning kept on the untouched layers); ``distill``:
    that training also learns from the trained dense model (K1/K2, as in ``prune``)."""

    layers: dict[str, LowRankConfig] = field(default_factory=dict)
    finetune: TrainConfig | None = None
    distill: StageDistillConfig | None = None

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError(f"decompose: 'layers' must map at least one layer to a method "
                              f"({', '.join(METHODS)}), e.g. {{fc1: {{method: svd, rank: 32}}}}")
        if self.distill is not None and self.finetune is None:
            raise ConfigError("decompose: 'distill' acts during training; add a 'finetune' block")
        for name, cfg in self.layers.items():
            ranks = cfg.rank if isinstance(cfg.rank, (list, tuple)) else [cfg.rank]
            for r in ranks:
                if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
                    raise ConfigError(f"layers.{name}: rank={cfg.rank!r} out of range; allowed: integers "
                                      f">= 1 (at most the layer's full rank)")
            if isinstance(cfg.rank, (list, tuple)) and cfg.method not in ("tucker2", "btd"):
                raise ConfigError(f"layers.{name}: rank={cfg.rank!r} is a pair, which only tucker2 and btd "
                                  f"take; use one integer for {cfg.method!r}")


@register_stage("decompose", DecomposeConfig, "low-rank factorisation of layers (L1-L5: svd, separable, "
                                              "tucker2, cp, btd)")
def run_decompose(ctx: RunContext, cfg: DecomposeConfig) -> dict[str, Any]:
    """Factorise ``cfg.layers`` in place, then fine-tune if asked."""
    before = count_parameters(ctx.model)["parameters"]
    _, report = decompose(ctx.model, cfg.layers, example_input=ctx.example_input)
    ctx.forget_replaced_layers()
    ctx.snapshot("after_decompose")
    with distill_session(ctx):
        if cfg.finetune is not None:
            callbacks = [MaskCallback(ctx.masks)] if ctx.masks is not None else []
            fit(ctx.model, ctx.train_data, cfg.finetune, callbacks=callbacks,
                loss_fn=distill_loss(ctx, cfg.distill, cfg.finetune), progress=ctx.extras.get("progress", False))
            ctx.snapshot("after_decompose_finetune")
        summary = distill_summary(cfg.distill, ctx)
    return {**report.as_dict(), "parameters_before": before,
            "parameters_after": count_parameters(ctx.model)["parameters"], "distill": summary}
