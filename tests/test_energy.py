"""H2 energy model: the 45 nm table, the traffic model, seed 002's 12.8 W example."""

import pytest
import torch

from nncompress.analysis.energy import (
    HOROWITZ_45NM_PJ,
    dram_power,
    energy_table,
    layer_energy,
    model_energy,
    power_watts,
    total_pj,
)
from nncompress.errors import ConfigError
from nncompress.models import build_model


def test_seed_002_example_is_12_8_watts():
    assert dram_power(20, 1e9) == pytest.approx(12.8)
    assert power_watts(1e9 * 640.0, 20) == pytest.approx(12.8)


def test_table_values_and_split():
    assert HOROWITZ_45NM_PJ == {"fp32_add": 0.9, "fp32_mult": 3.7, "sram_32bit": 5.0, "dram_32bit": 640.0}
    e = layer_energy(macs=100, weights=10, activations=20, name="x")
    assert e.compute_pj == pytest.approx(100 * 4.6)
    assert e.weights_pj == pytest.approx(10 * 640)
    assert e.activations_pj == pytest.approx(20 * 5)
    assert e.total_pj == pytest.approx(460 + 6400 + 100)
    with pytest.raises(ConfigError, match="macs"):
        layer_energy(-1, 0, 0)


def test_lenet300_by_hand():
    rows = model_energy(build_model("lenet300"), torch.zeros(1, 1, 28, 28))
    assert [r.name for r in rows] == ["fc1", "fc2", "fc3"]
    fc1 = 235200 * 4.6 + (235200 + 300) * 640 + (784 + 300) * 5
    assert rows[0].total_pj == pytest.approx(fc1)
    macs, weights, acts = 266200, 266610, (784 + 300) + (300 + 100) + (100 + 10)
    assert total_pj(rows) == pytest.approx(macs * 4.6 + weights * 640 + acts * 5)
    assert total_pj(energy_table([("a", macs, weights, acts)])) == pytest.approx(total_pj(rows))
