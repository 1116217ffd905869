"""S1/H3 sensitivity: masked evaluation equals removal; ratio suggestion by tolerance."""

import copy
import json

import pytest
import torch

from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.prune.structured import find_groups, layer_costs, plan_cost, remove_channels, score
from nncompress.prune.structured.selection import _lowest
from nncompress.prune.structured.sensitivity import SensitivityResult, sensitivity_analysis


def test_curves_match_physical_removal(tiny_data, tmp_path):
    model = build_model("lenet5").eval()
    x, y = tiny_data.tensors
    res = sensitivity_analysis(model, (x[:64], y[:64]), [0.5, 0.25])
    assert res.ratios == [0.25, 0.5] and set(res.curves) == {"conv1", "conv2", "fc1"}
    # conv2 at 0.5: remove its 25 lowest-L1 filters for real and evaluate
    groups = find_groups(model, x[:1])
    idx = _lowest(score(model, groups, "l1")["conv2"], 25)
    pruned = remove_channels(copy.deepcopy(model), {"conv2": idx}, x[:1])
    with torch.no_grad():
        acc = (pruned(x[:64]).argmax(1) == y[:64]).float().mean().item()
    assert res.curves["conv2"][1] == pytest.approx(acc)
    with torch.no_grad():
        assert res.dense_accuracy == pytest.approx((model(x[:64]).argmax(1) == y[:64]).float().mean().item())
    png = res.plot(tmp_path / "sens.png")
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert json.loads(res.to_json())["curves"]["fc1"] == res.curves["fc1"]


def test_suggest_ratios_uses_the_smallest_tolerance_meeting_the_target():
    model = build_model("lenet5")
    x = torch.zeros(1, 1, 28, 28)
    groups, costs = find_groups(model, x), layer_costs(model, x)
    # fc1 is insensitive, conv2 sensitive, conv1 in between (accuracy at 0.25/0.5/0.75/0.9)
    curves = {"fc1": [0.90, 0.90, 0.899, 0.89], "conv2": [0.80, 0.5, 0.3, 0.2], "conv1": [0.9, 0.88, 0.8, 0.6]}
    res = SensitivityResult(0.9, [0.25, 0.5, 0.75, 0.9], curves, {g.name: g.channels for g in groups},
                            groups=groups, costs=costs)
    small = res.suggest_ratios(0.2)
    assert small.get("conv2", 0) == 0 and small["fc1"] > 0
    big = res.suggest_ratios(0.5)
    dense = plan_cost(costs, groups, {})
    kept = plan_cost(costs, groups, {g.name: int(big.get(g.name, 0) * g.channels) for g in groups})
    assert kept <= 0.5 * dense
    assert big["fc1"] >= big.get("conv1", 0) >= big.get("conv2", 0)
    with pytest.raises(ConfigError):
        res.suggest_ratios(1.0)


def test_bad_ratios_rejected(tiny_data):
    x, y = tiny_data.tensors
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        sensitivity_analysis(build_model("lenet5"), (x[:8], y[:8]), [0.5, 1.0])
