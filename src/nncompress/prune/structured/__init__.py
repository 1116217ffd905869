"""Structured (filter/channel) pruning: criteria, selection, sensitivity, physical removal.

Scoring (``CRITERIA``: name -> ``Criterion``), selection (per-layer ratios or a global
ranking against a channel/parameter/MAC target) and surgery (``remove_channels``) are
separate steps; ``structured_prune(model, StructuredPruneConfig(...), data)`` chains them,
optionally iteratively with fine-tuning.
"""

from nncompress.prune.structured.config import StructuredPruneConfig
from nncompress.prune.structured.cost import LayerCost, layer_costs, plan_cost
from nncompress.prune.structured.fading import ChannelFade
from nncompress.prune.structured.groups import ChannelGroup, find_groups
from nncompress.prune.structured.masking import channels_masked
from nncompress.prune.structured.pruner import StructuredResult, structured_prune
from nncompress.prune.structured.removal import remove_channels
from nncompress.prune.structured.scoring import (
    CRITERIA,
    Criterion,
    ScoreData,
    register_criterion,
    score,
)
from nncompress.prune.structured.selection import select_global, select_per_layer
from nncompress.prune.structured.sensitivity import SensitivityResult, sensitivity_analysis

__all__ = [
    "CRITERIA", "ChannelFade", "ChannelGroup", "Criterion", "LayerCost", "ScoreData", "StructuredPruneConfig",
    "StructuredResult", "channels_masked", "find_groups", "layer_costs", "plan_cost", "register_criterion",
    "remove_channels", "score",
    "SensitivityResult", "select_global", "select_per_layer", "sensitivity_analysis",
    "structured_prune",
]
