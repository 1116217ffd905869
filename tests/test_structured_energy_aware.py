"""S5: energy-ordered ratios and the least-squares refit of the next layer."""

import torch
from torch import nn

from nncompress.models import build_model
from nncompress.prune.structured import find_groups, layer_costs, plan_cost
from nncompress.prune.structured.energy_aware import (
    energy_aware_prune,
    energy_ratios,
    group_energy,
    least_squares_refit,
)
from nncompress.prune.structured.scoring import ScoreData


def test_refit_recovers_an_exact_linear_map():
    torch.manual_seed(0)
    x = torch.randn(200, 6)
    w_true = torch.randn(3, 6)
    lin = nn.Linear(6, 3)
    target = x @ w_true.T + lin.bias.detach()
    res = least_squares_refit(lin, x, target, ridge=1e-10)
    assert res < 1e-6 and torch.allclose(lin.weight, w_true, atol=1e-4)


def test_refit_of_conv_matches_the_original_output_when_inputs_are_unchanged():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.randn(8, 3, 6, 6)
    with torch.no_grad():
        y = conv(x)
        w = conv.weight.clone()
        conv.weight.normal_()
    least_squares_refit(conv, x, y, ridge=1e-10)
    assert torch.allclose(conv.weight, w, atol=1e-4)


def test_energy_ratios_follow_energy_and_meet_the_budget():
    model = build_model("lenet5")
    x = torch.zeros(1, 1, 28, 28)
    groups, costs = find_groups(model, x), layer_costs(model, x)
    dense = plan_cost(costs, groups, {})
    r = energy_ratios(groups, costs, 0.5 * dense)
    e = group_energy(groups, costs)
    order = sorted(e, key=e.get)
    assert [r[k] for k in order] == sorted(r[k] for k in order)  # more energy, more pruning
    counts = {g.name: int(r[g.name] * g.channels) for g in groups}
    assert plan_cost(costs, groups, counts) <= 0.5 * dense


def test_energy_aware_prune_reaches_target_and_refits(tiny_data):
    model = build_model("lenet5")
    x, y = tiny_data.tensors
    res = energy_aware_prune(model, 0.5, ScoreData(x[:128], y[:128]), example_inputs=x[:1])
    assert res.mac_reduction >= 2.0
    assert res.steps and all(s["refit_residual"] for s in res.steps)
    assert res.steps[0]["energy_pj"] >= res.steps[-1]["energy_pj"]  # most energy-hungry first
