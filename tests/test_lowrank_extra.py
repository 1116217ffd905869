"""L6 Tensor-Train, L7 Toeplitz/circulant, L8 ternary decomposition: defining properties
and file round trips."""

import pytest
import torch
from torch import nn

import nncompress
from nncompress.decompose.ternary import (
    TernaryDecompConfig,
    TernaryFactorized,
    best_ternary,
    fixed_point,
    ternary_decompose,
    ternary_decompose_matrix,
)
from nncompress.decompose.toeplitz import (
    StructuredConfig,
    StructuredLinear,
    structure_layers,
    structured_dense,
    structured_matmul,
    toeplitz_projection,
)
from nncompress.decompose.tt import TTConfig, TTLinear, factor_modes, tt_decompose, tt_from_linear
from nncompress.errors import ConfigError
from nncompress.models import build_model


def test_factor_modes_multiply_back():
    for n, d in [(784, 3), (300, 3), (100, 2), (97, 2), (500, 4)]:
        modes = factor_modes(n, d)
        assert len(modes) == d and torch.tensor(modes).prod().item() == n


def test_tt_at_full_rank_reconstructs_the_matrix_and_counts_params_by_formula():
    torch.manual_seed(0)
    layer = nn.Linear(24, 12)
    tt = tt_from_linear(layer, [2, 3, 4], [3, 2, 2], rank=10_000)
    torch.testing.assert_close(tt.dense_weight(), layer.weight.detach(), atol=1e-5, rtol=1e-5)
    r = tt.ranks
    assert r[0] == r[-1] == 1
    assert tt.num_tt_params() == sum(r[k] * n * m * r[k + 1] for k, (n, m) in enumerate(zip([2, 3, 4], [3, 2, 2])))
    assert sum(p.numel() for p in tt.cores) == tt.num_tt_params()
    x = torch.randn(3, 24)
    torch.testing.assert_close(tt(x), layer(x), atol=1e-5, rtol=1e-5)


def test_tt_low_rank_caps_ranks():
    rep = tt_decompose(nn.Sequential(nn.Linear(784, 300)), TTConfig(cores=3, rank=4))
    assert max(rep["0"]["ranks"]) <= 4 and rep["0"]["params_after"] < rep["0"]["params_before"] / 100


def test_toeplitz_fft_product_equals_dense_product():
    torch.manual_seed(0)
    for kind, n_in, n_out in [("toeplitz", 7, 4), ("toeplitz", 3, 9), ("circulant", 6, 6), ("circulant", 5, 8),
                              ("circulant", 8, 3)]:
        layer = StructuredLinear(n_in, n_out, kind)
        with torch.no_grad():
            layer.vector.normal_()
            layer.bias.normal_()
        x = torch.randn(4, n_in)
        torch.testing.assert_close(layer(x), x @ layer.dense_weight().T + layer.bias, atol=1e-5, rtol=1e-5)


def test_toeplitz_matrix_is_constant_on_diagonals_and_projection_is_exact_on_one():
    t = structured_dense(torch.randn(8), "toeplitz", 5, 4)
    assert all(t[i, j] == t[i + 1, j + 1] for i in range(3) for j in range(4))
    torch.testing.assert_close(structured_dense(toeplitz_projection(t, "toeplitz"), "toeplitz", 5, 4), t)
    x = torch.randn(2, 5)
    torch.testing.assert_close(structured_matmul(x, toeplitz_projection(t, "toeplitz"), "toeplitz", 4), x @ t.T,
                               atol=1e-5, rtol=1e-5)


def test_ternary_factors_take_only_three_values_and_scales_are_fixed_point():
    torch.manual_seed(0)
    w = torch.randn(12, 20)
    a, s, b = ternary_decompose_matrix(w, 24, scale_bits=8)
    assert set(a.unique().tolist()) <= {-1.0, 0.0, 1.0} and set(b.unique().tolist()) <= {-1.0, 0.0, 1.0}
    codes, exp = fixed_point(s, 8)
    assert torch.equal(codes * 2.0**exp, s) and codes.abs().max() <= 127
    err = ((a * s) @ b - w).norm() / w.norm()
    a4, s4, b4 = ternary_decompose_matrix(w, 4)
    assert err < ((a4 * s4) @ b4 - w).norm() / w.norm() < 1


def test_best_ternary_is_optimal_by_enumeration():
    import itertools
    u = torch.tensor([0.9, -0.5, 0.2, 0.05])
    best = max((torch.tensor(t, dtype=torch.float32) for t in itertools.product([-1, 0, 1], repeat=4) if any(t)),
               key=lambda t: float(u @ t / t.norm()))
    assert torch.equal(best_ternary(u), best)


def test_ternary_conv_pipeline_equals_dense_convolution():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1, stride=2))
    ternary_decompose(m, TernaryDecompConfig(rank_ratio=1.0))
    layer = m[0]
    assert isinstance(layer, TernaryFactorized)
    x = torch.randn(2, 3, 9, 9)
    ref = torch.nn.functional.conv2d(x, layer.dense_weight(), layer.bias, 2, 1)
    torch.testing.assert_close(layer(x), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("apply", [
    lambda m: tt_decompose(m, TTConfig(cores=2, rank=6, include=["fc1", "fc2"])),
    lambda m: structure_layers(m, StructuredConfig(kind="toeplitz", include=["fc1"])),
    lambda m: structure_layers(m, StructuredConfig(kind="circulant", include=["fc2"])),
    lambda m: ternary_decompose(m, TernaryDecompConfig(rank_ratio=0.25)),
])
def test_file_reproduces_the_model(apply, tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    apply(model)
    nncompress.save(model, tmp_path / "m.nnc")
    loaded = nncompress.load(tmp_path / "m.nnc")
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert [type(m).__name__ for m in loaded.modules()] == [type(m).__name__ for m in model.modules()]


def test_ternary_factors_are_stored_in_two_bits_or_less(tmp_path):
    model = build_model("lenet300")
    ternary_decompose(model, TernaryDecompConfig(rank_ratio=0.5, include=["fc1"]))
    info = nncompress.save(model, tmp_path / "t.nnc")
    sizes = {t.name: t.nbytes for t in info.tensors}
    assert sizes["fc1.b"] <= model.fc1.b.numel() * 2 / 8 + 64


def test_refusals_name_the_value():
    with pytest.raises(ConfigError, match="rank must be an integer"):
        TTConfig(rank=0)
    with pytest.raises(ConfigError, match="kind"):
        StructuredConfig(kind="hankel")
    with pytest.raises(ConfigError, match="rank_ratio=0 out of range"):
        TernaryDecompConfig(rank_ratio=0)
    with pytest.raises(ConfigError, match="ranks"):
        TTLinear([2, 2], [2, 2], [2, 2, 1])


def test_loaded_ternary_factors_must_be_ternary(tmp_path):
    """A file whose ternary factors were edited to other values is refused (FormatError)."""
    import nncompress
    from nncompress.decompose.ternary import TernaryFactorized
    from nncompress.errors import FormatError
    layer = TernaryFactorized(6, 4, 3)
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    state["a"][0, 0] = 7.0
    with pytest.raises(RuntimeError, match="ternary factors"):
        TernaryFactorized(6, 4, 3).load_state_dict(state)
    assert nncompress.FormatError is FormatError
