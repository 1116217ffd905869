"""Centroid fine-tuning of ``method: kmeans`` at 2 bits: clusters of thousands of weights.

The paper's step (``centroid_step: sum``) moves a centroid by lr times the *sum* of its
members' gradients, so at the weights' learning rate it grows with the cluster and
diverges (LeNet-5 at 2 bits, 10^5 weights per centroid: NaN at lr 0.01). The default
``mean`` step moves it as one member would move.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nncompress.errors import ConfigError
from nncompress.quantize.kmeans_method import KMeansConfig
from nncompress.quantize.registry import QuantizeRun, quantize_model
from nncompress.quantize.sharing import (
    CentroidFineTuner,
    SharedWeights,
    SharingConfig,
    cluster_sizes,
    share_weights,
)
from nncompress.train import TrainConfig, evaluate, fit


def _blobs(n: int, g: torch.Generator) -> TensorDataset:
    centres = torch.randn(10, 64, generator=torch.Generator().manual_seed(7)) * 0.3
    y = torch.randint(0, 10, (n,), generator=g)
    return TensorDataset(centres[y] + torch.randn(n, 64, generator=g), y)


@pytest.fixture(scope="module")
def trained():
    g = torch.Generator().manual_seed(0)
    train, test = _blobs(2048, g), _blobs(1024, g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))  # 16,384 + 2,560 weights
    fit(model, train, TrainConfig(epochs=2, lr=0.05, batch_size=64))
    return model, train, test


def _quantize(model, train, step):
    marks = {}
    q = copy.deepcopy(model)
    run = QuantizeRun(train_data=train, finetune=TrainConfig(epochs=2, lr=0.1, batch_size=64),
                      snapshot=lambda label: marks.setdefault(label, copy.deepcopy(q)))
    quantize_model(q, KMeansConfig(bits_fc=2, centroid_step=step), run)
    return marks["after_sharing"], q


def test_two_bit_finetuning_stays_finite_and_keeps_accuracy(trained):
    model, train, test = trained
    shared_only, tuned = _quantize(model, train, "mean")
    assert all(torch.isfinite(p).all() for p in tuned.parameters())
    for layer in (tuned[0], tuned[2]):  # still on 4 shared values (+ no zeros left to keep)
        assert torch.unique(layer.weight).numel() <= 4
    before, after = evaluate(shared_only, test), evaluate(tuned, test)
    assert after["accuracy"] >= before["accuracy"]
    assert after["loss"] < before["loss"]


def test_summed_step_at_the_weights_lr_is_what_diverged(trained):
    model, train, test = trained
    shared_only, tuned = _quantize(model, train, "sum")
    finite = all(torch.isfinite(p).all() for p in tuned.parameters())
    assert not finite or evaluate(tuned, test)["accuracy"] < evaluate(shared_only, test)["accuracy"] - 0.2


def test_mean_step_is_the_summed_gradient_over_the_cluster_size():
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    lin = nn.Linear(6, 3)
    shared = share_weights(lin, SharingConfig(bits_fc=2))
    layer = shared["weight"]
    cb0 = layer.codebook.clone()
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    probe = copy.deepcopy(lin)
    nn.functional.cross_entropy(probe(x), y).backward()
    grad = torch.zeros_like(cb0).index_add_(0, layer.labels, probe.weight.grad[layer.mask])
    sizes = cluster_sizes(layer.labels, cb0.numel())
    cfg = TrainConfig(epochs=1, lr=0.1, batch_size=8, lr_schedule="constant", momentum=0.0)
    fit(lin, TensorDataset(x, y), cfg, callbacks=[CentroidFineTuner(shared, lr=0.1, step="mean")])
    assert torch.allclose(layer.codebook, cb0 - 0.1 * grad / sizes, rtol=1e-6, atol=1e-7)


def test_unknown_step_is_refused_by_name():
    with pytest.raises(ConfigError, match="centroid_step 'avg'.*mean"):
        KMeansConfig(centroid_step="avg")
    with pytest.raises(ConfigError, match="'avg'"):
        CentroidFineTuner(SharedWeights({}), lr=0.1, step="avg")


def test_gptq_kmeans_grid_finetuning_uses_the_mean_step(trained):
    from nncompress.quantize.gptq_method import GPTQConfig

    model, train, test = trained
    marks = {}
    q = copy.deepcopy(model)
    run = QuantizeRun(train_data=train, finetune=TrainConfig(epochs=2, lr=0.1, batch_size=64),
                      snapshot=lambda label: marks.setdefault(label, copy.deepcopy(q)))
    quantize_model(q, GPTQConfig(bits=2, grid="kmeans"), run)
    assert all(torch.isfinite(p).all() for p in q.parameters())
    assert evaluate(q, test)["loss"] <= evaluate(marks["after_gptq"], test)["loss"]
    with pytest.raises(ConfigError, match="centroid_step"):
        GPTQConfig(centroid_step="avg")
