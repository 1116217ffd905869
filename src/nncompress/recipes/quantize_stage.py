"""The ``quantize`` recipe stage: YAML -> a quantizer config -> ``quantize_model``.

``method: <name>`` picks the config class registered under that name
(``nncompress.quantize.registry``; default ``kmeans``); every other key is a field of that
config, which checks it (older recipes nest them under ``params:``; the two forms mix).
The run keys are the same for every method: ``finetune`` (training settings of the
method's fine-tuning) and ``distill`` (that training also learns from the run's teacher,
K1 and K2 with ``attention``; see ``nncompress.recipes.teacher``). Pruned weights stay
zero through the fine-tuning. Nothing here knows a quantizer by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from nncompress.config import fields_from_dict, from_dict
from nncompress.errors import ConfigError
from nncompress.quantize.registry import (
    QUANTIZERS,
    QuantizerConfig,
    QuantizeRun,
    check_training,
    quantize_model,
)
from nncompress.recipes.context import RunContext
from nncompress.recipes.stages import register_stage
from nncompress.recipes.teacher import (
    StageDistillConfig,
    distill_loss,
    distill_session,
    distill_summary,
    teacher_of,
)
from nncompress.train.loop import TrainConfig


@dataclass
class QuantizeStageConfig:
    """A parsed ``quantize`` stage: the method's name and config, and the run keys."""

    method: str
    quantizer: QuantizerConfig
    finetune: TrainConfig | None = None
    distill: StageDistillConfig | None = None


@dataclass
class QuantizeStageKeys:
    """The stage's keys that are not a quantizer's fields (no quantizer may use these names)."""

    method: str = "kmeans"
    """A registered quantizer (``nncompress.quantize.QUANTIZERS.names()``)."""
    params: dict[str, Any] = field(default_factory=dict)
    """The method's options nested (the form of older recipes); or give them as keys of the stage."""
    finetune: TrainConfig | None = None
    """Training settings of the method's fine-tuning (methods that always train have defaults)."""
    distill: StageDistillConfig | None = None
    """The fine-tuning also learns from the run's teacher (K1, K2 with ``attention``)."""

    @classmethod
    def from_options(cls, data: dict[str, Any], where: str) -> QuantizeStageConfig:
        """The stage from YAML: the stage keys (typed), the rest the method's options."""
        own = {f.name for f in dataclasses.fields(cls)}
        keys = fields_from_dict(cls, {k: v for k, v in data.items() if k in own}, where)
        options = {k: v for k, v in data.items() if k not in own}
        try:
            return stage_config(keys.method, dict(keys.params), options, keys.finetune, keys.distill)
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from exc

    @staticmethod
    def param_types() -> dict[str, type]:
        """The config class of each method (for the recipe reference)."""
        return {name: QUANTIZERS.get(name).config for name in QUANTIZERS.names()}


def _init_fields(config: type) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(config) if f.init)


def _methods_by_option() -> dict[str, list[str]]:
    """Option name -> the methods whose config has it (registration order)."""
    out: dict[str, list[str]] = {}
    for name in QUANTIZERS.names():
        for key in _init_fields(QUANTIZERS.get(name).config):
            out.setdefault(key, []).append(name)
    return out


def stage_config(method: str, params: dict[str, Any], options: dict[str, Any], finetune: TrainConfig | None,
                 distill: StageDistillConfig | None) -> QuantizeStageConfig:
    """The method's config from its options (top-level keys and ``params``), checked by
    the config, and the run keys checked against the method's ``training()``."""
    spec = QUANTIZERS.get(method)
    allowed = _init_fields(spec.config)
    clash = sorted(set(allowed) & {f.name for f in dataclasses.fields(QuantizeStageKeys)})
    if clash:
        raise ConfigError(f"method {method!r}: its config has fields {clash}, names of the stage's own keys; "
                          f"rename them in {spec.config.__name__}")
    twice = sorted(set(params) & set(options))
    if twice:
        raise ConfigError(f"{twice} given at the top level and in 'params'; give each once")
    where = "params" if params and not options else f"method {method!r}"
    given = {**options, **params}
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        takers = _methods_by_option()
        hint = "; ".join(f"{k!r} is an option of {takers[k]}" for k in unknown if k in takers)
        raise ConfigError(f"{where}: unknown key(s) {unknown}; allowed: {allowed}" + (f" ({hint})" if hint else ""))
    quantizer = from_dict(spec.config, given, where)
    check_training(method, quantizer, finetune=finetune is not None, distill=distill is not None)
    return QuantizeStageConfig(method, quantizer, finetune, distill)


@register_stage("quantize", QuantizeStageKeys, "quantize with a registered quantizer (method: kmeans, bfp, "
                                               "hashed, bwnh, a low-bit method, ...)")
def run_quantize(ctx: RunContext, cfg: QuantizeStageConfig) -> dict[str, Any]:
    """Quantize ``ctx.model`` with the stage's config; attention-transfer hooks, if any,
    are removed at the end. Report: the method, its summary and the distillation."""
    with distill_session(ctx):
        if cfg.distill is not None:
            teacher_of(ctx)  # without a train stage, the model as it is before quantization teaches
        run = QuantizeRun(train_data=ctx.train_data, calib_data=ctx.calib_data, finetune=cfg.finetune,
                          distill=(lambda train: distill_loss(ctx, cfg.distill, train)) if cfg.distill is not None else None,
                          masks=ctx.masks, progress=ctx.progress.fits("quantize fine-tune"), seed=ctx.seed,
                          snapshot=ctx.snapshot, loss_fn=ctx.loss_fn if cfg.distill is None else None)
        result = quantize_model(ctx.model, cfg.quantizer, run)
        ctx.model = result.model
        ctx.forget_replaced_layers()
        return {"method": cfg.method, **result.summary, "distill": distill_summary(cfg.distill, ctx)}
