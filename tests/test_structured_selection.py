"""Selection rules, targets and the pruner's end-to-end invariants."""

import math

import pytest
import torch

from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.prune.structured import find_groups
from nncompress.prune.structured.cost import layer_costs, plan_cost, total
from nncompress.prune.structured.groups import ChannelGroup
from nncompress.prune.structured.pruner import structured_prune
from nncompress.prune.structured.scoring import ScoreData
from nncompress.prune.structured.selection import (
    check_ratio,
    normalise,
    rounded_removal,
    select_global,
    select_per_layer,
)
from nncompress.train import TrainConfig

X = torch.randn(1, 1, 28, 28)


def test_per_layer_takes_floor_of_ratio_lowest_scores():
    groups = [ChannelGroup("a", 4), ChannelGroup("b", 5)]
    scores = {"a": torch.tensor([3.0, 1.0, 2.0, 0.0]), "b": torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])}
    assert select_per_layer(scores, groups, 0.5) == {"a": [1, 3], "b": [3, 4]}  # floor(2.5) = 2
    assert select_per_layer(scores, groups, {"b": 0.2}) == {"b": [4]}


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), "x"])
def test_bad_ratios_rejected(bad):
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        check_ratio(bad)
    groups = [ChannelGroup("a", 4)]
    with pytest.raises(ConfigError):
        select_per_layer({"a": torch.zeros(4)}, groups, bad)


def test_layer_pruned_to_zero_or_below_min_channels_rejected():
    groups = [ChannelGroup("a", 4)]
    with pytest.raises(ConfigError, match="min_channels=2"):
        select_per_layer({"a": torch.zeros(4)}, groups, 0.75, min_channels=2)
    with pytest.raises(ConfigError, match="min_channels must be >= 1"):
        select_per_layer({"a": torch.zeros(4)}, groups, 0.5, min_channels=0)
    with pytest.raises(ConfigError, match="unknown groups"):
        select_per_layer({"a": torch.zeros(4)}, groups, {"zz": 0.5})


def test_normalise_shifts_and_divides_by_mean():
    assert torch.allclose(normalise(torch.tensor([1.0, 3.0])), torch.tensor([0.5, 1.5]))
    assert torch.allclose(normalise(torch.tensor([-1.0, 1.0])), torch.tensor([0.0, 2.0]))


def test_plan_cost_of_lenet5_by_hand():
    model = build_model("lenet5")
    groups = find_groups(model, X)
    costs = layer_costs(model, X)
    macs = {c.name: c.macs for c in costs}
    assert macs["conv1"] == 20 * 24 * 24 * 25 and macs["conv2"] == 50 * 8 * 8 * 20 * 25
    assert macs["fc1"] == 800 * 500
    # remove 10 of conv1's 20 and 25 of conv2's 50: conv1 x0.5, conv2 x0.25, fc1 x0.5
    expect = macs["conv1"] * 0.5 + macs["conv2"] * 0.25 + macs["fc1"] * 0.5 + macs["fc2"]
    assert plan_cost(costs, groups, {"conv1": 10, "conv2": 25}) == pytest.approx(expect)


def test_global_selection_meets_the_mac_budget_and_is_exact_after_removal():
    model = build_model("resnet20")
    groups = find_groups(model, X)
    costs = layer_costs(model, X)
    dense = total(costs, "macs")
    scores = {g.name: torch.rand(g.channels) for g in groups}
    plan = select_global(scores, groups, costs, 0.5 * dense, "macs")
    predicted = plan_cost(costs, groups, {k: len(v) for k, v in plan.items()})
    assert predicted <= 0.5 * dense
    from nncompress.prune.structured import remove_channels
    remove_channels(model, plan, X)
    assert total(layer_costs(model, X), "macs") == pytest.approx(predicted, rel=1e-9)
    with pytest.raises(ConfigError, match="out of reach"):
        select_global(scores, groups, costs, 0.001 * dense, "macs")


@pytest.mark.parametrize("kind", ["macs", "params", "channels"])
def test_structured_prune_hits_each_target_kind(kind):
    model = build_model("lenet5")
    res = structured_prune(model, "l1", 0.4, kind, example_inputs=X, mode="layer")
    if kind == "channels":
        assert model.conv1.out_channels + model.conv2.out_channels + model.fc1.out_features <= 0.6 * 570
    else:
        assert res.pruned[kind] <= 0.6 * res.dense[kind] * 1.02  # biases are not in the model
    assert res.pruned["macs"] == total(layer_costs(model, X), "macs")


def test_iterative_schedule_with_finetuning(tiny_data):
    model = build_model("lenet5")
    x, y = tiny_data.tensors
    res = structured_prune(model, "taylor", 0.5, "macs", ScoreData(x[:64], y[:64]), steps=2,
                           finetune=TrainConfig(epochs=1, max_steps=2, lr=0.01), train_data=tiny_data)
    assert len(res.steps) == 2 and res.steps[0]["macs"] > res.steps[1]["macs"]
    # the geometric schedule: about sqrt(0.5) of the MACs kept after step 1
    assert res.steps[0]["macs"] <= math.sqrt(0.5) * res.dense["macs"] * 1.01
    assert res.mac_reduction >= 2.0
    assert "train_accuracy" in res.steps[0]


