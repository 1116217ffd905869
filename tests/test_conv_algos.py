"""E2 convolution algorithms equal F.conv2d; Winograd transforms and memory formulas."""

import pytest
import torch
from torch.nn import functional as F

from nncompress.errors import ConfigError
from nncompress.kernels import (
    conv2d_fft,
    conv2d_im2col,
    conv2d_mec,
    conv2d_winograd,
    im2col_memory,
    mec_memory,
    winograd_f23_matrices,
)

GENERAL = [conv2d_im2col, conv2d_fft, conv2d_mec]  # any kernel size and stride
# (N, C, H, W), (OC, KH, KW), stride, padding
CASES = [
    ((2, 3, 9, 9), (4, 3, 3), 1, 0),
    ((3, 2, 11, 7), (5, 3, 3), 1, 1),  # odd, non-square
    ((2, 4, 13, 10), (3, 5, 5), 1, 2),
    ((2, 3, 12, 9), (6, 3, 3), 2, 1),
    ((1, 2, 10, 11), (2, 5, 3), (2, 3), (1, 0)),  # rectangular kernel, per-axis stride/padding
    ((2, 1, 5, 5), (3, 5, 5), 1, 0),  # 1x1 output
]


def _data(shape, oc_k, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g)
    w = torch.randn(oc_k[0], shape[1], oc_k[1], oc_k[2], generator=g) * 0.3
    b = torch.randn(oc_k[0], generator=g)
    return x, w, b


@pytest.mark.parametrize("algo", GENERAL, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape,oc_k,stride,padding", CASES)
def test_general_algorithms_match_conv2d(algo, shape, oc_k, stride, padding):
    x, w, b = _data(shape, oc_k)
    for bias in (None, b):
        ref = F.conv2d(x, w, bias, stride=stride, padding=padding)
        out = algo(x, w, bias, stride=stride, padding=padding)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape,padding", [((2, 3, 9, 9), 1), ((3, 4, 8, 8), 0),
                                           ((1, 2, 7, 10), 1), ((2, 5, 6, 5), 2),
                                           ((2, 3, 3, 3), 0), ((1, 2, 12, 11), (0, 1))])
def test_winograd_matches_conv2d(shape, padding):
    x, w, b = _data(shape, (6, 3, 3))
    for bias in (None, b):
        ref = F.conv2d(x, w, bias, padding=padding)
        out = conv2d_winograd(x, w, bias, padding=padding)
        assert out.shape == ref.shape
        torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)


def test_algorithms_exact_in_float64():
    x, w, b = _data((2, 3, 10, 9), (4, 3, 3))
    x, w, b = x.double(), w.double(), b.double()
    ref = F.conv2d(x, w, b, padding=1)
    for algo in (*GENERAL, conv2d_winograd):
        out = algo(x, w, b, padding=1)
        assert out.dtype == torch.float64
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_winograd_1d_f23_by_hand():
    bt, g, at = winograd_f23_matrices(torch.float64)
    d = torch.tensor([3.0, -1.0, 2.0, 5.0], dtype=torch.float64)
    k = torch.tensor([2.0, 0.5, -1.0], dtype=torch.float64)
    m = (g @ k) * (bt @ d)  # 4 multiplications
    # y0 = d0 k0 + d1 k1 + d2 k2 = 6 - 0.5 - 2; y1 = d1 k0 + d2 k1 + d3 k2 = -2 + 1 - 5
    assert (at @ m).tolist() == [3.5, -6.0]
    assert bt.shape == (4, 4) and g.shape == (4, 3) and at.shape == (2, 4)


def test_winograd_2d_single_tile_by_formula():
    bt, g, at = winograd_f23_matrices(torch.float64)
    d = torch.arange(16, dtype=torch.float64).view(4, 4)
    k = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=torch.float64)  # Sobel
    y = at @ ((g @ k @ g.T) * (bt @ d @ bt.T)) @ at.T
    ref = F.conv2d(d.view(1, 1, 4, 4), k.view(1, 1, 3, 3))[0, 0]
    torch.testing.assert_close(y, ref)
    assert y.tolist() == [[-8.0, -8.0], [-8.0, -8.0]]  # each row rises by 1 per column


def test_memory_formulas_by_hand():
    # 1 image, 2 channels, 6x6, 3x3 kernel, padding 1 -> 6x6 output, padded 8x8
    im = im2col_memory((1, 2, 6, 6), (4, 2, 3, 3), padding=1)
    mec = mec_memory((1, 2, 6, 6), (4, 2, 3, 3), padding=1)
    assert im == 6 * 6 * 3 * 3 * 2  # 648: OH*OW rows of KH*KW*C
    assert mec == 6 * 8 * 3 * 2  # 288: OW strips of IH*KW*C
    # stride 2: OH = OW = 3, rows reached (3-1)*2+3 = 7 of the padded 8
    assert im2col_memory((5, 2, 6, 6), (4, 2, 3, 3), stride=2, padding=1) == 5 * 9 * 18
    assert mec_memory((5, 2, 6, 6), (4, 2, 3, 3), stride=2, padding=1) == 5 * 3 * 7 * 3 * 2


def test_mec_lowering_size_matches_formula():
    """The lowered matrix MEC builds has exactly mec_memory elements (checked by recomputing
    it the way conv2d_mec does)."""
    x = torch.randn(2, 3, 9, 8)
    xp = F.pad(x, (1, 1, 1, 1))
    low = xp.unfold(3, 3, 1).permute(0, 3, 2, 4, 1).reshape(2, 8, -1)
    assert low.numel() == mec_memory(x.shape, (4, 3, 3, 3), padding=1)
    assert low.numel() < im2col_memory(x.shape, (4, 3, 3, 3), padding=1)


@pytest.mark.parametrize("algo", [*GENERAL, conv2d_winograd], ids=lambda f: f.__name__)
def test_bad_inputs_raise(algo):
    x, w = torch.randn(1, 2, 8, 8), torch.randn(3, 2, 3, 3)
    with pytest.raises(ConfigError, match="groups"):
        algo(x, w, groups=2)
    with pytest.raises(ConfigError, match="dilation"):
        algo(x, w, dilation=2)
    with pytest.raises(ConfigError, match="channels"):
        algo(torch.randn(1, 3, 8, 8), w)
    with pytest.raises(ConfigError, match="bias"):
        algo(x, w, torch.randn(4))
    with pytest.raises(ConfigError, match="padding"):
        algo(x, w, padding=-1)
    with pytest.raises(ConfigError, match="padding"):
        algo(x, w, padding="same")
    with pytest.raises(ConfigError, match="smaller than"):
        algo(torch.randn(1, 2, 2, 2), w)
    with pytest.raises(ConfigError, match="shape"):
        algo(torch.randn(2, 8, 8), w)


def test_winograd_rejects_unsupported():
    x = torch.randn(1, 2, 8, 8)
    with pytest.raises(ConfigError, match="3x3"):
        conv2d_winograd(x, torch.randn(3, 2, 5, 5))
    with pytest.raises(ConfigError, match="stride 1"):
        conv2d_winograd(x, torch.randn(3, 2, 3, 3), stride=2)
    with pytest.raises(ConfigError, match="stride"):
        conv2d_im2col(x, torch.randn(3, 2, 3, 3), stride=0)
