"""P2 iterative train-prune-retrain: prune to a rising sparsity, retrain the survivors
(never re-initialised), repeat until the target."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from nncompress.checks import check_choice, check_float
from nncompress.errors import ConfigError
from nncompress.prune.magnitude import (
    LayerValues,
    MagnitudeConfig,
    check_sparsities,
    magnitude_prune,
)
from nncompress.prune.mask import MaskCallback, Masks
from nncompress.prune.retrain import FREEZE_KINDS, REGULARIZERS, Regularizer, frozen
from nncompress.prune.targets import prunable_weights
from nncompress.train.callbacks import Callback
from nncompress.train.loop import TrainConfig, evaluate, fit

log = logging.getLogger(__name__)


@dataclass
class PruneRound:
    """What one prune -> retrain round did."""

    sparsity: dict[str, float]
    accuracy_pruned: float | None
    accuracy_retrained: float | None


@dataclass
class IterativeResult:
    masks: Masks
    rounds: list[PruneRound] = field(default_factory=list)


@dataclass
class IterativeConfig(MagnitudeConfig):
    """Magnitude pruning with retraining (Han et al. 2015): the rounds of ``schedule``, each
    followed by ``retrain`` (``iterative_prune``); the one-shot fields (``sparsity`` /
    ``quality``) serve the callers that prune once instead.

    Example:
        >>> IterativeConfig(schedule=[0.5, 0.8], retrain=TrainConfig(epochs=1)).scope
        'layer'
    """

    schedule: list[LayerValues] | None = None
    """Sparsities reached in successive rounds (each one number or ``{layer: s, default:
    s}``), each followed by ``retrain``."""
    retrain: TrainConfig | None = None
    """Training after each cut (``TrainConfig``); needed with ``schedule``."""
    regularizer: str | None = None
    """l1 or l2 weight penalty while retraining (rounds of ``schedule``)."""
    reg_strength: float = 1e-4
    """Strength of the regularizer (>= 0)."""
    freeze: str | None = None
    """``conv``: retrain only the FC layers; ``fc``: only the conv layers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for target in self.schedule or []:
            check_sparsities(target, "schedule sparsity")
        if self.schedule is not None and self.retrain is None:
            raise ConfigError("an iterative schedule needs a 'retrain' config")
        if self.regularizer is not None:
            check_choice(self.regularizer, REGULARIZERS, "regularizer")
        check_float(self.reg_strength, "reg_strength", 0)
        if self.freeze is not None:
            check_choice(self.freeze, FREEZE_KINDS, "freeze")


def iterative_prune(
    model: nn.Module,
    train_data: Dataset,
    config: IterativeConfig | Sequence[LayerValues],
    retrain: TrainConfig | None = None,
    *,
    val_data: Dataset | None = None,
    masks: Masks | None = None,
    callbacks: Sequence[Callback] = (),
    loss_fn=None,
    on_prune: Callable[[Masks], None] | None = None,
    progress: bool = False,
    **options: Any,
) -> IterativeResult:
    """Run ``len(config.schedule)`` rounds of magnitude prune + retrain.

    Each entry of the schedule is a sparsity (or per-layer dict) reached in that round;
    pruned weights stay pruned in later rounds. ``freeze='conv'`` retrains only FC layers
    (and ``'fc'`` only conv), as in Han et al. (2015). ``loss_fn`` replaces
    cross-entropy while retraining (e.g. distillation from the dense model);
    ``on_prune(masks)`` runs after each cut, before retraining (e.g. dropout adjustment);
    ``progress`` shows a progress bar per retraining. The keyword style
    ``iterative_prune(model, train_data, schedule, retrain, **fields)`` builds the config.

    Example:
        >>> cfg = IterativeConfig(schedule=[0.5, 0.8, 0.9], retrain=TrainConfig(epochs=1))
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> g = torch.Generator().manual_seed(0)
        >>> train = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> res = iterative_prune(build_model("lenet300"), train, cfg)
        >>> [r.sparsity["fc1.weight"] for r in res.rounds], round(res.masks.total_sparsity(), 3)
        ([0.5, 0.8, 0.9], 0.9)
    """
    if isinstance(config, IterativeConfig):
        if retrain is not None or options:
            raise TypeError("iterative_prune(model, train_data, config): the options belong in the config")
    else:
        config = IterativeConfig(schedule=list(config), retrain=retrain, **options)
    if config.schedule is None:
        raise ConfigError("iterative_prune needs a schedule (the sparsity of each round)")
    result = IterativeResult(masks=masks or Masks({}))
    for target in config.schedule:
        sparsity = target if isinstance(target, Mapping) else float(target)
        result.masks = magnitude_prune(model, sparsity=sparsity, scope=config.scope, include=config.include,
                                       exclude=config.exclude, previous=result.masks or None)
        if on_prune is not None:
            on_prune(result.masks)
        acc_pruned = evaluate(model, val_data)["accuracy"] if val_data is not None else None
        cbs: list[Callback] = [MaskCallback(result.masks), *callbacks]
        if config.regularizer:
            cbs.insert(0, Regularizer(prunable_weights(model), config.regularizer, config.reg_strength))
        with frozen(model, config.freeze) if config.freeze else nullcontext():
            fit(model, train_data, config.retrain, callbacks=cbs, loss_fn=loss_fn, progress=progress)
        acc = evaluate(model, val_data)["accuracy"] if val_data is not None else None
        result.rounds.append(PruneRound(result.masks.sparsity(), acc_pruned, acc))
        log.info("round to %s: pruned acc %s, retrained acc %s", target, acc_pruned, acc)
    return result
