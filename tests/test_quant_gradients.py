"""Each method's own gradient: clipped STE, BWN's 1/n + alpha term, TTQ's scale grads,
DoReFa's tanh chain and gradient quantization."""

import pytest
import torch

from nncompress.quantize.binary import binarize_weight, bwn_weight
from nncompress.quantize.dorefa import dorefa_weight
from nncompress.quantize.ste import dorefa_grad_quantize, quantize_grad, sign_ste
from nncompress.quantize.ternary import ttq_weight, twn_weight


def test_bnn_ste_cancels_gradient_where_abs_above_one():
    r = torch.tensor([-2.0, -1.0, -0.3, 0.0, 0.7, 1.5], requires_grad=True)
    out = sign_ste(r)
    assert out.tolist() == [-1, -1, -1, -1, 1, 1]
    out.backward(torch.arange(1.0, 7.0))
    assert r.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0]


def test_stochastic_binarization_probability_and_ste():
    torch.manual_seed(0)
    w = torch.full((20000,), 0.5, requires_grad=True)  # p(+1) = hard_sigmoid(0.5) = 0.75
    out = binarize_weight(w, stochastic=True)
    assert set(out.unique().tolist()) == {-1.0, 1.0}
    assert (out == 1).float().mean().item() == pytest.approx(0.75, abs=0.015)
    out.sum().backward()
    assert torch.all(w.grad == 1.0)
    w2 = torch.tensor([3.0], requires_grad=True)
    binarize_weight(w2, stochastic=True).sum().backward()
    assert w2.grad.item() == 0.0


def test_bwn_gradient_has_mean_and_ste_terms():
    w = torch.tensor([[0.5, -2.0, 0.1, -0.3]], requires_grad=True)
    bwn_weight(w).backward(torch.ones(1, 4))
    alpha, n = w.abs().mean().item(), 4
    # d/dw_j sum_i alpha sign(w_i) = sign(w_j)/n * sum_i sign(w_i) + alpha 1{|w_j| <= 1}
    s = torch.sign(w.detach())
    expect = s / n * s.sum() + alpha * (w.detach().abs() <= 1)
    assert torch.allclose(w.grad, expect)


def test_twn_uses_identity_ste():
    w = torch.tensor([0.9, -0.05, 0.4], requires_grad=True)
    twn_weight(w).backward(torch.tensor([1.0, 2.0, 3.0]))
    assert w.grad.tolist() == [1.0, 2.0, 3.0]


def test_ttq_gradients_match_paper():
    w = torch.tensor([0.5, -0.05, -0.8, 0.02, 0.9], requires_grad=True)
    wp = torch.tensor(2.0, requires_grad=True)
    wn = torch.tensor(3.0, requires_grad=True)
    out = ttq_weight(w, wp, wn, torch.tensor(0.1))
    assert out.tolist() == [2.0, 0.0, -3.0, 0.0, 2.0]
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    out.backward(g)
    assert wp.grad.item() == 6.0  # sum over I_p
    assert wn.grad.item() == -3.0  # w_t = -W_n on I_n
    assert w.grad.tolist() == [2.0, 2.0, 9.0, 4.0, 10.0]  # W_p g, g, W_n g


def test_dorefa_weight_gradient_goes_through_tanh():
    w = torch.tensor([0.3, -0.6, 1.2], requires_grad=True)
    out = dorefa_weight(w, 4)
    out.sum().backward()
    # STE through round: d/dw of 2 * (tanh(w) / (2 m) + 1/2) - 1 = (1 - tanh^2(w)) / m,
    # m = max|tanh| held constant
    m = torch.tanh(w.detach()).abs().max()
    assert torch.allclose(w.grad, (1 - torch.tanh(w.detach()) ** 2) / m)


def test_gradient_quantization_levels():
    torch.manual_seed(0)
    g = torch.randn(4, 50)
    q = dorefa_grad_quantize(g, 2)
    m = g.abs().amax(dim=1, keepdim=True)
    levels = q / (2 * m) + 0.5  # in {0, 1/3, 2/3, 1}
    assert torch.allclose(levels * 3, torch.round(levels * 3), atol=1e-5)
    x = torch.randn(3, 5, requires_grad=True)
    y = quantize_grad(x * 1.0, 8)
    assert torch.equal(y, x)
    y.backward(torch.ones(3, 5))
    assert torch.allclose(x.grad, torch.ones(3, 5), atol=1 / 255 + 1e-6)
