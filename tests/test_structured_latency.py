"""Latency staircases (measured kept counts) and latency targets in channel selection."""

import pytest
import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.prune.structured import find_groups
from nncompress.prune.structured.cost import LayerCost, layer_costs, total
from nncompress.prune.structured.groups import ChannelGroup
from nncompress.prune.structured.latency import (
    LatencyModel,
    group_layer_curves,
    input_shapes,
    measure_latency,
    median3,
    staircase,
)
from nncompress.prune.structured.pruner import structured_prune
from nncompress.prune.structured.selection import (
    allowed_kept,
    rounded_removal,
    select_global,
    select_per_layer,
)

X = torch.randn(1, 1, 28, 28)


def test_staircase_keeps_only_counts_that_are_faster_by_tol():
    # blocked kernels: 49..64 cost the same, 33..48 less, 17..32 less again
    curve = {k: 1.0 if k > 48 else 0.63 if k > 32 else 0.31 for k in range(17, 65)}
    assert staircase(curve) == [64, 48, 32]
    curve[56] = 1.05  # slower than the whole layer: never a step
    curve[45] = 0.60  # 5% below its step: noise at tol=0.1
    assert staircase(curve) == [64, 48, 32]
    exact = staircase(curve, tol=0.0)  # every count no slower than the last step
    assert 45 in exact and 56 not in exact and 44 not in exact and 63 in exact
    linear = {k: float(k) for k in range(1, 11)}
    assert staircase(linear, tol=0.0) == list(range(10, 0, -1))
    assert staircase(linear, tol=0.25) == [10, 7, 5, 3, 2, 1]  # each <= 0.75 of the last step
    with pytest.raises(ConfigError, match="tol"):
        staircase(linear, tol=1.0)


def test_median3_removes_a_single_dip_but_keeps_a_real_step():
    curve = {k: 1.0 for k in range(1, 11)}
    curve[5] = 0.2
    assert median3(curve)[5] == 1.0
    step = {k: 1.0 if k > 6 else 0.5 for k in range(1, 11)}
    assert median3(step) == step | {6: 0.5, 7: 1.0}
    assert staircase(median3(step)) == [10, 6]


def test_allowed_kept_and_rounding_to_explicit_counts():
    assert allowed_kept(20, 8) == [20, 16, 8, 0]
    assert allowed_kept(16, 16) == [16, 0]
    assert allowed_kept(64, kept=[48, 64, 32, 80, -1]) == [64, 48, 32]
    assert rounded_removal(64, 20, kept=[64, 48, 32]) == 16  # keep 44 -> next allowed up: 48
    assert rounded_removal(64, 0, kept=[64, 48]) == 0
    assert rounded_removal(64, 40, kept=[64, 48, 32]) == 32  # keep 24 -> 32 (no smaller step listed)


def test_selection_removes_only_whole_steps():
    model = build_model("resnet20")
    groups = find_groups(model, X)
    costs = layer_costs(model, X)
    dense = total(costs, "macs")
    scores = {g.name: torch.rand(g.channels, generator=torch.Generator().manual_seed(2)) for g in groups}
    kept = {g.name: list(range(g.channels, 0, -16 if g.channels > 16 else -3)) for g in groups}
    plan = select_global(scores, groups, costs, 0.5 * dense, "macs", kept_counts=kept)
    for g in groups:
        left = g.channels - len(plan.get(g.name, []))
        assert left in kept[g.name]
    per_layer = select_per_layer(scores, groups, 0.3, kept_counts=kept)
    for g in groups:
        assert g.channels - len(per_layer.get(g.name, [])) in kept[g.name]


def test_a_closed_group_takes_no_smaller_later_chunk():
    # allowed kept counts 10 -> 4 -> 3: the 6-channel chunk passes max_ratio, so the group
    # must stay whole (taking only the 1-channel chunk would keep 9, not an allowed count)
    groups = [ChannelGroup("a", 10, producers={"a": list(range(10))}), ChannelGroup("b", 10, producers={"b": list(range(10))})]

    costs = [LayerCost("a", "Linear", 100, 100, 0), LayerCost("b", "Linear", 100, 100, 0)]
    scores = {"a": torch.arange(10.0), "b": torch.arange(10.0) + 0.5}
    plan = select_global(scores, groups, costs, 150, "macs", max_ratio=0.5,
                         kept_counts={"a": [10, 4, 3], "b": [10, 5]})
    assert plan == {"b": [0, 1, 2, 3, 4]}


