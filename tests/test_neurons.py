"""P3: dead neurons are folded and removed; the outputs do not change."""

import torch
from torch import nn

from nncompress.models import build_model
from nncompress.prune import magnitude_prune
from nncompress.prune.neurons import prune_dead_neurons


def test_lenet300_dead_neurons_removed_outputs_unchanged():
    model = build_model("lenet300").eval()
    with torch.no_grad():
        model.fc1.bias.uniform_(-0.5, 0.5)
        model.fc1.weight[:40] = 0.0  # 40 neurons with no input: constant relu(b)
        model.fc1.bias[:5] = -1.0  # five of them are constant zero
        model.fc2.weight[:, 100:130] = 0.0  # 30 neurons of fc1 with no output
        model.fc2.weight[:7] = 0.0  # 7 fc2 neurons with no input (constant relu(b2))
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
    removed = prune_dead_neurons(model, x[:4])
    assert removed == {"fc1": 70, "fc2": 7}
    assert model.fc1.out_features == 230 and model.fc2.in_features == 230
    assert model.fc2.out_features == 93 and model.fc3.in_features == 93
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)


def test_after_magnitude_pruning_layers_shrink(lenet300):
    model = lenet300.eval()
    magnitude_prune(model, sparsity=0.9)
    with torch.no_grad():  # make sure some rows are entirely zero
        model.fc1.weight[model.fc1.weight.abs().sum(1).argsort()[:50]] = 0.0
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        before = model(x)
    removed = prune_dead_neurons(model, x)
    assert removed["fc1"] >= 50 and model.fc1.out_features <= 250
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)


def test_nothing_dead_nothing_changes():
    model = build_model("lenet300")
    assert prune_dead_neurons(model, torch.randn(2, 1, 28, 28)) == {}
    assert model.fc1.out_features == 300


def test_no_bias_consumer_keeps_nonzero_constant_neurons():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2, bias=False), nn.Linear(2, 2))
    with torch.no_grad():
        model[1].weight[0] = 0.0
        model[1].bias[0] = 1.0  # constant 1 cannot be folded into a bias-free consumer
    x = torch.randn(5, 4)
    before = model(x)
    assert prune_dead_neurons(model, x) == {}
    assert torch.allclose(model(x), before)