def test_iterative_schedule_uses_loss_fn_and_reports_each_removal(tiny_data):
    model = build_model("lenet5")
    x, y = tiny_data.tensors
    calls, seen = [], []

    def loss_fn(logits, target, inputs):
        calls.append(inputs.shape[0])
        return torch.nn.functional.cross_entropy(logits, target)

    def on_removed(step, m):
        seen.append((step, m.conv1.out_channels))

    structured_prune(model, "l1", 0.5, "macs", ScoreData(x[:64], y[:64]), steps=2,
                     finetune=TrainConfig(epochs=1, max_steps=2, lr=0.01), train_data=tiny_data,
                     loss_fn=loss_fn, on_removed=on_removed)
    assert len(calls) == 4  # 2 steps x 2 optimizer steps, every one through loss_fn
    assert [s for s, _ in seen] == [1, 2] and seen[0][1] >= seen[1][1] == model.conv1.out_channels


def test_skip_keeps_a_layer_whole():
    model = build_model("lenet5")
    structured_prune(model, "l1", 0.3, "macs", example_inputs=X, skip=["conv1"])
    assert model.conv1.out_channels == 20


def test_bad_target_arguments():
    model = build_model("lenet5")
    for bad in (-0.5, 1.0):
        with pytest.raises(ConfigError, match="target"):
            structured_prune(model, "l1", bad, example_inputs=X)
    with pytest.raises(ConfigError, match="target_kind"):
        structured_prune(model, "l1", 0.5, "flops", example_inputs=X)
    with pytest.raises(ConfigError, match="mode"):
        structured_prune(model, "l1", 0.5, mode="zz", example_inputs=X)


def test_structured_prune_accepts_pairs_and_energy_aware(tiny_data):
    x, y = tiny_data.tensors
    model = build_model("lenet5")
    res = structured_prune(model, "energy-aware", 0.5, "macs", (x[:64], y[:64]), example_inputs=x[:1])
    assert res.criterion == "energy-aware/l1" and res.mac_reduction >= 2.0
    res = structured_prune(build_model("lenet5"), "apoz", 0.3, "params", tiny_data, example_inputs=x[:1])
    assert res.pruned["params"] <= 0.7 * res.dense["params"] * 1.02
    with pytest.raises(ConfigError, match="TensorDataset"):
        structured_prune(build_model("lenet5"), "apoz", 0.3, data=[1, 2, 3], example_inputs=x[:1])


def test_round_to_keeps_multiples_per_layer_and_global():
    groups = [ChannelGroup("a", 20), ChannelGroup("b", 16)]
    scores = {"a": torch.arange(20.0), "b": torch.arange(16.0).flip(0)}
    plan = select_per_layer(scores, groups, 0.45, round_to=8)  # a: 9 -> keep 11 -> 16; b: 7 -> keep 9 -> 16
    assert plan == {"a": [0, 1, 2, 3]}
    assert rounded_removal(20, 9, 8) == 4 and rounded_removal(20, 0, 8) == 0 and rounded_removal(16, 15, 8) == 8
    model = build_model("resnet20")
    rgroups = find_groups(model, X)
    costs = layer_costs(model, X)
    dense = total(costs, "macs")
    rscores = {g.name: torch.rand(g.channels, generator=torch.Generator().manual_seed(1)) for g in rgroups}
    plan = select_global(rscores, rgroups, costs, 0.5 * dense, "macs", round_to=4)
    for g in rgroups:
        kept = g.channels - len(plan.get(g.name, []))
        assert kept == g.channels or kept % 4 == 0
        if g.name in plan:  # the removed channels are the lowest scored of the group
            s = rscores[g.name]
            assert max(s[i] for i in plan[g.name]) <= min(s[i] for i in range(g.channels) if i not in plan[g.name])
    assert plan_cost(costs, rgroups, {k: len(v) for k, v in plan.items()}) <= 0.5 * dense
    # round_to=1 is the plain per-channel ranking
    assert select_global(rscores, rgroups, costs, 0.5 * dense, "macs", round_to=1) == \
        select_global(rscores, rgroups, costs, 0.5 * dense, "macs")
    with pytest.raises(ConfigError, match="round_to"):
        select_per_layer(scores, groups, 0.5, round_to=0)


def test_config_call_equals_keyword_call_and_options_live_in_the_config(tiny_data):
    import copy

    from nncompress.prune.structured import StructuredPruneConfig

    x, y = tiny_data.tensors
    model = build_model("lenet5")
    twin = copy.deepcopy(model)
    old = structured_prune(model, "taylor", 0.4, "params", (x[:64], y[:64]), example_inputs=x[:1], mode="layer")
    cfg = StructuredPruneConfig("taylor", target=0.4, target_kind="params", mode="layer")
    new = structured_prune(twin, cfg, (x[:64], y[:64]), example_inputs=x[:1])
    assert new.pruned == old.pruned and new.steps == old.steps
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
    with pytest.raises(TypeError, match="belong in the config"):
        structured_prune(twin, cfg, example_inputs=x[:1], mode="global")
    with pytest.raises(ConfigError, match="unknown criterion 'l3'; allowed: l1, l2"):
        StructuredPruneConfig("l3")
    with pytest.raises(ConfigError, match=r"ratio of 'conv1' must be in \[0, 1\), got 1.5"):
        StructuredPruneConfig(ratios={"conv1": 1.5})
    with pytest.raises(ConfigError, match="steps must be an integer >= 1, got 0"):
        StructuredPruneConfig(steps=0)