def test_latency_model_predicts_the_separable_product():
    groups = [ChannelGroup("g1", 4), ChannelGroup("g2", 2)]
    lat = LatencyModel(full={"c1": 2.0, "c2": 3.0},
                       curves={"g1": {"c1": {4: 1.0, 2: 0.5}, "c2": {4: 2.0, 2: 1.0}},
                               "g2": {"c2": {2: 1.0, 1: 0.25}}},
                       steps={"g1": [4, 2], "g2": [2, 1]})
    assert lat.predict(groups, {}) == 5.0
    assert lat.predict(groups, {"g1": 2}) == pytest.approx(2.0 * 0.5 + 3.0 * 0.5)
    assert lat.predict(groups, {"g1": 2, "g2": 1}) == pytest.approx(1.0 + 3.0 * 0.5 * 0.25)
    assert lat.predict(groups, {"g1": 1}) == 5.0  # 3 kept is not measured: priced as the step above (4)


def _tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                         nn.Conv2d(6, 6, 3, padding=1, groups=6), nn.ReLU(),
                         nn.Conv2d(6, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def test_layer_curves_time_every_count_with_consistent_shapes():
    net = _tiny_net()
    x = torch.randn(1, 1, 8, 8)
    groups = find_groups(net, x)
    shapes = input_shapes(net, x, batch=4)
    assert shapes["0"] == (4, 1, 8, 8) and shapes["8"] == (4, 256)
    for g in groups:
        curves = group_layer_curves(net, g, shapes, repeats=1)
        assert all(sorted(c) == list(range(1, g.channels + 1)) for c in curves.values())
        assert all(t > 0 for c in curves.values() for t in c.values())
    with pytest.raises(ConfigError, match="kept counts"):
        group_layer_curves(net, groups[0], shapes, kept=[0, 3])


def test_measured_latency_model_covers_every_group():
    torch.set_num_threads(1)
    model = build_model("lenet5")
    groups = find_groups(model, X)
    lat = measure_latency(model, groups, X, batch=2, repeats=1)
    assert set(lat.steps) == {g.name for g in groups}
    assert all(lat.steps[g.name][0] == g.channels for g in groups)
    assert lat.predict(groups, {}) == pytest.approx(sum(lat.full.values()))


def _fake_latency(model, groups, example, batch):
    """A deterministic LatencyModel: every layer's time proportional to its kept share of
    each group, steps at multiples of 4 (and the whole group)."""
    full, curves = {}, {}
    for g in groups:
        curves[g.name] = {}
        for layer in dict.fromkeys([*g.producers, *g.consumers]):
            full[layer] = 1.0
            curves[g.name][layer] = {k: k / g.channels for k in range(1, g.channels + 1)}
    steps = {g.name: allowed_kept(g.channels, 4)[:-1] for g in groups}
    return LatencyModel(full, curves, steps)


def test_prune_to_measured_steps_and_to_a_latency_target(monkeypatch):
    import nncompress.prune.structured.pruner as pruner

    monkeypatch.setattr(pruner, "measure_latency", _fake_latency)
    model = build_model("resnet20")
    groups = find_groups(model, X)
    res = structured_prune(model, "l1", 0.5, "macs", example_inputs=X, round_to="latency")
    assert res.mac_reduction >= 2.0
    for g in find_groups(model, X):  # the pruned model's groups: every kept count is a step
        assert g.channels % 4 == 0 or g.channels in {h.channels for h in groups}
    model = build_model("resnet20")
    lat = _fake_latency(model, groups, X, 64)
    structured_prune(model, "l1", 0.3, "latency", example_inputs=X)
    after = {g.name: g.channels for g in find_groups(model, X)}
    removed = {g.name: g.channels - after[g.name] for g in groups}
    assert any(removed.values())
    assert lat.predict(groups, removed) <= 0.7 * lat.predict(groups, {}) + 1e-9
    with pytest.raises(ConfigError, match="'latency'"):
        structured_prune(build_model("lenet5"), "l1", 0.3, example_inputs=X, round_to="fast")
    with pytest.raises(ConfigError, match="LatencyModel"):
        select_global({}, [], [], 1.0, "latency")
