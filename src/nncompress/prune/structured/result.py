"""What a structured pruning run returns: the pruned model and its cost figures (shared by
``pruner.structured_prune`` and ``energy_aware.energy_aware_prune``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nncompress.prune.structured.cost import layer_costs, total


@dataclass
class StructuredResult:
    """What ``structured_prune`` did: the pruned model (also changed in place) and figures."""

    model: nn.Module
    criterion: str
    target: float
    target_kind: str
    dense: dict[str, int]
    pruned: dict[str, int]
    steps: list[dict[str, Any]] = field(default_factory=list)
    blocks: dict[str, float | None] = field(default_factory=dict)  # removed block -> damage (None: named)

    @property
    def mac_reduction(self) -> float:
        """Dense MACs / pruned MACs (2.0 = twice fewer)."""
        return self.dense["macs"] / max(1, self.pruned["macs"])

    def to_json(self) -> str:
        d = {k: v for k, v in asdict(self).items() if k != "model"}
        d["mac_reduction"] = self.mac_reduction
        return json.dumps(d, indent=2)


def summary(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """MACs (per ``example``) and parameter count of ``model``."""
    costs = layer_costs(model, example)
    return {"macs": total(costs, "macs"), "params": sum(p.numel() for p in model.parameters())}
