"""The ``prune`` recipe stage: magnitude pruning, one-shot or iterative (P1, P2), with the
retraining around it: dropout adjustment, a final retraining (optionally a model soup),
dead-neuron removal (P3) and distillation from the trained dense model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from nncompress.errors import ConfigError
from nncompress.prune.iterative import IterativeConfig, iterative_prune
from nncompress.prune.magnitude import MagnitudeConfig, magnitude_prune
from nncompress.prune.mask import MaskCallback, Masks
from nncompress.prune.retrain import adjust_dropouts, dropout_consumers
from nncompress.prune.targets import prunable_weights
from nncompress.recipes.context import RunContext
from nncompress.recipes.stages import normalise_layer_map, register_stage
from nncompress.recipes.teacher import (
    StageDistillConfig,
    distill_loss,
    distill_session,
    distill_summary,
    teacher_of,
)
from nncompress.train.loop import TrainConfig, fit
from nncompress.train.soup import soup_fit


@dataclass
class PruneStageConfig(IterativeConfig):
    """``nncompress.prune.iterative.IterativeConfig`` (one-shot ``sparsity`` / ``quality``,
    or the rounds of ``schedule``, each followed by ``retrain``) plus the retraining around
    it. Layer names may be module names (``fc1``)."""

    adjust_dropout: bool = False
    """After every cut, scale each dropout rate by sqrt(kept connections / original) of the
    layer it feeds (Han et al. 2015)."""
    final_retrain: TrainConfig | None = None
    """One more (longer) retraining at the end, masks kept."""
    final_soup: int = 1
    """Run ``final_retrain`` that many times from the same pruned weights (other data orders)
    and keep the mean of the results (a uniform model soup; masks shared)."""
    remove_dead_neurons: bool = False
    """At the end, remove neurons whose weights are all zero (P3), shrinking the layers."""
    distill: StageDistillConfig | None = None
    """Every retraining of the stage (rounds and ``final_retrain``) also learns from the
    trained dense model (K1; K2 with ``attention``)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule is None and self.sparsity is None and self.quality is None:
            raise ConfigError("give sparsity, quality or schedule")
        if isinstance(self.final_soup, bool) or not isinstance(self.final_soup, int) or self.final_soup < 1:
            raise ConfigError(f"prune.final_soup={self.final_soup!r} not allowed; use an integer >= 1 (1 = one "
                              f"final retraining, no soup)")
        if self.final_soup > 1 and self.final_retrain is None:
            raise ConfigError("prune.final_soup averages runs of final_retrain; add a 'final_retrain' config")


def final_label(ingredients: int):
    """Labels of the final retraining's fits: ``final retrain`` alone, ``final retrain
    2/4`` for the ingredients of a soup.

    Example:
        >>> final_label(4)(1)
        'final retrain 2/4'
    """
    return lambda i: "final retrain" if ingredients == 1 else f"final retrain {i + 1}/{ingredients}"


@register_stage("prune", PruneStageConfig, "magnitude pruning, one-shot or iterative with retraining")
def run_prune(ctx: RunContext, cfg: PruneStageConfig) -> dict[str, Any]:
    """The ``prune`` stage (attention-transfer hooks, if any, removed at its end)."""
    with distill_session(ctx):
        return _prune(ctx, cfg)


def _prune(ctx: RunContext, cfg: PruneStageConfig) -> dict[str, Any]:
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
        schedule = [normalise_layer_map(ctx, s, "prune.schedule") for s in cfg.schedule]
        res = iterative_prune(ctx.model, ctx.train_data, replace(cfg, schedule=schedule), val_data=ctx.test_data,
                              masks=ctx.masks, on_prune=adjust,
                              loss_fn=distill_loss(ctx, cfg.distill, cfg.retrain),
                              progress=ctx.progress.fits(lambda i: f"round {i + 1}/{len(schedule)} retrain"))
        ctx.masks = res.masks
        rounds = [{"sparsity": r.sparsity, "accuracy_pruned": r.accuracy_pruned,
                   "accuracy_retrained": r.accuracy_retrained} for r in res.rounds]
    else:
        one_shot = MagnitudeConfig(sparsity=normalise_layer_map(ctx, cfg.sparsity, "prune.sparsity"),
                                   quality=normalise_layer_map(ctx, cfg.quality, "prune.quality"),
                                   scope=cfg.scope, include=cfg.include, exclude=cfg.exclude)
        ctx.masks = magnitude_prune(ctx.model, one_shot, previous=ctx.masks)
        adjust(ctx.masks)
        rounds = []
        if cfg.retrain is not None:
            fit(ctx.model, ctx.train_data, cfg.retrain, callbacks=[MaskCallback(ctx.masks)],
                loss_fn=distill_loss(ctx, cfg.distill, cfg.retrain), progress=ctx.progress.fits("retrain"))
    soup: dict[str, Any] = {}
    if cfg.final_retrain is not None:
        masks = ctx.masks
        res = soup_fit(ctx.model, ctx.train_data, cfg.final_retrain, cfg.final_soup,
                       callbacks=lambda: [MaskCallback(masks)],
                       loss_fn=distill_loss(ctx, cfg.distill, cfg.final_retrain),
                       evaluate_fn=ctx.score if cfg.final_soup > 1 else None,
                       progress=ctx.progress.fits(final_label(cfg.final_soup)))
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


