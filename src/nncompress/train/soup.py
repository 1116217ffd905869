"""Uniform model soup (Wortsman et al. 2022, "Model soups", arXiv 2203.05482): train the
same starting point several times with different data orders and average the weights.

Fine-tuned copies of one starting point tend to stay in one basin of the loss, where the
mean of their weights is about as good as an ensemble of them and better than each one,
at no cost at inference. Inside prune-retrain every copy keeps the same masks, so the
mean keeps every pruned weight exactly zero. BatchNorm running statistics are averaged
too, which is only an approximation of the statistics of the averaged weights;
recalibrate them on a model with BatchNorm.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import nn
from torch.utils.data import Dataset

from nncompress.errors import ConfigError
from nncompress.train.callbacks import Callback
from nncompress.train.loop import History, TrainConfig, fit

log = logging.getLogger(__name__)
SEED_STRIDE = 1000  # ingredient i trains with seed cfg.seed + i * SEED_STRIDE


def average_states(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of state dicts with the same keys and shapes. Floating tensors are
    averaged (in float64, cast back); other tensors (integer counters) come from the first.

    Example:
        >>> average_states([{"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([1.0, 4.0])}])["w"]
        tensor([0.5000, 3.0000])
    """
    if not states:
        raise ConfigError("average_states needs at least one state dict")
    keys = list(states[0])
    for i, s in enumerate(states[1:], 1):
        if list(s) != keys:
            raise ConfigError(f"state dict {i} has keys {sorted(set(s) ^ set(keys))} that state dict 0 "
                              f"does not share; a soup needs copies of one architecture")
    out = {}
    for k in keys:
        first = states[0][k]
        if any(s[k].shape != first.shape for s in states):
            raise ConfigError(f"{k}: shapes {[tuple(s[k].shape) for s in states]} differ; a soup needs one shape")
        if first.is_floating_point():
            total = sum(s[k].detach().double() for s in states)
            out[k] = (total / len(states)).to(first.dtype)
        else:
            out[k] = first.detach().clone()
    return out


@dataclass
class SoupResult:
    """Histories of the ingredients' runs and, when ``evaluate_fn`` was given, each
    ingredient's score, the score of the soup of the first j ingredients for j = 2..k
    (``prefix_scores``; the last is the soup's, also ``soup_score``)."""

    histories: list[History] = field(default_factory=list)
    ingredient_scores: list[float] = field(default_factory=list)
    prefix_scores: list[float] = field(default_factory=list)

    @property
    def soup_score(self) -> float | None:
        """Score of the soup of all ingredients (None without a soup or ``evaluate_fn``)."""
        return self.prefix_scores[-1] if self.prefix_scores else None


def soup_fit(model: nn.Module, train_data: Dataset, cfg: TrainConfig, ingredients: int, *,
             callbacks: Callable[[], Sequence[Callback]] = tuple, loss_fn=None,
             evaluate_fn: Callable[[nn.Module], float] | None = None, progress: bool = False) -> SoupResult:
    """Train ``model`` ``ingredients`` times from its current weights (ingredient i with
    ``seed = cfg.seed + i * 1000``: its own data order, augmentation and dropout) and load
    the mean of the resulting weights (a uniform soup). ``ingredients=1`` is exactly
    ``fit(model, train_data, cfg)``. ``callbacks()`` builds a fresh callback list per
    ingredient (e.g. ``lambda: [MaskCallback(masks)]``); ``evaluate_fn(model)`` scores every
    ingredient and the soup (for the report; it never chooses among them); ``progress``
    shows a progress bar per ingredient.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> from nncompress.prune.magnitude import magnitude_prune
        >>> from nncompress.prune.mask import MaskCallback
        >>> model = build_model("lenet300")
        >>> m = magnitude_prune(model, sparsity=0.9)
        >>> _ = soup_fit(model, data, TrainConfig(epochs=1), 2, callbacks=lambda: [MaskCallback(m)])
        >>> round(float((model.fc1.weight == 0).float().mean()), 2)  # the mean of masked runs keeps the mask
        0.9
    """
    if isinstance(ingredients, bool) or not isinstance(ingredients, int) or ingredients < 1:
        raise ConfigError(f"soup ingredients={ingredients!r} not allowed; use an integer >= 1 (1 = no soup)")
    start = copy.deepcopy(model.state_dict()) if ingredients > 1 else None
    result, finals = SoupResult(), []
    for i in range(ingredients):
        if i:
            model.load_state_dict(start)
        result.histories.append(fit(model, train_data, replace(cfg, seed=cfg.seed + i * SEED_STRIDE),
                                    callbacks=list(callbacks()), loss_fn=loss_fn, progress=progress))
        if ingredients > 1:
            finals.append(copy.deepcopy(model.state_dict()))
        if evaluate_fn is not None:
            result.ingredient_scores.append(float(evaluate_fn(model)))
            log.info("soup ingredient %d/%d: %.4f", i + 1, ingredients, result.ingredient_scores[-1])
    if ingredients == 1:
        return result
    # the soups of the first j (only the whole soup without evaluate_fn); the last stays loaded
    for j in range(2, ingredients + 1) if evaluate_fn is not None else [ingredients]:
        model.load_state_dict(average_states(finals[:j]))
        if evaluate_fn is not None:
            result.prefix_scores.append(float(evaluate_fn(model)))
    if evaluate_fn is not None:
        log.info("soup of %d: %.4f (ingredients %s)", ingredients, result.soup_score, result.ingredient_scores)
    return result
