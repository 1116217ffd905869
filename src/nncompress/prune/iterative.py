"""P2 iterative train-prune-retrain: prune to a rising sparsity, retrain the survivors
(never re-initialised), repeat until the target."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field

from torch import nn
from torch.utils.data import Dataset

from nncompress.prune.magnitude import magnitude_prune
from nncompress.prune.mask import MaskCallback, Masks
from nncompress.prune.retrain import Regularizer, frozen
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


def iterative_prune(
    model: nn.Module,
    train_data: Dataset,
    schedule: Sequence[float | Mapping[str, float]],
    retrain: TrainConfig,
    *,
    val_data: Dataset | None = None,
    scope: str = "layer",
    regularizer: str | None = None,
    reg_strength: float = 1e-4,
    freeze: str | None = None,
    masks: Masks | None = None,
    callbacks: Sequence[Callback] = (),
    loss_fn=None,
    on_prune: Callable[[Masks], None] | None = None,
    progress: bool = False,
) -> IterativeResult:
    """Run ``len(schedule)`` rounds of magnitude prune + retrain.

    Each entry of ``schedule`` is a sparsity (or per-layer dict) reached in that round;
    pruned weights stay pruned in later rounds. ``freeze='conv'`` retrains only FC layers
    (and ``'fc'`` only conv), as in Han et al. (2015). ``loss_fn`` replaces
    cross-entropy while retraining (e.g. distillation from the dense model);
    ``on_prune(masks)`` runs after each cut, before retraining (e.g. dropout adjustment);
    ``progress`` shows a progress bar per retraining.

    Example:
        >>> iterative_prune(model, train, [0.5, 0.8, 0.9], TrainConfig(epochs=1))  # doctest: +SKIP
    """
    result = IterativeResult(masks=masks or Masks({}))
    for target in schedule:
        sparsity = target if isinstance(target, Mapping) else float(target)
        result.masks = magnitude_prune(model, sparsity=sparsity, scope=scope,
                                       previous=result.masks or None)
        if on_prune is not None:
            on_prune(result.masks)
        acc_pruned = evaluate(model, val_data)["accuracy"] if val_data is not None else None
        cbs: list[Callback] = [MaskCallback(result.masks), *callbacks]
        if regularizer:
            cbs.insert(0, Regularizer(prunable_weights(model), regularizer, reg_strength))
        with frozen(model, freeze) if freeze else nullcontext():
            fit(model, train_data, retrain, callbacks=cbs, loss_fn=loss_fn, progress=progress)
        acc = evaluate(model, val_data)["accuracy"] if val_data is not None else None
        result.rounds.append(PruneRound(result.masks.sparsity(), acc_pruned, acc))
        log.info("round to %s: pruned acc %s, retrained acc %s", target, acc_pruned, acc)
    return result
