"""Recipe stages: each is a typed config dataclass plus a function ``run(ctx, cfg)``.

New techniques register their stage with ``register_stage``; the YAML key is its name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from nncompress.errors import ConfigError
from nncompress.format import codec_hints, get_codec
from nncompress.prune.iterative import iterative_prune
from nncompress.prune.magnitude import magnitude_prune
from nncompress.prune.mask import MaskCallback, Masks
from nncompress.prune.retrain import adjust_dropouts, dropout_consumers
from nncompress.prune.targets import prunable_weights
from nncompress.recipes.context import RunContext
from nncompress.recipes.teacher import (
    StageDistillConfig,
    distill_loss,
    distill_session,
    distill_summary,
    keep_trained_teacher,
    teacher_of,
)
from nncompress.train.loop import TrainConfig, evaluate, fit
from nncompress.train.soup import soup_fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    name: str
    config: type
    run: Callable[[RunContext, Any], dict[str, Any] | None]
    doc: str = ""


class StageRegistry:
    """Stage name -> spec; ``STAGES`` is the default instance."""

    def __init__(self) -> None:
        self._stages: dict[str, StageSpec] = {}

    def register(self, name: str, config: type, doc: str = ""):
        def deco(fn):
            self._stages[name] = StageSpec(name, config, fn, doc)
            return fn
        return deco

    def get(self, name: str) -> StageSpec:
        if name not in self._stages:
            raise ConfigError(f"unknown recipe stage {name!r}; allowed: {', '.join(sorted(self._stages))}")
        return self._stages[name]

    def names(self) -> list[str]:
        return sorted(self._stages)


STAGES = StageRegistry()
register_stage = STAGES.register


def layer_key(model_params: Mapping[str, Any], key: str) -> str:
    """Accept ``fc1`` or ``fc1.weight`` in recipes."""
    return key if key in model_params or key == "default" else f"{key}.weight"


def normalise_layer_map(ctx: RunContext, value: Any, what: str) -> Any:
    """Per-layer mappings in recipes may name layers by module name (``fc1``)."""
    if not isinstance(value, Mapping):
        return value
    names = prunable_weights(ctx.model)
    out = {layer_key(names, k): v for k, v in value.items()}
    unknown = sorted(set(out) - set(names) - {"default"})
    if unknown:
        raise ConfigError(f"{what} names unknown layers {unknown}; allowed: {sorted(names)} or 'default'")
    return out


@dataclass
class EvaluateConfig:
    """Evaluate on the test split (no options yet)."""


@register_stage("train", TrainConfig, "train the model (options: TrainConfig fields)")
def run_train(ctx: RunContext, cfg: TrainConfig) -> dict[str, Any]:
    callbacks = [MaskCallback(ctx.masks)] if ctx.masks is not None else []
    hist = fit(ctx.model, ctx.train_data, cfg, callbacks=callbacks, progress=ctx.extras.get("progress", False))
    keep_trained_teacher(ctx)
    ctx.snapshot("trained")
    return {"epochs": len(hist.epochs), "final_train_loss": hist.epochs[-1]["train_loss"] if hist.epochs else None}


@dataclass
class PruneConfig:
    """Magnitude pruning, one-shot or iterative (Han et al. 2015).

    ``sparsity``: one number or {layer: s, default: s}; ``quality``: threshold =
    quality * std(W) per layer instead; ``schedule``: sparsities reached in successive
    rounds (iterative), each followed by ``retrain``. ``distill``: every retraining of the
    stage (rounds and ``final_retrain``) learns from the trained dense model too (K1, see
    ``nncompress.recipes.teacher``). ``final_soup``: run ``final_retrain`` that many times
    from the same pruned weights (other data orders) and keep the mean of the results (a
    uniform model soup, ``nncompress.train.soup``; masks shared, so zeros stay zero).
    """

    sparsity: float | dict[str, float] | None = None
    quality: float | dict[str, float] | None = None
    scope: str = "layer"
    schedule: list[float | dict[str, float]] | None = None
    retrain: TrainConfig | None = None
    regularizer: str | None = None
    reg_strength: float = 1e-4
    freeze: str | None = None
    adjust_dropout: bool = False
    final_retrain: TrainConfig | None = None
    remove_dead_neurons: bool = False
    include: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    distill: StageDistillConfig | None = None
    final_soup: int = 1

    def __post_init__(self) -> None:
        if isinstance(self.final_soup, bool) or not isinstance(self.final_soup, int) or self.final_soup < 1:
            raise ConfigError(f"prune.final_soup={self.final_soup!r} not allowed; use an integer >= 1 (1 = one "
                              f"final retraining, no soup)")
        if self.final_soup > 1 and self.final_retrain is None:
            raise ConfigError("prune.final_soup averages runs of final_retrain; add a 'final_retrain' config")


@register_stage("prune", PruneConfig, "magnitude pruning, one-shot or iterative with retraining")
def run_prune(ctx: RunContext, cfg: PruneConfig) -> dict[str, Any]:
    """The ``prune`` stage (attention-transfer hooks, if any, removed at its end)."""
    with distill_session(ctx):
        return _prune(ctx, cfg)


def _prune(ctx: RunContext, cfg: PruneConfig) -> dict[str, Any]:
    if cfg.schedule is None and cfg.sparsity is None and cfg.quality is None:
        raise ConfigError("prune: give sparsity, quality or schedule")
    if cfg.distill is not None:
        teacher_of(ctx)  # before the first cut: without a train stage, the unpruned model teaches
    ctx.snapshot("before_pruning")
    drop_p = {n: m.p for n, m in ctx.model.named_modules() if m.__class__.__name__ == "Dropout"}
    counts = {n.rsplit(".", 1)[0]: p.numel() for n, p in prunable_weights(ctx.model).items()}
    new_p: dict[str, float] = {}

    def adjust(_masks: Masks) -> None:
        if cfg.adjust_dropout and drop_p:
            new_p.update(adjust_dropouts(ctx.model, ctx.example_input, drop_p, counts))
    if cfg.schedule is not None:
        if cfg.retrain is None:
            raise ConfigError("prune: an iterative schedule needs a 'retrain' config")
        schedule = [normalise_layer_map(ctx, s, "prune.schedule") for s in cfg.schedule]
        res = iterative_prune(ctx.model, ctx.train_data, schedule, cfg.retrain, val_data=ctx.test_data,
                              scope=cfg.scope, regularizer=cfg.regularizer, reg_strength=cfg.reg_strength,
                              freeze=cfg.freeze, masks=ctx.masks, on_prune=adjust,
                              loss_fn=distill_loss(ctx, cfg.distill, cfg.retrain),
                              progress=ctx.extras.get("progress", False))
        ctx.masks = res.masks
        rounds = [{"sparsity": r.sparsity, "accuracy_pruned": r.accuracy_pruned,
                   "accuracy_retrained": r.accuracy_retrained} for r in res.rounds]
    else:
        ctx.masks = magnitude_prune(ctx.model, sparsity=normalise_layer_map(ctx, cfg.sparsity, "prune.sparsity"),
                                    quality=normalise_layer_map(ctx, cfg.quality, "prune.quality"),
                                    scope=cfg.scope, include=cfg.include, exclude=cfg.exclude,
                                    previous=ctx.masks)
        adjust(ctx.masks)
        rounds = []
        if cfg.retrain is not None:
            fit(ctx.model, ctx.train_data, cfg.retrain, callbacks=[MaskCallback(ctx.masks)],
                loss_fn=distill_loss(ctx, cfg.distill, cfg.retrain))
    soup: dict[str, Any] = {}
    if cfg.final_retrain is not None:
        masks = ctx.masks
        res = soup_fit(ctx.model, ctx.train_data, cfg.final_retrain, cfg.final_soup,
                       callbacks=lambda: [MaskCallback(masks)],
                       loss_fn=distill_loss(ctx, cfg.distill, cfg.final_retrain),
                       evaluate_fn=(lambda m: evaluate(m, ctx.test_data)["accuracy"]) if cfg.final_soup > 1 else None,
                       progress=ctx.extras.get("progress", False))
        if cfg.final_soup > 1:
            soup = {"ingredients": cfg.final_soup, "ingredient_accuracy": res.ingredient_scores,
                    "soup_of_first_accuracy": res.prefix_scores, "soup_accuracy": res.soup_score}
    removed: dict[str, int] = {}
    if cfg.remove_dead_neurons:
        from nncompress.prune.neurons import prune_dead_neurons

        removed = prune_dead_neurons(ctx.model, ctx.example_input)
        ctx.masks = Masks.from_zeros(ctx.model, list(prunable_weights(ctx.model)))
    ctx.snapshot("after_pruning")
    return {"removed_neurons": removed,
            "shapes": {n: list(p.shape) for n, p in prunable_weights(ctx.model).items()},
            "sparsity": ctx.masks.sparsity(), "total_sparsity": ctx.masks.total_sparsity(),
            "rounds": rounds, "dropout": new_p, **({"soup": soup} if soup else {}),
            "distill": distill_summary(cfg.distill, ctx),
            "dropout_consumers": dropout_consumers(ctx.model, ctx.example_input) if new_p else {}}


@register_stage("evaluate", EvaluateConfig, "measure test accuracy")
def run_evaluate(ctx: RunContext, cfg: EvaluateConfig) -> dict[str, Any]:
    return dict(evaluate(ctx.model, ctx.test_data))


@dataclass
class EncodeConfig:
    """How the final file stores tensors: relative-index widths (paper: 5 FC, 8 conv;
    ``auto`` picks the smallest per layer),
    Huffman ('auto' = when smaller), and the codec of non-weight tensors (biases, BN):
    ``fp16``/``bf16``/``int8`` (int8 codes times a power-of-two scale per tensor) round them
    in the model first, so the file still reproduces exactly the model that is evaluated."""

    index_bits_fc: int | str = 5
    index_bits_conv: int | str = 8
    huffman: str = "auto"
    other: str = "raw"

    def __post_init__(self) -> None:
        for k in ("index_bits_fc", "index_bits_conv"):
            v = getattr(self, k)
            if v != "auto" and (isinstance(v, str) or not 1 <= v <= 16):
                raise ConfigError(f"{k}={v!r} out of range; allowed: 1..16 or 'auto'")
        if self.huffman not in ("auto", "yes", "no"):
            raise ConfigError(f"huffman={self.huffman!r} not allowed; use auto, yes or no")
        if self.other not in ("raw", "fp16", "bf16", "int8", "auto"):
            raise ConfigError(f"other={self.other!r} not allowed; use raw, fp16, bf16, int8 or auto")


@register_stage("encode", EncodeConfig, "choose the codecs of the saved file")
def run_encode(ctx: RunContext, cfg: EncodeConfig) -> dict[str, Any]:
    try:
        weights = prunable_weights(ctx.model)
    except ConfigError:  # e.g. every Linear hashed: no Linear/Conv weight left
        weights = {}
    for name, choice in codec_hints(ctx.model).items():  # a low-bit method's finalize chose its packing
        ctx.codecs.setdefault(name, choice)
    for name, w in weights.items():
        if name in ctx.codecs:
            continue
        bits = cfg.index_bits_conv if w.dim() > 2 else cfg.index_bits_fc
        ctx.codecs[name] = ("auto", {"index_bits": bits, "huffman": cfg.huffman})
    codec = get_codec(cfg.other) if cfg.other != "auto" else None
    for name, t in ctx.model.state_dict().items():
        if name not in ctx.codecs and name not in weights and t.is_floating_point():
            ctx.codecs[name] = cfg.other
            if codec is not None and not codec.lossless:  # round now: the evaluated model is what the file holds
                with torch.no_grad():
                    t.copy_(codec.decode(codec.encode(t)))
    return {"codecs": {k: v if isinstance(v, str) else v[0] for k, v in ctx.codecs.items()}}


def masks_or_zeros(ctx: RunContext) -> Masks:
    """The run's masks, or masks of the current zeros when no prune stage ran."""
    return ctx.masks if ctx.masks is not None else Masks.from_zeros(ctx.model, list(prunable_weights(ctx.model)))
