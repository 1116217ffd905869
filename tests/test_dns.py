"""P5 Dynamic Network Surgery: thresholds, hysteresis, straight-through updates."""

import pytest
import torch
from torch import nn

from nncompress.prune.dns import (
    DNSCallback,
    DNSConfig,
    c_rate_for_sparsity,
    dns_thresholds,
    dns_update_mask,
    update_probability,
)
from nncompress.train import TrainConfig, fit


def test_thresholds_formula():
    w = torch.tensor([1.0, -2.0, 3.0, -6.0])
    mu, sd = 3.0, (((1 - 3) ** 2 + 1 + 0 + 9) / 4) ** 0.5
    a, b = dns_thresholds(w, 0.5)
    assert a == pytest.approx(0.9 * (mu + 0.5 * sd)) and b == pytest.approx(1.1 * (mu + 0.5 * sd))
    assert dns_thresholds(w, -10.0) == (0.0, 0.0)


def test_hysteresis():
    a, b = 1.0, 2.0
    w = torch.tensor([0.5, 0.5, 1.5, 1.5, 2.5, 2.5])
    t = torch.tensor([True, False, True, False, True, False])
    # below a: pruned whatever T was; between: unchanged; above b: spliced
    assert dns_update_mask(w, t, a, b).tolist() == [False, False, True, False, True, True]
    # a weight that fell below a and comes back between a and b stays pruned
    m = dns_update_mask(torch.tensor([0.5]), torch.tensor([True]), a, b)
    assert not dns_update_mask(torch.tensor([1.9]), m, a, b).item()
    assert dns_update_mask(torch.tensor([2.1]), m, a, b).item()


def test_probability():
    assert update_probability(0, 1e-4, 1) == 1.0
    assert update_probability(300, 0.01, 2) == pytest.approx(1 / 16)


def test_c_rate_for_sparsity_prunes_exactly_k():
    w = torch.randn(1000)
    c = c_rate_for_sparsity(w, 0.7)
    a, _ = dns_thresholds(w, c)
    assert int((w.abs() < a).sum()) == 700


def test_straight_through_and_finalize():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    cb = DNSCallback(DNSConfig(sparsity=0.5, gamma=0.0))
    w0 = model[0].weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cb.on_fit_begin(model, opt)
    t = cb.masks["0.weight"].clone()
    assert int(t.sum()) == 6 and torch.equal(model[0].weight.detach(), w0 * t)
    loss = nn.functional.cross_entropy(model(x), y)
    opt.zero_grad(); loss.backward()
    # the gradient with respect to the masked weight, by hand
    weff = (w0 * t).requires_grad_()
    nn.functional.cross_entropy(x @ weff.T, y).backward()
    cb.after_backward(model); opt.step(); cb.after_optimizer_step(model, opt)
    expected_dense = w0 - 0.1 * weff.grad  # pruned entries updated too (no T factor)
    assert torch.allclose(cb.dense["0.weight"], expected_dense, atol=1e-6)
    assert not torch.allclose(expected_dense[~t], w0[~t])
    masks = cb.finalize(model)
    assert torch.equal(model[0].weight.detach(), cb.dense["0.weight"] * masks["0.weight"])


def test_fit_keeps_masked_weights_in_model(lenet300, tiny_data):
    cb = DNSCallback(DNSConfig(sparsity={"default": 0.9, "fc3.weight": 0.5}))
    fit(lenet300, tiny_data, TrainConfig(epochs=1, batch_size=32), callbacks=[cb])
    masks = cb.finalize(lenet300)
    assert 0.85 < masks.sparsity()["fc1.weight"] < 0.95
    for n, m in masks.items():
        assert torch.all(dict(lenet300.named_parameters())[n][~m] == 0)
