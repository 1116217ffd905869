"""One entry point for the training-time and second-order sparsity methods (issue 4).

``sparse_train(model, method, train_data, train_cfg, **params)`` looks ``method`` up in
:data:`SPARSE_METHODS` and returns a :class:`SparseTrainResult`. Every method spends
exactly ``train_cfg`` (one ``fit`` budget, split into rounds where a method prunes in
rounds); one-shot pruners accept ``train_cfg=None`` (no retraining).

=========== =============================================================================
method      what it does (params)
=========== =============================================================================
gradual     P4 AGP pruning during training (final_sparsity, schedule, scope, start, end,
            n_events): masks recomputed n_events times between fractions start..end
dns         P5 Dynamic Network Surgery (sparsity or c_rate, gamma, power, low, high)
magnitude   one-shot magnitude prune (+ retrain) (sparsity, scope, rounds)
obd         S10 OBD, diagonal Fisher/Hutchinson (sparsity, scope, estimator, n_samples,
            rounds)
obs         S10 layer-wise OBS (sparsity, n_samples, damp, block_size, rounds)
ssl         S11 group lasso, zero groups, physical removal (strength, kinds, eps)
gsm         S12 Global Sparse Momentum (ratio | q | sparsity)
csgd        S13 Centripetal SGD then merge (layers, ratio, eps, cluster)
=========== =============================================================================

``rounds`` (obd/obs/magnitude) is a list of sparsities reached one after the other, each
followed by ``train_cfg.epochs / len(rounds)`` epochs of masked retraining (prune-retrain).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from nncompress.errors import ConfigError
from nncompress.prune.csgd import CSGDCallback, cluster_spread, clusters_for, csgd_merge
from nncompress.prune.dns import DNSCallback, DNSConfig
from nncompress.prune.gradual import GradualConfig, GradualPruning, steps_for
from nncompress.prune.group_lasso import GroupLasso, nonzero_masks, ssl_remove, zero_small_groups
from nncompress.prune.gsm import GSMCallback
from nncompress.prune.magnitude import magnitude_prune
from nncompress.prune.mask import MaskCallback, Masks
from nncompress.prune.obd import obd_prune
from nncompress.prune.obs import obs_prune
from nncompress.prune.targets import prunable_weights
from nncompress.train.loop import TrainConfig, fit

log = logging.getLogger(__name__)


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


def _pruned_retrain(pruner: Callable[..., Masks], name: str):
    def run(model, train_data, train_cfg, *, sparsity: float | None = None, rounds: Sequence[float] | None = None,
            val_data=None, **params) -> SparseTrainResult:
        if (sparsity is None) == (rounds is None):
            raise ConfigError(f"{name}: give exactly one of sparsity or rounds")
        rounds = list(rounds) if rounds is not None else [sparsity]
        if not rounds:
            raise ConfigError(f"{name}: rounds must not be empty")
        per_round = None
        if train_cfg is not None:
            per_round = dataclasses.replace(train_cfg, epochs=train_cfg.epochs / len(rounds))
        masks: Masks | None = None
        history: list[dict[str, float]] = []
        for s in rounds:
            masks = pruner(model, train_data, s, previous=masks, **params)
            _fit(model, train_data, per_round, [MaskCallback(masks)], history, val_data)
        return SparseTrainResult(name, model, masks, history, {"rounds": rounds})
    run.__name__ = f"{name}_prune_retrain"
    run.__doc__ = f"One-shot {name} pruning to each sparsity of ``rounds`` (or ``sparsity``), each followed by masked retraining."
    return run


def _magnitude(model, data, s, previous=None, scope="layer", **kw):
    return magnitude_prune(model, sparsity=s, scope=scope, previous=previous, **kw)


def run_gradual(model, train_data, train_cfg: TrainConfig, *, final_sparsity=0.9, schedule: str = "cubic",
                scope: str = "layer", start: float = 0.0, end: float = 0.7, n_events: int = 20,
                val_data=None, **kw) -> SparseTrainResult:
    """P4: prune ``n_events`` times between fractions ``start`` and ``end`` of the budget."""
    total = steps_for(train_cfg.epochs, len(train_data), train_cfg.batch_size)
    if train_cfg.max_steps is not None:
        total = min(total, train_cfg.max_steps)
    if not 0 <= start < end <= 1:
        raise ConfigError(f"need 0 <= start < end <= 1, got start={start}, end={end}")
    t0 = int(start * total)
    dt = max(1, int((end - start) * total) // n_events)
    cb = GradualPruning(model, GradualConfig(final_sparsity=final_sparsity, schedule=schedule, t0=t0,
                                             n=n_events, dt=dt, scope=scope), **kw)
    history: list[dict[str, float]] = []
    _fit(model, train_data, train_cfg, [cb], history, val_data)
    return SparseTrainResult("gradual", model, cb.masks, history, {"events": cb.events})


def run_dns(model, train_data, train_cfg: TrainConfig, *, val_data=None, **params) -> SparseTrainResult:
    """P5: train with :class:`DNSCallback` (params: :class:`DNSConfig` fields)."""
    cb = DNSCallback(DNSConfig(**params))
    history: list[dict[str, float]] = []
    _fit(model, train_data, train_cfg, [cb], history, val_data)
    masks = cb.finalize(model)
    return SparseTrainResult("dns", model, masks, history, {"mask_updates": cb.n_updates,
                                                             "thresholds": dict(cb.thresholds)})


def run_gsm(model, train_data, train_cfg: TrainConfig, *, ratio=None, q=None, sparsity=None, val_data=None,
            **kw) -> SparseTrainResult:
    """S12: train with :class:`GSMCallback` then keep exactly Q weights."""
    cb = GSMCallback(model, ratio=ratio, q=q, sparsity=sparsity, **kw)
    history: list[dict[str, float]] = []
    _fit(model, train_data, train_cfg, [cb], history, val_data)
    masks = cb.finalize(model)
    overlap = sum(cb.overlap[-100:]) / max(len(cb.overlap[-100:]), 1)
    return SparseTrainResult("gsm", model, masks, history, {"q": cb.q, "total": cb.total,
                                                             "topq_overlap_last100": overlap})


def run_ssl(model, train_data, train_cfg: TrainConfig, *, strength: float = 1e-4,
            kinds: Sequence[str] = ("filter", "channel"), eps: float = 1e-2, val_data=None,
            include=None, exclude=()) -> SparseTrainResult:
    """S11: group-lasso training, zero the small groups, remove zero filters physically."""
    cb = GroupLasso(prunable_weights(model, include, exclude), kinds, strength)
    history: list[dict[str, float]] = []
    _fit(model, train_data, train_cfg, [cb], history, val_data)
    zeroed = zero_small_groups(model, kinds, eps, include, exclude)
    model, plan = ssl_remove(model, _example(train_data))
    return SparseTrainResult("ssl", model, nonzero_masks(model), history,
                             {"removed": plan, "zeroed": {k: {g: len(v) for g, v in d.items()}
                                                          for k, d in zeroed.items()}})


def run_csgd(model, train_data, train_cfg: TrainConfig, *, layers=None, ratio: float = 0.5, eps: float = 0.05,
             cluster: str = "kmeans", seed: int = 0, val_data=None) -> SparseTrainResult:
    """S13: cluster, train with centripetal updates, merge each cluster into one channel.

    ``layers``: list (clustered to ``ratio`` x channels) or dict layer -> clusters; default:
    every Linear/Conv layer except the last one.
    """
    if layers is None:
        layers = [n.rsplit(".", 1)[0] for n in prunable_weights(model)][:-1]
    clusters = clusters_for(model, layers, ratio=ratio, method=cluster, seed=seed)
    example = _example(train_data)
    cb = CSGDCallback(model, clusters, example, eps)
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


SPARSE_METHODS: dict[str, Callable[..., SparseTrainResult]] = {
    "gradual": run_gradual,
    "dns": run_dns,
    "magnitude": _pruned_retrain(_magnitude, "magnitude"),
    "obd": _pruned_retrain(obd_prune, "obd"),
    "obs": _pruned_retrain(obs_prune, "obs"),
    "ssl": run_ssl,
    "gsm": run_gsm,
    "csgd": run_csgd,
}


def sparse_train(model: nn.Module, method: str, train_data: Dataset, train_cfg: TrainConfig | None,
                 **params: Any) -> SparseTrainResult:
    """Run a training-time / second-order sparsity method by name.

    Example:
        >>> res = sparse_train(model, "gsm", train_set, TrainConfig(epochs=5, momentum=0.98,
        ...                    weight_decay=5e-4), ratio=60)  # doctest: +SKIP
        >>> sum(res.masks.kept().values())  # doctest: +SKIP
        4437
    """
    if method not in SPARSE_METHODS:
        raise ConfigError(f"unknown sparse-training method {method!r}; allowed: {', '.join(SPARSE_METHODS)}")
    if train_cfg is None and method not in ("magnitude", "obd", "obs"):
        raise ConfigError(f"method {method!r} trains; give a train_cfg (only magnitude/obd/obs are one-shot)")
    return SPARSE_METHODS[method](model, train_data, train_cfg, **params)
