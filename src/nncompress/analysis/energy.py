"""H2: inference energy per layer from MACs and memory traffic (45 nm, Horowitz ISSCC 2014).

Table (picojoules, as quoted by Han et al. 2015/2016): 32-bit float add 0.9, 32-bit float
multiply 3.7, 32-bit SRAM read 5, 32-bit DRAM read 640.

Traffic model (stated, simple, the one of Han et al.'s argument):

* compute: every MAC is one float multiply and one float add -> ``macs * (3.7 + 0.9)`` pJ;
* weights: every 32-bit weight/bias is fetched from DRAM once per inference (no reuse
  across inferences; a large model does not fit on chip) -> ``weights * 640`` pJ;
* activations: every input activation is read once and every output activation written
  once through on-chip SRAM -> ``activations * 5`` pJ, with ``activations`` = input +
  output elements of the layer for one sample.

A batch shares the weight fetch in reality; this model is per single inference (batch 1).
Seed 002's example: (20 Hz) x (1G connections) x (640 pJ) = 12.8 W, see ``dram_power``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from nncompress.errors import ConfigError

HOROWITZ_45NM_PJ: dict[str, float] = {
    "fp32_add": 0.9,
    "fp32_mult": 3.7,
    "sram_32bit": 5.0,
    "dram_32bit": 640.0,
}


@dataclass(frozen=True)
class LayerEnergy:
    """Energy of one layer for one inference, in picojoules, split by cause."""

    name: str
    compute_pj: float
    weights_pj: float
    activations_pj: float

    @property
    def total_pj(self) -> float:
        return self.compute_pj + self.weights_pj + self.activations_pj

    def to_dict(self) -> dict[str, float | str]:
        return {**asdict(self), "total_pj": self.total_pj}


def layer_energy(
    macs: int, weights: int, activations: int, name: str = "",
    table: Mapping[str, float] = HOROWITZ_45NM_PJ,
) -> LayerEnergy:
    """Energy (pJ) of one layer under the module's traffic model.

    Example:
        >>> layer_energy(macs=10, weights=2, activations=3).total_pj  # 10*4.6 + 2*640 + 3*5
        1341.0
    """
    for v, what in ((macs, "macs"), (weights, "weights"), (activations, "activations")):
        if v < 0:
            raise ConfigError(f"{what} must be >= 0, got {v}")
    return LayerEnergy(
        name,
        compute_pj=macs * (table["fp32_mult"] + table["fp32_add"]),
        weights_pj=weights * table["dram_32bit"],
        activations_pj=activations * table["sram_32bit"],
    )


def energy_table(
    rows: Iterable[tuple[str, int, int, int]], table: Mapping[str, float] = HOROWITZ_45NM_PJ
) -> list[LayerEnergy]:
    """``layer_energy`` of each ``(name, macs, weights, activations)`` row.

    Example:
        >>> [e.total_pj for e in energy_table([("fc", 10, 2, 3)])]
        [1341.0]
    """
    return [layer_energy(m, w, a, n, table) for n, m, w, a in rows]


def total_pj(energies: Sequence[LayerEnergy]) -> float:
    """Sum of the layers' energy (pJ)."""
    return sum(e.total_pj for e in energies)


def dram_power(rate_hz: float, connections: float, pj_per_access: float = HOROWITZ_45NM_PJ["dram_32bit"]) -> float:
    """Watts spent fetching ``connections`` weights from DRAM ``rate_hz`` times a second.

    Example:
        >>> round(dram_power(20, 1e9), 6)  # seed 002: (20 Hz)(1G)(640 pJ)
        12.8
    """
    return rate_hz * connections * pj_per_access * 1e-12


def power_watts(energy_pj: float, rate_hz: float) -> float:
    """Average power of ``rate_hz`` inferences per second at ``energy_pj`` each."""
    return energy_pj * 1e-12 * rate_hz


def model_energy(model: nn.Module, example_input: torch.Tensor,
                 table: Mapping[str, float] = HOROWITZ_45NM_PJ) -> list[LayerEnergy]:
    """Per-layer energy of a model's Linear/Conv layers (H1 ``layer_stats`` supplies MACs).

    Weights counted are the layer's weights and biases; activations its input and output
    elements for one sample.

    Example:
        >>> from nncompress.models import build_model
        >>> round(total_pj(model_energy(build_model("lenet300"), torch.zeros(1, 784))) / 1e6, 1)
        171.9
    """
    from nncompress.analysis.accounting import layer_stats

    rows = [(s.name, s.macs, s.weights + s.biases, math.prod(s.in_shape) + math.prod(s.out_shape))
            for s in layer_stats(model, example_input)]
    return energy_table(rows, table)
