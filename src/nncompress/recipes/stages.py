"""Recipe stages: each is a typed config dataclass plus a function ``run(ctx, cfg)``.

New techniques register their stage with ``register_stage``; the YAML key is its name.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from nncompress.checks import check_choice
from nncompress.errors import ConfigError
from nncompress.format import codec_hints, get_codec
from nncompress.prune.mask import MaskCallback, Masks
from nncompress.prune.targets import prunable_weights
from nncompress.recipes.context import RunContext
from nncompress.recipes.teacher import keep_trained_teacher
from nncompress.train.loop import TrainConfig, evaluate, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageSpec:
    name: str
    config: type
    run: Callable[[RunContext, Any], dict[str, Any] | None]
    doc: str = ""


def reported(name: str, fn: Callable[[RunContext, Any], dict[str, Any] | None]
             ) -> Callable[[RunContext, Any], dict[str, Any] | None]:
    """``fn`` with the run's progress told when the stage starts (its heading, after the
    previous stage's result line): every registered stage gets it, so a stage's own code
    only labels its fits (``ctx.progress.fits(label)``)."""
    @functools.wraps(fn)
    def run(ctx: RunContext, cfg: Any) -> dict[str, Any] | None:
        progress = getattr(ctx, "progress", None)
        if progress is not None:
            progress.stage_begin(name, cfg, ctx)
        return fn(ctx, cfg)
    return run


class StageRegistry:
    """Stage name -> spec; ``STAGES`` is the default instance. A registered stage's ``run``
    reports its start to the run's progress (``reported``)."""

    def __init__(self) -> None:
        self._stages: dict[str, StageSpec] = {}

    def register(self, name: str, config: type, doc: str = ""):
        def deco(fn):
            self._stages[name] = StageSpec(name, config, reported(name, fn), doc)
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
    """Evaluate on the test split (no options)."""


@register_stage("train", TrainConfig, "train the model (options: TrainConfig fields)")
def run_train(ctx: RunContext, cfg: TrainConfig) -> dict[str, Any]:
    callbacks = [MaskCallback(ctx.masks)] if ctx.masks is not None else []
    hist = fit(ctx.model, ctx.train_data, cfg, callbacks=callbacks, progress=ctx.progress.fits("train"),
               loss_fn=ctx.loss_fn, checkpoint=ctx.extras.get("fit_checkpoint"))
    keep_trained_teacher(ctx)
    ctx.snapshot("trained")
    return {"epochs": len(hist.epochs), "final_train_loss": hist.epochs[-1]["train_loss"] if hist.epochs else None}


@register_stage("evaluate", EvaluateConfig, "measure test accuracy")
def run_evaluate(ctx: RunContext, cfg: EvaluateConfig) -> dict[str, Any]:
    return dict(evaluate(ctx.model, ctx.test_data, loss_fn=ctx.loss_fn, metric_fn=ctx.metric_fn))


@dataclass
class EncodeConfig:
    """How the final file stores tensors (``fp16`` / ``bf16`` / ``int8`` for ``other`` round
    the tensors in the model first, so the file still reproduces exactly the model that is
    evaluated)."""

    index_bits_fc: int | str = 5
    """Width of the relative sparse indices of Linear weights, 1..16 (paper: 5), or ``auto``:
    the smallest per layer."""
    index_bits_conv: int | str = 8
    """Width of the relative sparse indices of conv weights, 1..16 (paper: 8), or ``auto``."""
    huffman: str = "auto"
    """Huffman-code the index and value streams: ``yes``, ``no`` or ``auto`` (when smaller)."""
    other: str = "raw"
    """Codec of the non-weight tensors (biases, BatchNorm): raw, fp16, bf16, int8 (codes
    times a power-of-two scale per tensor) or auto."""

    def __post_init__(self) -> None:
        for k in ("index_bits_fc", "index_bits_conv"):
            v = getattr(self, k)
            if v != "auto" and (isinstance(v, str) or not 1 <= v <= 16):
                raise ConfigError(f"{k}={v!r} out of range; allowed: 1..16 or 'auto'")
        check_choice(self.huffman, ("auto", "yes", "no"), "huffman")
        check_choice(self.other, ("raw", "fp16", "bf16", "int8", "auto"), "other")


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
