"""Gradual channel fading (soft removal during fine-tuning, then exact physical removal)."""

import copy

import pytest
import torch
from torch.utils.data import TensorDataset

from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.prune.structured import ChannelFade, find_groups, remove_channels, structured_prune
from nncompress.prune.structured.fading import fade_multiplier, fade_steps_for, producer_indices
from nncompress.prune.structured.groups import to_root_plan
from nncompress.prune.structured.scoring import ScoreData
from nncompress.train import TrainConfig, fit

X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_multiplier_is_linear_to_zero_then_stays():
    assert [fade_multiplier(s, 4) for s in range(6)] == [0.75, 0.5, 0.25, 0.0, 0.0, 0.0]
    with pytest.raises(ConfigError, match="fade_steps"):
        fade_multiplier(0, 0)


def test_fade_steps_follow_the_training_config():
    cfg = TrainConfig(epochs=4, batch_size=100)
    assert fade_steps_for(2, cfg, 1000) == 20  # 10 steps per epoch
    assert fade_steps_for(9, cfg, 1000) == 40  # never past the end of the fine-tuning
    assert fade_steps_for(2, TrainConfig(epochs=4, batch_size=100, max_steps=5), 1000) == 5


def test_hooks_scale_every_producer_of_a_residual_group_and_detach():
    model = build_model("resnet20").eval()
    groups = find_groups(model, X[:1])
    root_plan = to_root_plan(groups, {"layers.4.conv2": [1, 2]})
    idx = producer_indices(model, groups, root_plan)
    assert len(idx) > 4  # convs and norms of every block writing the residual stream
    fade = ChannelFade(model, groups, root_plan, fade_steps=2)
    with torch.no_grad():
        dense = model(X)
        fade.attach()
        fade.multiplier = 0.0
        faded = model(X)
        fade.detach()
        assert torch.equal(model(X), dense)  # hooks gone
    pruned = copy.deepcopy(model)
    remove_channels(pruned, {"layers.4.conv2": [1, 2]}, X[:1])
    with torch.no_grad():
        assert torch.allclose(pruned(X), faded, atol=1e-5)  # at m = 0 the fade is the removal


def test_fade_inside_fit_ends_exactly_at_the_removed_model(tiny_data):
    model = build_model("resnet20")
    groups = find_groups(model, X[:1])
    root_plan = to_root_plan(groups, {"layers.1.conv1": [0, 3], "layers.4.conv2": [5]})
    fade = ChannelFade(model, groups, root_plan, fade_steps=2)
    seen = []

    orig = fade.on_batch_begin

    def spy(step):
        orig(step)
        seen.append(fade.multiplier)

    fade.on_batch_begin = spy
    fit(model, tiny_data, TrainConfig(epochs=1, batch_size=64, max_steps=4, lr=0.01), callbacks=[fade])
    assert seen == [0.5, 0.0, 0.0, 0.0] and not fade._handles
    model.eval()
    fade.attach()
    fade.multiplier = 0.0
    with torch.no_grad():
        faded = model(X)
    fade.detach()
    remove_channels(model, {"layers.1.conv1": [0, 3], "layers.4.conv2": [5]}, X[:1])
    with torch.no_grad():
        assert torch.allclose(model(X), faded, atol=1e-5)


def test_structured_prune_with_fading_trains_before_removal(tiny_data):
    model = build_model("lenet5")
    x, y = tiny_data.tensors
    shapes = []
    res = structured_prune(model, "l1", 0.5, "macs", ScoreData(x[:64], y[:64]), example_inputs=x[:1],
                           finetune=TrainConfig(epochs=1, max_steps=3, lr=0.01), train_data=tiny_data,
                           fade_epochs=0.5, on_removed=lambda s, m: shapes.append(m.conv1.out_channels))
    assert res.mac_reduction >= 2.0 and shapes == [model.conv1.out_channels] and shapes[0] < 20
    assert "train_accuracy" in res.steps[0]


@pytest.mark.parametrize("kw, match", [
    ({"fade_epochs": 1.0}, "needs finetune"),
    ({"fade_epochs": 3.0, "finetune": TrainConfig(epochs=2)}, r"fade_epochs must be in \(0, 2"),
    ({"fade_epochs": -1.0, "finetune": TrainConfig(epochs=2)}, "fade_epochs must be in"),
])
def test_bad_fade_arguments(kw, match):
    data = TensorDataset(X, torch.zeros(4, dtype=torch.long))
    with pytest.raises(ConfigError, match=match):
        structured_prune(build_model("lenet5"), "l1", 0.5, example_inputs=X[:1], train_data=data, **kw)
