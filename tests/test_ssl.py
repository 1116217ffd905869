"""S11 SSL: group norms by hand, the penalty's gradient, zeroing and physical removal."""

import pytest
import torch
from torch import nn

from nncompress.models import build_model
from nncompress.prune.group_lasso import (
    GroupLasso,
    group_lasso,
    group_norms,
    ssl_remove,
    zero_small_groups,
)


def test_group_norms_by_hand():
    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert torch.allclose(group_norms(w, "filter"), torch.stack([w[0].norm(), w[1].norm()]))
    assert torch.allclose(group_norms(w, "channel"), torch.stack([w[:, c].norm() for c in range(3)]))
    shape = group_norms(w, "shape")
    assert shape.shape == (3, 2, 2) and shape[1, 0, 1] == pytest.approx(float(w[:, 1, 0, 1].norm()))


def test_penalty_gradient_is_normalised_group():
    w = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    group_lasso(w, "filter").backward()
    assert torch.allclose(w.grad, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))  # w_g / ||w_g||, 0 at 0


def test_callback_adds_penalty():
    lin = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    cb = GroupLasso({"w": lin.weight}, {"filter": 1.0, "channel": 2.0}, strength=0.1)
    expected = 0.1 * ((5 + 1) + 2 * (3 + 17 ** 0.5))
    assert float(cb.before_backward(torch.tensor(1.0), lin).detach()) == pytest.approx(1 + expected)


def test_zero_groups_then_remove_is_exact():
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    with torch.no_grad():
        model.conv1.weight[[2, 5]] *= 1e-6  # tiny filters
        model.conv2.weight[:, [7]] = 0  # a channel conv2 ignores -> conv1 filter 7 removable
        model.fc1.weight[[10, 11, 12]] *= 1e-6
    zeroed = zero_small_groups(model, ["filter"], eps=1e-3)
    assert zeroed["conv1.weight"]["filter"] == [2, 5] and zeroed["fc1.weight"]["filter"] == [10, 11, 12]
    assert torch.all(model.conv1.bias[[2, 5]] == 0)
    x = torch.randn(4, 1, 28, 28)
    before = model(x)
    model, plan = ssl_remove(model, torch.randn(1, 1, 28, 28))
    assert plan["conv1"] == [2, 5, 7] and plan["fc1"] == [10, 11, 12]
    assert model.conv1.out_channels == 17 and model.fc1.out_features == 497
    assert torch.allclose(model(x), before, atol=1e-5)
