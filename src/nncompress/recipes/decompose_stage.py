"""The ``decompose`` recipe stage: replace layers by a factorised or structured form
(``nncompress.decompose``), with optional fine-tuning (and distillation).

``method: <name>`` picks a method registered in ``nncompress.decompose.DECOMPOSE_METHODS``
(default ``lowrank``: L1-L5 per layer through ``layers: {name: {method: svd, rank: 16}}``;
``tt`` L6, ``toeplitz`` / ``circulant`` L7, ``ternary`` L8 with their options as keys of
the stage, layers chosen by ``include`` / ``exclude``). The run keys are the same for every
method: ``finetune`` and ``distill``. Nothing here knows a method by name.

The replaced layers are recorded on the model (the ``lowrank`` record, or the layer
records of the L6-L8 modules), so the saved ``.nnc`` file rebuilds the decomposed model.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from nncompress.analysis.accounting import count_parameters
from nncompress.config import fields_from_dict
from nncompress.decompose.registry import DECOMPOSE_METHODS, apply_method, method_config
from nncompress.errors import ConfigError
from nncompress.prune.mask import MaskCallback
from nncompress.recipes.context import RunContext
from nncompress.recipes.stages import register_stage
from nncompress.recipes.teacher import (
    StageDistillConfig,
    check_distill,
    distill_loss,
    distill_session,
    distill_summary,
)
from nncompress.train.loop import TrainConfig, fit


@dataclass
class DecomposeStageConfig:
    """A parsed ``decompose`` stage: the method's name and config, and the run keys."""

    method: str
    config: Any
    finetune: TrainConfig | None = None
    distill: StageDistillConfig | None = None


@dataclass
class DecomposeStageKeys:
    """The stage's keys that are not a method's options (no method's config may use these names)."""

    method: str = "lowrank"
    """A registered method (``nncompress.decompose.DECOMPOSE_METHODS``): lowrank (L1-L5, per layer in
    ``layers``), tt (L6), toeplitz / circulant (L7), ternary (L8); its options are keys of the stage."""
    finetune: TrainConfig | None = None
    """Training after the factorisation (masks of earlier pruning kept on the untouched layers)."""
    distill: StageDistillConfig | None = None
    """The fine-tuning also learns from the trained dense model (K1/K2, as in ``prune``)."""

    @classmethod
    def from_options(cls, data: dict[str, Any], where: str) -> DecomposeStageConfig:
        """The stage from YAML: the stage keys (typed), the rest the method's options."""
        own = {f.name for f in dataclasses.fields(cls)}
        keys = fields_from_dict(cls, {k: v for k, v in data.items() if k in own}, where)
        options = {k: v for k, v in data.items() if k not in own}
        try:
            spec = DECOMPOSE_METHODS.get(keys.method)
            clash = sorted(set(spec.options()) & own)
            if clash:
                raise ConfigError(f"method {keys.method!r}: its config has fields {clash}, names of the stage's "
                                  f"own keys; rename them in {spec.config.__name__}")
            check_distill(keys.distill, keys.finetune)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
        config = method_config(keys.method, options, where)  # its messages name ``where``
        return DecomposeStageConfig(keys.method, config, keys.finetune, keys.distill)

    @staticmethod
    def param_types() -> dict[str, type]:
        """The config class of each method (for the recipe reference)."""
        return {name: DECOMPOSE_METHODS.get(name).config for name in DECOMPOSE_METHODS.names()}


@register_stage("decompose", DecomposeStageKeys, "replace layers by factors or structured matrices (method: "
                                                 "lowrank L1-L5 per layer, tt L6, toeplitz/circulant L7, ternary L8)")
def run_decompose(ctx: RunContext, cfg: DecomposeStageConfig) -> dict[str, Any]:
    """Apply the stage's method to ``ctx.model`` in place, then fine-tune if asked."""
    before = count_parameters(ctx.model)["parameters"]
    layers = apply_method(ctx.model, cfg.method, cfg.config, example_input=ctx.example_input)
    ctx.forget_replaced_layers()
    ctx.snapshot("after_decompose")
    with distill_session(ctx):
        if cfg.finetune is not None:
            callbacks = [MaskCallback(ctx.masks)] if ctx.masks is not None else []
            fit(ctx.model, ctx.train_data, cfg.finetune, callbacks=callbacks,
                loss_fn=distill_loss(ctx, cfg.distill, cfg.finetune), progress=ctx.progress.fits(f"{cfg.method} fine-tune"))
            ctx.snapshot("after_decompose_finetune")
        summary = distill_summary(cfg.distill, ctx)
    return {"method": cfg.method, "layers": [{**rep, "name": name} for name, rep in layers.items()],
            "parameters_before": before, "parameters_after": count_parameters(ctx.model)["parameters"],
            "distill": summary}
