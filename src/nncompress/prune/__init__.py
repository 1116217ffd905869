"""Pruning: masks, magnitude thresholds, iterative retraining."""

from nncompress.prune.iterative import IterativeResult, iterative_prune
from nncompress.prune.magnitude import magnitude_mask, magnitude_prune, std_threshold, topk_mask
from nncompress.prune.mask import MaskCallback, Masks, layer_sparsity
from nncompress.prune.retrain import Regularizer, adjust_dropouts, adjusted_dropout, frozen
from nncompress.prune.targets import prunable_weights

__all__ = [
    "IterativeResult", "MaskCallback", "Masks", "Regularizer", "adjust_dropouts",
    "adjusted_dropout", "frozen", "iterative_prune", "layer_sparsity", "magnitude_mask",
    "magnitude_prune", "prunable_weights", "std_threshold", "topk_mask",
]
