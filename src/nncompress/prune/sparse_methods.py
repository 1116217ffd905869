"""The training-time and second-order sparsity methods of ``sparse_train``: each is a params
dataclass (its options, validated once, one docstring per field) and a runner
``run(model, train_data, train_cfg, params, val_data) -> SparseTrainResult``.

``rounds`` (obd/obs/magnitude) is a list of sparsities reached one after the other, each
followed by ``train_cfg.epochs / len(rounds)`` epochs of masked retraining (prune-retrain).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from nncompress.checks import check_choice, check_float, check_fraction, check_int
from nncompress.errors import ConfigError
from nncompress.prune.csgd import (
    CLUSTER_METHODS,
    CSGDCallback,
    cluster_spread,
    clusters_for,
    csgd_merge,
)
from nncompress.prune.dns import DNSCallback, DNSConfig
from nncompress.prune.gradual import SPARSITY_SCHEDULES, GradualConfig, GradualPruning, steps_for
from nncompress.prune.group_lasso import (
    GROUP_KINDS,
    GroupLasso,
    nonzero_masks,
    ssl_remove,
    zero_small_groups,
)
from nncompress.prune.gsm import GSMCallback
from nncompress.prune.magnitude import SCOPES, check_sparsities, magnitude_prune
from nncompress.prune.mask import MaskCallback, Masks
from nncompress.prune.obd import ESTIMATORS, obd_prune
from nncompress.prune.obs import obs_prune
from nncompress.prune.targets import LayerSelection, prunable_weights
from nncompress.train.loop import TrainConfig, fit

log = logging.getLogger(__name__)
Sparsity = float | dict[str, float]


@dataclass
class SparseTrainResult:
    """What a sparse-training method produced.

    ``model`` is the trained model (the same object, possibly with layers physically
    shrunk by ssl/csgd); ``masks`` the kept weights of its prunable layers; ``history``
    the per-epoch metrics of every ``fit`` call in order; ``info`` method specifics.
    """

    method: str
    model: nn.Module
    masks: Masks
    history: list[dict[str, float]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def _fit(model, data, cfg, callbacks, history, val_data=None):
    if cfg is None:
        return
    h = fit(model, data, cfg, callbacks=callbacks, val_data=val_data)
    history.extend(h.epochs)


def _example(train_data: Dataset) -> torch.Tensor:
    return train_data[0][0].unsqueeze(0)


# -- one-shot pruners with retraining rounds: magnitude, obd (S10), obs (S10) -----------------


@dataclass
class RoundsParams(LayerSelection):
    """Options shared by the one-shot pruners: a target, once or in rounds (and the layers)."""

    sparsity: Sparsity | None = None
    """Target sparsity in [0, 1), one number or ``{param name: s, default: s}`` (give this or
    ``rounds``)."""
    rounds: list[Sparsity] | None = None
    """Sparsities reached one after the other, each followed by its share of the training
    budget (masked retraining)."""

    method = "prune"  # the method's name in messages (a class attribute, not an option)

    def __post_init__(self) -> None:
        if (self.sparsity is None) == (self.rounds is None):
            raise ConfigError(f"{self.method}: give exactly one of sparsity or rounds")
        if self.rounds is not None and not self.rounds:
            raise ConfigError(f"{self.method}: rounds must not be empty")
        for s in self.targets:
            check_sparsities(s, "sparsity")

    @property
    def targets(self) -> list[Sparsity]:
        """The sparsity of each round."""
        return list(self.rounds) if self.rounds is not None else [self.sparsity]

    def prune_options(self) -> dict[str, Any]:
        """Keyword arguments of the pruner beyond the sparsity."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in ("sparsity", "rounds")}


