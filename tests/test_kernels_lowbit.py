"""E3 kernels equal their float references."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from nncompress.kernels import (
    BinaryLinear,
    ShiftLinear,
    TernaryLinear,
    pack_signs,
    popcount64,
    popcount_lut,
    quantize_input,
    ternary_matmul,
    xnor_dot,
)
from nncompress.quantize.binary import bwn_quantize
from nncompress.quantize.pow2 import inq_quantize, shift_codes, shift_scale
from nncompress.quantize.ternary import twn_quantize


def test_popcounts_match_python():
    torch.manual_seed(0)
    x = torch.randint(-(2**63), 2**63 - 1, (500,), dtype=torch.int64)
    x[:3] = torch.tensor([0, -1, -(2**63)])
    ref = [(v & (2**64 - 1)).bit_count() for v in x.tolist()]
    assert popcount64(x).tolist() == ref
    assert popcount_lut(x).tolist() == ref


@pytest.mark.parametrize("k", [1, 63, 64, 65, 200])
def test_xnor_dot_equals_sign_matmul(k):
    torch.manual_seed(k)
    a, b = torch.randn(7, k), torch.randn(5, k)
    sa, sb = torch.where(a > 0, 1.0, -1.0), torch.where(b > 0, 1.0, -1.0)
    ref = (sa @ sb.T).to(torch.int64)
    assert torch.equal(xnor_dot(pack_signs(a), pack_signs(b), k), ref)
    assert torch.equal(
        xnor_dot(pack_signs(a), pack_signs(b), k, popcount=popcount_lut, chunk=2), ref
    )


@pytest.mark.parametrize("mode", ["sign", "xnor"])
def test_binary_linear_equals_float_reference(mode):
    torch.manual_seed(0)
    lin = nn.Linear(130, 9)
    with torch.no_grad():
        lin.weight.copy_(bwn_quantize(lin.weight))
    x = torch.randn(6, 130)
    xb = torch.where(x > 0, 1.0, -1.0)
    if mode == "xnor":
        xb = xb * x.abs().mean(dim=1, keepdim=True)
    ref = F.linear(xb, lin.weight, lin.bias)
    assert torch.allclose(BinaryLinear.from_linear(lin, mode)(x), ref, atol=1e-5, rtol=1e-5)


def test_ternary_linear_equals_float_reference():
    torch.manual_seed(0)
    lin = nn.Linear(100, 12)
    with torch.no_grad():
        w = twn_quantize(lin.weight, per_channel=True)
        w[0] = torch.where(w[0] > 0, 0.3, torch.where(w[0] < 0, -0.7, 0.0))  # TTQ-like W_p != W_n
        lin.weight.copy_(w)
    x = torch.randn(5, 100)
    ref = F.linear(x, lin.weight, lin.bias)
    assert torch.allclose(TernaryLinear.from_linear(lin)(x), ref, atol=1e-5)
    # the per-output sums are additions only: on integer inputs they are exact
    xi = torch.randint(-50, 50, (5, 100))
    t = TernaryLinear.from_linear(lin)
    sp, sn = ternary_matmul(xi, (t.pos_rows, t.pos_cols), (t.neg_rows, t.neg_cols), 12)
    assert torch.equal(sp, xi @ (lin.weight > 0).long().T)
    assert torch.equal(sn, xi @ (lin.weight < 0).long().T)


def test_shift_add_integer_accumulator_is_exact_for_inq_weights():
    torch.manual_seed(0)
    w = inq_quantize(torch.randn(16, 80) * 0.1, -2, -9)
    lin = ShiftLinear([w], None)
    q, _ = quantize_input(torch.randn(4, 80), 8)
    ((acc, n_min),) = lin.integer_forward(q)
    ref = (
        q @ torch.ldexp(w.double(), torch.tensor(-n_min)).to(torch.int64).T
    )  # exact integer matmul
    assert torch.equal(acc, ref)
    x = torch.randn(4, 80)
    qx, sx = quantize_input(x, 8)
    assert torch.allclose(lin(x), F.linear(qx.float() * sx, w), atol=1e-5)


def test_shift_linear_for_shiftcnn_codebooks():
    torch.manual_seed(0)
    w = torch.randn(8, 40)
    s = shift_scale(w, per_channel=True)
    terms = shift_codes(w / s, 2, 4)  # (2, 8, 40) power-of-two codewords
    w_q = s * terms.sum(dim=0)
    lin = ShiftLinear(list(terms), None, scale=s.flatten())
    x = torch.randn(3, 40)
    qx, sx = quantize_input(x, 8)
    assert torch.allclose(lin(x), F.linear(qx.float() * sx, w_q), atol=1e-4)
