"""One entry point for the training-time and second-order sparsity methods.

``sparse_train(model, SparseTrainConfig(method, params, train), train_data)`` looks
``method`` up in :data:`SPARSE_METHODS` and returns a :class:`SparseTrainResult`. Every
method spends exactly ``train`` (one ``fit`` budget, split into rounds where a method
prunes in rounds); one-shot pruners accept ``train=None`` (no retraining). ``params`` are
the method's own options, a dataclass of ``nncompress.prune.sparse_methods``:

=========== =============================================================================
method      what it does (params)
=========== =============================================================================
gradual     P4 AGP pruning during training (``GradualParams``): masks recomputed
            n_events times between fractions start..end
dns         P5 Dynamic Network Surgery (``DNSConfig``)
magnitude   one-shot magnitude prune (+ retrain) (``MagnitudeParams``)
obd         S10 OBD, diagonal Fisher/Hutchinson (``OBDParams``)
obs         S10 layer-wise OBS (``OBSParams``)
ssl         S11 group lasso, zero groups, physical removal (``SSLParams``)
gsm         S12 Global Sparse Momentum (``GSMParams``)
csgd        S13 Centripetal SGD then merge (``CSGDParams``)
=========== =============================================================================
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from nncompress.config import from_dict
from nncompress.errors import ConfigError
from nncompress.prune.dns import DNSConfig
from nncompress.prune.sparse_methods import (
    CSGDParams,
    GradualParams,
    GSMParams,
    MagnitudeParams,
    OBDParams,
    OBSParams,
    SparseTrainResult,
    SSLParams,
    run_csgd,
    run_dns,
    run_gradual,
    run_gsm,
    run_magnitude,
    run_obd,
    run_obs,
    run_ssl,
)
from nncompress.train.loop import TrainConfig


@dataclass(frozen=True)
class SparseMethod:
    """A registered method: its ``params`` dataclass, its runner
    ``run(model, train_data, train_cfg, params, val_data)``, and whether it ``trains``
    (else one-shot: the training budget is optional)."""

    name: str
    params: type
    run: Callable[..., SparseTrainResult]
    trains: bool = True


SPARSE_METHODS: dict[str, SparseMethod] = {m.name: m for m in (
    SparseMethod("gradual", GradualParams, run_gradual),
    SparseMethod("dns", DNSConfig, run_dns),
    SparseMethod("magnitude", MagnitudeParams, run_magnitude, trains=False),
    SparseMethod("obd", OBDParams, run_obd, trains=False),
    SparseMethod("obs", OBSParams, run_obs, trains=False),
    SparseMethod("ssl", SSLParams, run_ssl),
    SparseMethod("gsm", GSMParams, run_gsm),
    SparseMethod("csgd", CSGDParams, run_csgd),
)}


@dataclass
class SparseTrainConfig:
    """Which sparse-training method runs, with which options and training budget.

    Example:
        >>> SparseTrainConfig("gsm", {"ratio": 60}, TrainConfig(epochs=5)).params.ratio
        60.0
    """

    method: str = "gradual"
    """gradual (P4), dns (P5), obd / obs (S10), ssl (S11), gsm (S12), csgd (S13) or
    magnitude."""
    params: dict[str, Any] = field(default_factory=dict)
    """The method's own options (a mapping, or its params dataclass; see the methods'
    params below)."""
    train: TrainConfig | None = None
    """The training budget (one-shot obd / obs / magnitude may omit it: no retraining)."""

    @staticmethod
    def param_types() -> dict[str, type]:
        """The params dataclass of each method (for the recipe reference)."""
        return {name: m.params for name, m in SPARSE_METHODS.items()}

    def __post_init__(self) -> None:
        if self.method not in SPARSE_METHODS:
            raise ConfigError(f"unknown sparse-training method {self.method!r}; allowed: "
                              f"{', '.join(SPARSE_METHODS)}")
        spec = SPARSE_METHODS[self.method]
        if self.train is None and spec.trains:
            one_shot = "/".join(n for n, m in SPARSE_METHODS.items() if not m.trains)
            raise ConfigError(f"method {self.method!r} trains; give a train config (train_cfg; only {one_shot} "
                              "are one-shot)")
        if isinstance(self.params, Mapping):
            self.params = from_dict(spec.params, self.params, f"{self.method} params")
        elif not isinstance(self.params, spec.params):
            raise ConfigError(f"params of {self.method!r} must be a mapping or a {spec.params.__name__}, "
                              f"got {type(self.params).__name__}")


def sparse_train(model: nn.Module, config: SparseTrainConfig | str, train_data: Dataset,
                 train_cfg: TrainConfig | None = None, *, val_data: Dataset | None = None,
                 **params: Any) -> SparseTrainResult:
    """Run a training-time / second-order sparsity method as ``config`` says. The keyword
    style ``sparse_train(model, method, train_data, train_cfg, **params)`` builds the
    config from the arguments.

    Example:
        >>> cfg = SparseTrainConfig("gsm", {"ratio": 60}, TrainConfig(epochs=5, momentum=0.98,
        ...                         weight_decay=5e-4))
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> from nncompress.models import build_model
        >>> g = torch.Generator().manual_seed(0)
        >>> train_set = TensorDataset(torch.randn(64, 1, 28, 28, generator=g), torch.randint(0, 10, (64,), generator=g))
        >>> res = sparse_train(build_model("lenet300"), cfg, train_set)
        >>> sum(res.masks.kept().values())  # 266,200 weights / 60
        4437
    """
    if isinstance(config, SparseTrainConfig):
        if train_cfg is not None or params:
            raise TypeError("sparse_train(model, config, train_data): the options belong in the config")
    else:
        config = SparseTrainConfig(config, params, train_cfg)
    return SPARSE_METHODS[config.method].run(model, train_data, config.train, config.params, val_data)