@dataclass
class MagnitudeParams(RoundsParams):
    """Magnitude pruning (+ masked retraining)."""

    method = "magnitude"
    scope: str = "layer"
    """``layer``: a threshold per layer; ``global``: one threshold over all layers."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.scope, SCOPES, "scope")


@dataclass
class OBDParams(RoundsParams):
    """S10 Optimal Brain Damage: saliency ``h_ii w_i^2 / 2`` from a Hessian-diagonal estimate."""

    method = "obd"
    scope: str = "layer"
    """``layer``: a threshold per layer; ``global``: one over all layers (not with
    ``layerwise``)."""
    estimator: str = "fisher"
    """Hessian diagonal: ``fisher`` (diagonal Fisher), ``hutchinson`` or ``layerwise``."""
    n_samples: int | None = 2048
    """Training samples the estimate reads (None: all)."""
    batch_size: int = 64
    """Batch size of the estimate."""
    labels: str | None = None
    """fisher only: ``empirical`` (the data's labels, default) or ``model`` (sampled from the
    model's prediction)."""
    probes: int | None = None
    """hutchinson only: random probes per batch (default 1)."""
    seed: int | None = None
    """fisher/hutchinson: seed of the sampled labels or probes (default 0)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice(self.scope, SCOPES, "scope")
        check_choice(self.estimator, ESTIMATORS, "estimator")

    def prune_options(self) -> dict[str, Any]:
        return {k: v for k, v in super().prune_options().items()
                if v is not None or k not in ("labels", "probes", "seed")}


@dataclass
class OBSParams(RoundsParams):
    """S10 layer-wise Optimal Brain Surgeon (the survivors are updated to compensate)."""

    method = "obs"
    n_samples: int | None = 1024
    """Training samples each layer's input Hessian reads (None: all)."""
    batch_size: int = 256
    """Batch size of the Hessian estimate."""
    damp: float = 0.01
    """Dampening added to the Hessian diagonal, relative to its mean (>= 0)."""
    block_size: int = 128
    """Columns pruned together (>= 1)."""
    sequential: bool = True
    """Measure each layer's Hessian with the layers before it already pruned."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_float(self.damp, "damp", 0)
        check_int(self.block_size, "block_size", 1)


def _magnitude(model, data, s, previous=None, **kw):
    return magnitude_prune(model, sparsity=s, previous=previous, **kw)


def _pruned_retrain(pruner: Callable[..., Masks], name: str):
    def run(model, train_data, train_cfg, params: RoundsParams, val_data=None) -> SparseTrainResult:
        rounds = params.targets
        per_round = None
        if train_cfg is not None:
            per_round = dataclasses.replace(train_cfg, epochs=train_cfg.epochs / len(rounds))
        masks: Masks | None = None
        history: list[dict[str, float]] = []
        for s in rounds:
            masks = pruner(model, train_data, s, previous=masks, **params.prune_options())
            _fit(model, train_data, per_round, [MaskCallback(masks)], history, val_data)
        return SparseTrainResult(name, model, masks, history, {"rounds": rounds})
    run.__name__ = f"{name}_prune_retrain"
    run.__doc__ = f"One-shot {name} pruning to each sparsity of ``rounds`` (or ``sparsity``), each followed by masked retraining."
    return run


run_magnitude = _pruned_retrain(_magnitude, "magnitude")
run_obd = _pruned_retrain(obd_prune, "obd")
run_obs = _pruned_retrain(obs_prune, "obs")


# -- during training: gradual (P4), dns (P5), ssl (S11), gsm (S12), csgd (S13) ---------------


@dataclass
class GradualParams(LayerSelection):
    """P4 AGP: the sparsity rises from 0 on ``schedule`` during training."""

    final_sparsity: Sparsity = 0.9
    """Sparsity reached at ``end``, in [0, 1) (one number or ``{param name: s, default:
    s}``)."""
    schedule: str = "cubic"
    """Shape of the rise: cubic (Zhu & Gupta), linear, exponential or constant."""
    scope: str = "layer"
    """``layer``: every layer at the scheduled sparsity; ``global``: one threshold."""
    start: float = 0.0
    """Fraction of the training budget where pruning starts."""
    end: float = 0.7
    """Fraction of the budget where the final sparsity is reached (start < end <= 1)."""
    n_events: int = 20
    """Number of mask updates between start and end."""

    def __post_init__(self) -> None:
        check_sparsities(self.final_sparsity, "final sparsity")
        check_choice(self.schedule, SPARSITY_SCHEDULES, "schedule")
        check_choice(self.scope, SCOPES, "scope")
        if not 0 <= self.start < self.end <= 1:
            raise ConfigError(f"need 0 <= start < end <= 1, got start={self.start}, end={self.end}")
        check_int(self.n_events, "n_events", 1)


def run_gradual(model, train_data, train_cfg: TrainConfig, params: GradualParams,
                val_data=None) -> SparseTrainResult:
    """P4: prune ``n_events`` times between fractions ``start`` and ``end`` of the budget."""
    p = params
    total = steps_for(train_cfg.epochs, len(train_data), train_cfg.batch_size)
    if train_cfg.max_steps is not None:
        total = min(total, train_cfg.max_steps)
    t0 = int(p.start * total)
    dt = max(1, int((p.end - p.start) * total) // p.n_events)
    cb = GradualPruning(model, GradualConfig(final_sparsity=p.final_sparsity, schedule=p.schedule, t0=t0,
                                             n=p.n_events, dt=dt, scope=p.scope), p.include, p.exclude)
    history: list[dict[str, float]] = []
    _fit(model, train_data, train_cfg, [cb], history, val_data)
    return SparseTrainResult("gradual", model, cb.masks, history, {"events": cb.events})


def run_dns(model, train_data, train_cfg: TrainConfig, params: DNSConfig, val_data=None) -> SparseTrainResult:
    """P5: train with :class:`DNSCallback` (params: :class:`DNSConfig`)."""
    cb = DNSCallback(params)
    history: list[dict[str, float]] = []
    _fit(model, train_data, train_cfg, [cb], history, val_data)
    masks = cb.finalize(model)
    return SparseTrainResult("dns", model, masks, history, {"mask_updates": cb.n_updates,
                                                             "thresholds": dict(cb.thresholds)})


@dataclass
class GSMParams(LayerSelection):
    """S12 Global Sparse Momentum: how many weights survive (exactly one of q, ratio,
    sparsity)."""

    q: int | None = None
    """Number of weights kept."""
    ratio: float | None = None
    """Compression ratio total / Q (>= 1)."""
    sparsity: float | None = None
    """Share of weights removed, in [0, 1)."""

    def __post_init__(self) -> None:
        if sum(v is not None for v in (self.q, self.ratio, self.sparsity)) != 1:
            raise ConfigError("give exactly one of q, ratio, sparsity")
        if self.q is not None:
            check_int(self.q, "q", 1)
        if self.ratio is not None:
            check_float(self.ratio, "ratio", 1)
        if self.sparsity is not None:
            check_fraction(self.sparsity, "sparsity", zero=True, one=False)


def run_gsm(model, train_data, train_cfg: TrainConfig, params: GSMParams, val_data=None) -> SparseTrainResult:
    """S12: train with :class:`GSMCallback` then keep exactly Q weights."""
    p = params
    cb = GSMCallback(model, ratio=p.ratio, q=p.q, sparsity=p.sparsity, include=p.include, exclude=p.exclude)
    history: list[dict[str, float]] = []
    _fit(model, train_data, train_cfg, [cb], history, val_data)
    masks = cb.finalize(model)
    overlap = sum(cb.overlap[-100:]) / max(len(cb.overlap[-100:]), 1)
    return SparseTrainResult("gsm", model, masks, history, {"q": cb.q, "total": cb.total,
                                                             "topq_overlap_last100": overlap})


@dataclass
class SSLParams(LayerSelection):
    """S11 Structured Sparsity Learning: group lasso, then zero groups removed physically."""

    strength: float = 1e-4
    """Weight of the group-lasso penalty (>= 0)."""
    kinds: list[str] | dict[str, float] = field(default_factory=lambda: ["filter", "channel"])
    """Group kinds penalised (filter, channel, shape), or kind -> its own strength factor."""
    eps: float = 1e-2
    """After training, a group whose norm is below ``eps`` x the largest of its kind is
    zeroed."""

    def __post_init__(self) -> None:
        check_float(self.strength, "strength", 0)
        for kind in self.kinds:
            check_choice(kind, GROUP_KINDS, "group kind")
        check_float(self.eps, "eps", 0)


def run_ssl(model, train_data, train_cfg: TrainConfig, params: SSLParams, val_data=None) -> SparseTrainResult:
    """S11: group-lasso training, zero the small groups, remove zero filters physically."""
    p = params
    kinds = p.kinds if isinstance(p.kinds, Mapping) else tuple(p.kinds)
    cb = GroupLasso(prunable_weights(model, p.include, p.exclude), kinds, p.strength)
    history: list[dict[str, float]] = []
    _fit(model, train_data, train_cfg, [cb], history, val_data)
    zeroed = zero_small_groups(model, kinds, p.eps, p.include, p.exclude)
    model, plan = ssl_remove(model, _example(train_data))
    return SparseTrainResult("ssl", model, nonzero_masks(model), history,
                             {"removed": plan, "zeroed": {k: {g: len(v) for g, v in d.items()}
                                                          for k, d in zeroed.items()}})


@dataclass
class CSGDParams:
    """S13 Centripetal SGD: channels of a layer clustered, pulled together, merged."""

    layers: list[str] | dict[str, int] | None = None
    """Layers clustered to ``ratio`` x their channels (a list), or layer -> number of
    clusters; default: every Linear/Conv layer but the last."""
    ratio: float = 0.5
    """Kept share of channels of each listed layer, in (0, 1]."""
    eps: float = 0.05
    """Centripetal strength (>= 0)."""
    cluster: str = "kmeans"
    """How channels are clustered: kmeans or even."""
    seed: int = 0
    """Seed of the clustering."""

    def __post_init__(self) -> None:
        check_fraction(self.ratio, "ratio")
        check_float(self.eps, "eps", 0)
        check_choice(self.cluster, CLUSTER_METHODS, "cluster")


def run_csgd(model, train_data, train_cfg: TrainConfig, params: CSGDParams, val_data=None) -> SparseTrainResult:
    """S13: cluster, train with centripetal updates, merge each cluster into one channel."""
    p = params
    layers = p.layers
    if layers is None:
        layers = [n.rsplit(".", 1)[0] for n in prunable_weights(model)][:-1]
    clusters = clusters_for(model, layers, ratio=p.ratio, method=p.cluster, seed=p.seed)
    example = _example(train_data)
    cb = CSGDCallback(model, clusters, example, p.eps)
    history: list[dict[str, float]] = []
    _fit(model, train_data, train_cfg, [cb], history, val_data)
    spread = cluster_spread(model, clusters)
    model.eval()
    with torch.no_grad():
        probe = torch.stack([train_data[i][0] for i in range(min(256, len(train_data)))])
        before = model(probe)
        csgd_merge(model, clusters, example)
        change = float((model(probe) - before).abs().max())
    return SparseTrainResult("csgd", model, nonzero_masks(model), history,
                             {"spread": spread, "merge_max_abs_change": change,
                              "clusters": {k: int(v.max()) + 1 for k, v in clusters.items()}})
