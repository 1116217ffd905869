"""Pruning: masks, magnitude thresholds, iterative retraining, training-time and
second-order sparsity (gradual, DNS, OBD/OBS, SSL, GSM, C-SGD)."""

from nncompress.prune.csgd import CSGDCallback, cluster_filters, csgd_merge
from nncompress.prune.dns import DNSCallback, DNSConfig
from nncompress.prune.gradual import GradualConfig, GradualPruning, sparsity_schedule
from nncompress.prune.group_lasso import GroupLasso, ssl_remove, zero_small_groups
from nncompress.prune.gsm import GSMCallback
from nncompress.prune.iterative import IterativeConfig, IterativeResult, iterative_prune
from nncompress.prune.magnitude import (
    MagnitudeConfig,
    magnitude_mask,
    magnitude_prune,
    std_threshold,
    topk_mask,
)
from nncompress.prune.mask import MaskCallback, Masks, layer_sparsity
from nncompress.prune.obd import diag_fisher, obd_prune
from nncompress.prune.obs import obs_prune, obs_prune_matrix
from nncompress.prune.retrain import Regularizer, adjust_dropouts, adjusted_dropout, frozen
from nncompress.prune.sparse_train import (
    SPARSE_METHODS,
    SparseTrainConfig,
    SparseTrainResult,
    sparse_train,
)
from nncompress.prune.targets import prunable_weights

__all__ = [
    "CSGDCallback", "DNSCallback", "DNSConfig", "GSMCallback", "GradualConfig", "GradualPruning",
    "GroupLasso", "SPARSE_METHODS", "SparseTrainConfig", "SparseTrainResult", "cluster_filters", "csgd_merge",
    "diag_fisher", "obd_prune", "obs_prune", "obs_prune_matrix", "sparse_train",
    "sparsity_schedule", "ssl_remove", "zero_small_groups",
    "IterativeConfig", "IterativeResult", "MagnitudeConfig", "MaskCallback", "Masks", "Regularizer", "adjust_dropouts",
    "adjusted_dropout", "frozen", "iterative_prune", "layer_sparsity", "magnitude_mask",
    "magnitude_prune", "prunable_weights", "std_threshold", "topk_mask",
]
