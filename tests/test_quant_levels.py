"""Levels and scales of each quantizer on hand-computed tensors."""

import math

import pytest
import torch

from nncompress.quantize.admm import admm_project, level_set, nearest_level
from nncompress.quantize.affine import choose_qparams, dequantize_affine, quantize_affine
from nncompress.quantize.binary import bwn_quantize, xnor_activation
from nncompress.quantize.dorefa import (
    dorefa_activation,
    dorefa_weight,
    linear_activation,
    log_activation,
)
from nncompress.quantize.pow2 import (
    inq_exponents,
    inq_levels,
    inq_quantize,
    shift_codebook,
    shift_codes,
    shift_quantize,
)
from nncompress.quantize.ternary import ttq_threshold, twn_quantize, twn_scale, twn_threshold


def test_twn_delta_and_alpha_by_hand():
    w = torch.tensor([0.9, -0.1, 0.3, -0.6, 0.05, 0.0])
    # mean|w| = 1.95 / 6 = 0.325 -> Delta = 0.2275; kept: 0.9, 0.3, -0.6 -> alpha = 0.6
    delta = twn_threshold(w)
    assert delta.item() == pytest.approx(0.7 * 1.95 / 6)
    assert twn_scale(w, delta).item() == pytest.approx(0.6)
    q = twn_quantize(w)
    assert q.tolist() == pytest.approx([0.6, 0.0, 0.6, -0.6, 0.0, 0.0])


def test_twn_per_channel_uses_each_rows_stats():
    w = torch.tensor([[1.0, 0.0, -1.0, 0.1], [4.0, -4.0, 0.0, 0.0]])
    q = twn_quantize(w, per_channel=True)
    # row 0: Delta = 0.7 * 0.525 = 0.3675 -> alpha 1; row 1: Delta = 1.4 -> alpha 4
    assert q.tolist() == [[1.0, 0.0, -1.0, 0.0], [4.0, -4.0, 0.0, 0.0]]


def test_ttq_threshold_rules():
    w = torch.tensor([2.0, -1.0, 0.05, 0.2, -0.3])
    assert ttq_threshold(w, t=0.05).item() == pytest.approx(0.1)
    assert ttq_threshold(w, zero_ratio=0.5).item() == pytest.approx(0.3)  # median of |w|


def test_bwn_alpha_is_mean_abs_per_filter():
    w = torch.tensor([[0.5, -1.5], [0.1, 0.3]])
    assert bwn_quantize(w).flatten().tolist() == pytest.approx([1.0, -1.0, 0.2, 0.2])
    assert bwn_quantize(w, per_channel=False).flatten().tolist() == pytest.approx(
        [0.6, -0.6, 0.6, 0.6]
    )


def test_xnor_input_scale():
    x = torch.tensor([[1.0, -2.0, 3.0]])  # beta = 2
    assert xnor_activation(x).tolist() == [[2.0, -2.0, 2.0]]
    x4 = torch.tensor([1.0, -3.0]).reshape(1, 2, 1, 1)  # per position: mean over channels = 2
    assert xnor_activation(x4).flatten().tolist() == [2.0, -2.0]


def test_inq_levels_formula():
    # max|W| = 0.9: n1 = floor(log2(1.2)) = 0; b = 5: n2 = 0 + 1 - 8 = -7
    assert inq_exponents(0.9, 5) == (0, -7)
    assert inq_exponents(0.2, 3) == (-2, -3)  # floor(log2(0.2667)) = -2; n2 = -2 + 1 - 2
    levels = inq_levels(0.9, 5)
    assert len(levels) == 17 and levels[8] == 0.0
    assert levels[9:] == [2.0**n for n in range(-7, 1)]
    # rule: beta where (alpha + beta)/2 <= |w| < 3 beta / 2, else 0
    w = torch.tensor([0.9, 0.74, 0.76, 0.375, 0.37, 2.0**-8, 2.0**-8 - 1e-6, -0.3])
    assert inq_quantize(w, 0, -7).tolist() == [1.0, 0.5, 1.0, 0.5, 0.25, 2.0**-7, 0.0, -0.25]


def test_shiftcnn_codebook_and_greedy_residual():
    assert shift_codebook(3) == [-1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0]
    assert len(shift_codebook(4)) == 15 and min(c for c in shift_codebook(4) if c > 0) == 2.0**-6
    # r = 0.8: c1 = 1 (0.8 >= 0.75), residual -0.2 -> c2 = -0.25; r = 0.3: c1 = 0.25, res 0.05 -> 0
    codes = shift_codes(torch.tensor([0.8, 0.3]), 2, 3)
    assert codes.tolist() == [[1.0, 0.25], [-0.25, 0.0]]
    w = torch.tensor([2.0, 1.6, 0.6])  # scale 2: r = 1, 0.8, 0.3
    assert shift_quantize(w, 2, 3).tolist() == [2.0, 1.5, 0.5]


def test_int8_symmetric_and_asymmetric_qparams():
    w = torch.tensor([[-1.27, 0.5], [0.0, 0.254]])
    s, z = choose_qparams(w, 8, symmetric=True, axis=0)
    assert s.flatten().tolist() == pytest.approx([0.01, 0.002])
    assert z.flatten().tolist() == [128.0, 128.0]
    q = quantize_affine(w, s, z, 8, True)
    assert q.tolist() == [[1.0, 178.0], [128.0, 255.0]]
    s, z = choose_qparams(torch.tensor([-1.0, 0.0, 2.0]), 8, symmetric=False, axis=None)
    assert s.item() == pytest.approx(3 / 255) and z.item() == 85.0
    zero = dequantize_affine(quantize_affine(torch.tensor([0.0]), s, z, 8, False), s, z)
    assert zero.item() == 0.0  # zero is exact, so pruned weights stay pruned


def test_admm_projection_alternates_alpha_and_q():
    v = torch.tensor([1.0, 2.1, -3.9, 0.2])
    g, a = admm_project(v, level_set("pow2"))
    q = nearest_level(v / a, level_set("pow2"))
    assert a == pytest.approx(float((v * q).sum() / (q * q).sum()), rel=1e-6)
    assert (g / a).tolist() == pytest.approx([1.0, 2.0, -4.0, 0.0])
    assert level_set("int5").tolist() == [-2, -1, 0, 1, 2]


def test_dorefa_weight_levels_and_activation():
    w = torch.tensor([2.0, -2.0, 0.0])
    q = dorefa_weight(w, 2)  # tanh-normalised to [0, 1]: 1, 0, 0.5 -> round(3r)/3
    assert q.tolist() == pytest.approx([1.0, -1.0, 1 / 3])
    assert dorefa_weight(w, 2, scale=0.5).tolist() == pytest.approx([0.5, -0.5, 1 / 6])
    assert dorefa_activation(torch.tensor([-0.5, 0.4, 0.6, 2.0]), 1).tolist() == [
        0.0,
        0.0,
        1.0,
        1.0,
    ]


def test_linear_and_log_activation_quant():
    x = torch.tensor([0.12, 0.5, 9.0, -1.0])
    assert linear_activation(x, 0.25, 0.0, 2.0).tolist() == [0.0, 0.5, 2.0, 0.0]
    y = log_activation(torch.tensor([3.0, -0.7, 100.0, 0.001]), -4, 3)
    assert y.tolist() == [4.0, -0.5, 8.0, 0.0]
    assert math.log2(abs(y[1].item())) == -1
