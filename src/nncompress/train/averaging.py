"""Weight averaging over the last epochs of a run (Polyak averaging / SWA, Izmailov et al.
2018): the mean of the parameters at the end of each of the last ``k`` epochs replaces the
final weights. Zeros kept by masks stay zero (every snapshot has them), so it is safe
inside prune-retrain. BatchNorm running statistics are not averaged (they stay those of the
last epoch); recalibrate them on a model with BatchNorm.
"""

from __future__ import annotations

import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.train.callbacks import Callback


def running_mean(mean: torch.Tensor, value: torch.Tensor, count: int) -> torch.Tensor:
    """Mean of ``count`` values given the mean of the first ``count - 1`` and the new one.

    Example:
        >>> running_mean(torch.tensor(2.0), torch.tensor(5.0), 2).item()
        3.5
    """
    return mean + (value - mean) / count


class WeightAveraging(Callback):
    """Average the model's parameters over epoch ends ``first_epoch`` .. last, and load the
    average when the run ends (``fit`` adds it for ``TrainConfig.average_last``).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.train import TrainConfig, fit
        >>> g = torch.Generator().manual_seed(0)
        >>> data = TensorDataset(torch.randn(32, 8, generator=g), torch.randint(0, 2, (32,), generator=g))
        >>> model = nn.Linear(8, 2)
        >>> _ = fit(model, data, TrainConfig(epochs=3, average_last=2))  # mean of the last 2 epoch ends
        >>> bool(torch.isfinite(model.weight).all())
        True
    """

    def __init__(self, first_epoch: int):
        if first_epoch < 0:
            raise ConfigError(f"first_epoch must be >= 0, got {first_epoch}")
        self.first_epoch = first_epoch
        self.count = 0
        self.mean: dict[str, torch.Tensor] = {}
        self.model: nn.Module | None = None

    def on_fit_begin(self, model, optimizer):
        self.model = model

    @torch.no_grad()
    def on_epoch_end(self, epoch, metrics):
        if epoch < self.first_epoch or self.model is None:
            return
        self.count += 1
        for name, p in self.model.named_parameters():
            v = p.detach().float()
            self.mean[name] = v.clone() if self.count == 1 else running_mean(self.mean[name], v, self.count)

    @torch.no_grad()
    def on_fit_end(self, model):
        if not self.count:
            return
        for name, p in model.named_parameters():
            p.copy_(self.mean[name].to(p.dtype))

    def state_dict(self):
        return {"count": self.count, "mean": dict(self.mean)}

    def load_state_dict(self, state):
        self.count = int(state["count"])
        self.mean = dict(state["mean"])
