"""S13 C-SGD: the centripetal gradient by hand, convergence, and an exact merge."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from nncompress.models import build_model
from nncompress.prune.csgd import (
    CSGDCallback,
    centripetal_grad,
    cluster_filters,
    cluster_spread,
    csgd_merge,
)
from nncompress.train import TrainConfig, fit


class ConvBN(nn.Module):
    """conv -> BN -> relu -> conv -> flatten -> linear: the C-SGD merge case with BatchNorm."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 4, 3, stride=2)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        x = self.conv2(torch.relu(self.bn1(self.conv1(x))))  # (B, 4, 3, 3)
        return self.fc(torch.relu(x).flatten(1))


def test_centripetal_grad_by_hand():
    p = torch.tensor([[1.0], [3.0], [10.0]])
    g = torch.tensor([[2.0], [4.0], [7.0]])
    out = centripetal_grad(p, g, torch.tensor([0, 0, 1]), eps=0.5)
    # cluster {0,1}: mean g = 3, mean p = 2 -> 3 + 0.5 (p - 2); singleton: its own gradient
    assert out.flatten().tolist() == [2.5, 3.5, 7.0]


def test_clustering():
    w = torch.tensor([[0.0], [0.1], [5.0], [5.1], [9.9], [10.0]])
    labels = cluster_filters(w, 3, "kmeans")
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[4] == labels[5]
    assert len(set(labels.tolist())) == 3
    assert cluster_filters(w, 3, "even").tolist() == [0, 0, 1, 1, 2, 2]


def test_merge_of_identical_filters_is_exact_with_bn():
    torch.manual_seed(0)
    model = ConvBN()
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    with torch.no_grad():
        for c, rep in [(2, 0), (5, 0), (4, 1)]:
            model.conv1.weight[c] = model.conv1.weight[rep]
            for t in (model.bn1.weight, model.bn1.bias, model.bn1.running_mean, model.bn1.running_var):
                t[c] = t[rep]
        model.bn1.running_var.uniform_(0.5, 2.0)
        for c, rep in [(2, 0), (5, 0), (4, 1)]:
            model.bn1.running_var[c] = model.bn1.running_var[rep]
    model.eval()
    x = torch.randn(5, 1, 8, 8)
    before = model(x)
    n_before = sum(p.numel() for p in model.parameters())
    csgd_merge(model, {"conv1": labels}, torch.randn(1, 1, 8, 8))
    assert model.conv1.out_channels == 3 and model.bn1.num_features == 3 and model.conv2.in_channels == 3
    assert sum(p.numel() for p in model.parameters()) < n_before
    assert (model(x) - before).abs().max() < 1e-5


def test_training_converges_then_merge_changes_outputs_below_1e4():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 28, 28, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 0).long()
    model = build_model("lenet5")
    example = torch.randn(1, 1, 28, 28)
    clusters = {"conv1": cluster_filters(model.conv1.weight, 5), "conv2": cluster_filters(model.conv2.weight, 10),
                "fc1": cluster_filters(model.fc1.weight, 50, "even")}
    cb = CSGDCallback(model, clusters, example, eps=10.0)
    # without momentum the members' differences shrink by (1 - lr (eps + wd)) ~ 0.5 per step
    fit(model, TensorDataset(x, y), TrainConfig(epochs=10, batch_size=32, lr=0.05, lr_schedule="constant",
                                                momentum=0.0, weight_decay=1e-4), callbacks=[cb])
    spread = cluster_spread(model, clusters)
    assert max(spread.values()) < 1e-6
    model.eval()
    before = model(x[:16])
    n_before = sum(p.numel() for p in model.parameters())
    csgd_merge(model, clusters, example)
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.out_features) == (5, 10, 50)
    assert sum(p.numel() for p in model.parameters()) < n_before / 4
    assert (model(x[:16]) - before).abs().max() < 1e-4


def test_bn_params_and_stats_converge_with_momentum():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 8, 8, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    model = ConvBN()
    example = torch.randn(1, 1, 8, 8)
    clusters = {"conv1": torch.tensor([0, 1, 0, 2, 1, 0])}
    cb = CSGDCallback(model, clusters, example, eps=2.0)
    fit(model, TensorDataset(x, y), TrainConfig(epochs=25, batch_size=8, lr=0.05, lr_schedule="constant",
                                                momentum=0.9, weight_decay=1e-4), callbacks=[cb])
    bn = model.bn1
    for t in (bn.weight.detach(), bn.bias.detach(), bn.running_mean, bn.running_var):
        assert float((t[[0, 2, 5]] - t[0]).abs().max()) < 1e-4 * max(1.0, float(t.abs().max()))
    model.eval()
    before = model(x)
    csgd_merge(model, clusters, example)
    assert model.bn1.num_features == 3
    assert (model(x) - before).abs().max() < 1e-4
