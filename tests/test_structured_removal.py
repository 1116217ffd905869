"""S14: physical removal equals masking; coupled layers and optimizer state stay consistent."""

import pytest
import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.prune.structured import channels_masked, find_groups, remove_channels
from nncompress.prune.structured.groups import to_root_plan

X = torch.randn(4, 1, 28, 28)


def _randomise_bn(model):
    g = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def test_resnet_removed_equals_masked_including_residual_groups():
    model = build_model("resnet20").eval()
    _randomise_bn(model)
    groups = find_groups(model, X[:1])
    # one block-internal group and one residual (coupled) group, named through a member
    plan = {"layers.1.conv1": [0, 5, 7], "layers.4.conv2": [1, 2, 30], "conv1": [3]}
    root_plan = to_root_plan(groups, plan)
    assert any(g.coupled for g in groups if g.name in root_plan)
    with torch.no_grad(), channels_masked(model, groups, root_plan):
        masked = model(X)
    dense = model(X)
    assert not torch.allclose(dense, masked)  # the mask did something
    remove_channels(model, plan, X[:1])
    assert model.layers[1].conv1.out_channels == 13 and model.layers[1].conv2.in_channels == 13
    assert model.layers[4].conv2.out_channels == 29 and model.layers[3].shortcut[0].out_channels == 29
    assert model.layers[6].conv1.in_channels == 29 and model.layers[6].shortcut[0].in_channels == 29
    assert model.conv1.out_channels == 15 and model.bn1.num_features == 15
    with torch.no_grad():
        assert torch.allclose(model(X), masked, atol=1e-5)


def test_lenet5_flatten_consumer_shrinks_by_spatial_size():
    model = build_model("lenet5").eval()
    groups = find_groups(model, X[:1])
    with torch.no_grad(), channels_masked(model, groups, {"conv2": [0, 49]}):
        masked = model(X)
    remove_channels(model, {"conv2": [0, 49]}, X[:1])
    assert model.fc1.in_features == 48 * 16
    with torch.no_grad():
        assert torch.allclose(model(X), masked, atol=1e-5)


class _Branchy(nn.Module):
    """Depthwise conv and a concat of two branches."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 6, 3, padding=1)
        self.dw = nn.Conv2d(6, 6, 3, padding=1, groups=6)
        self.b = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Conv2d(10, 5, 1)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        y = torch.cat([self.dw(torch.relu(self.a(x))), torch.relu(self.b(x))], 1)  # (B, 10, H, W)
        return self.fc(torch.relu(self.head(y)).mean((2, 3)))


def test_depthwise_and_concat_are_kept_consistent():
    model = _Branchy().eval()
    x = torch.randn(2, 1, 8, 8)
    groups = find_groups(model, x[:1])
    plan = {"a": [1, 4], "b": [2]}
    with torch.no_grad(), channels_masked(model, groups, to_root_plan(groups, plan)):
        masked = model(x)
    remove_channels(model, plan, x[:1])
    assert (model.a.out_channels, model.dw.groups, model.dw.out_channels) == (4, 4, 4)
    assert model.b.out_channels == 3 and model.head.in_channels == 7
    with torch.no_grad():
        assert torch.allclose(model(x), masked, atol=1e-5)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_optimizer_state_is_sliced_with_the_weights(opt_name):
    model = build_model("lenet5")
    opt = (torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if opt_name == "sgd"
           else torch.optim.Adam(model.parameters(), lr=0.01))
    y = torch.randint(0, 10, (4,))
    nn.functional.cross_entropy(model(X), y).backward()
    opt.step()
    key = "momentum_buffer" if opt_name == "sgd" else "exp_avg"
    old_buf = opt.state[model.conv2.weight][key].clone()
    old_fc1 = opt.state[model.fc1.weight][key].clone()
    remove_channels(model, {"conv2": [3, 10]}, X[:1], optimizer=opt)
    keep = [i for i in range(50) if i not in (3, 10)]
    buf = opt.state[model.conv2.weight][key]
    assert buf.shape == model.conv2.weight.shape
    assert torch.equal(buf, old_buf[keep])
    fc_keep = [i for i in range(800) if i // 16 not in (3, 10)]
    assert torch.equal(opt.state[model.fc1.weight][key], old_fc1[:, fc_keep])
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(p) for p in model.parameters()}
    opt.zero_grad()
    nn.functional.cross_entropy(model(X), y).backward()
    opt.step()  # shapes agree: the step runs


def test_bad_plans_are_rejected_with_clear_errors():
    model = build_model("lenet5")
    with pytest.raises(ConfigError, match="all 20 channels"):
        remove_channels(model, {"conv1": list(range(20))}, X[:1])
    with pytest.raises(ConfigError, match="out of range"):
        remove_channels(model, {"conv1": [25]}, X[:1])
    with pytest.raises(ConfigError, match="allowed"):
        remove_channels(model, {"fc2": [0]}, X[:1])  # the output layer
    with pytest.raises(ConfigError, match="allowed"):
        remove_channels(model, {"nope": [0]}, X[:1])
    assert model.conv1.out_channels == 20


def test_pruned_resnet_round_trips_through_nnc(tmp_path):
    import nncompress

    model = build_model("resnet20").eval()
    _randomise_bn(model)
    remove_channels(model, {"layers.2.conv1": [0, 1, 2], "layers.7.conv2": [5, 9]}, X[:1])
    path = tmp_path / "pruned.nnc"
    nncompress.save(model, path)
    loaded = nncompress.load(path).eval()
    assert loaded.layers[2].conv1.out_channels == 13 and loaded.fc.in_features == 62
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))
