"""L1-L5 low-rank decomposition: exactness at full rank, cost formulas, rank rules,
input validation and the save/load round trip of a decomposed model."""

import pytest
import torch
from torch import nn

import nncompress
from nncompress.decompose import (
    LowRankConfig,
    apply_lowrank_spec,
    btd_factors,
    cp_als,
    cp_reconstruct,
    decompose,
    lowrank_spec,
    separable_factors,
    svd_factors,
    tucker2_factors,
    tucker2_reconstruct,
)
from nncompress.decompose.common import count_macs, rank_for_energy
from nncompress.decompose.tucker import tucker2_ratio_ranks
from nncompress.errors import ConfigError, FormatError
from nncompress.models import build_model


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, stride=2)
        self.grouped = nn.Conv2d(6, 6, 3, padding=1, groups=2)
        self.fc = nn.Linear(6 * 4 * 4, 10)
        self.act = nn.ReLU()

    def forward(self, x):
        x = self.grouped(self.act(self.conv(x)))  # (B, 6, 4, 4)
        return self.fc(x.flatten(1))


def _pair(layer_cfg, layer=None, x=None):
    torch.manual_seed(0)
    layer = layer or nn.Conv2d(4, 6, 3, padding=1, stride=2, dilation=1)
    holder = nn.Sequential(layer)
    ref = holder(x).detach()
    decompose(holder, {"0": layer_cfg})
    return ref, holder(x).detach(), holder


def test_full_rank_svd_reproduces_linear():
    x = torch.randn(5, 8)
    ref, out, holder = _pair({"method": "svd", "rank": 6}, nn.Linear(8, 6), x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert isinstance(holder[0], nn.Sequential) and holder[0][0].bias is None


def test_svd_parameter_formula_and_eckart_young():
    m, n, k = 12, 9, 4
    ref, out, holder = _pair({"method": "svd", "rank": k}, nn.Linear(n, m), torch.randn(3, n))
    assert sum(p.numel() for p in holder.parameters()) == k * (m + n) + m
    w = torch.randn(m, n, dtype=torch.float64)
    a, b = svd_factors(w, k)
    s = torch.linalg.svdvals(w)
    # error of the best rank-k approximation is the energy of the dropped singular values
    assert torch.allclose(torch.linalg.norm(w - a @ b) ** 2, (s[k:] ** 2).sum())


def test_energy_rule_picks_smallest_rank():
    s = torch.tensor([1.0, 3.0, 2.0])  # energies 9/14, 13/14, 14/14 after sorting
    assert rank_for_energy(s, 0.64) == 1
    assert rank_for_energy(s, 0.65) == 2
    assert rank_for_energy(s, 13 / 14) == 2
    assert rank_for_energy(s, 0.93) == 3
    assert rank_for_energy(s, 1.0) == 3
    u, _ = torch.linalg.qr(torch.randn(6, 6))
    v, _ = torch.linalg.qr(torch.randn(5, 5))
    w = u[:, :5] @ torch.diag(torch.tensor([5.0, 4.0, 1.0, 0.1, 0.1])) @ v.T
    layer = nn.Linear(5, 6)
    layer.weight.data = w
    model = nn.Sequential(layer)
    _, rep = decompose(model, {"0": {"method": "svd", "energy": 0.98}})
    assert rep.layers[0].ranks == [3]  # (25+16)/42.02 < 0.98 <= 42/42.02


def test_rank1_separable_kernel_is_exact():
    g = torch.Generator().manual_seed(3)
    # W[o, c, i, j] = a[c, i] * b[o, j]: the (C kh, O kw) matrix has rank 1
    a, b = torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g)
    conv = nn.Conv2d(4, 6, 3, padding=1)
    conv.weight.data = torch.einsum("ci,oj->ocij", a, b)
    x = torch.randn(2, 4, 9, 9, generator=g)
    ref, out, holder = _pair({"method": "separable", "rank": 1}, conv, x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert holder[0][0].kernel_size == (3, 1) and holder[0][1].kernel_size == (1, 3)
    # a generic kernel is not rank 1: the same construction is then an approximation
    v, h = separable_factors(torch.randn(6, 4, 3, 3, generator=g), 1)
    assert v.shape == (1, 4, 3, 1) and h.shape == (6, 1, 1, 3)


def test_full_rank_separable_and_tucker_reproduce_conv():
    x = torch.randn(2, 4, 9, 9)
    ref, out, _ = _pair({"method": "separable", "rank": 12}, None, x)  # min(4*3, 6*3)
    assert torch.allclose(out, ref, atol=1e-5)
    ref, out, holder = _pair({"method": "tucker2", "rank": (6, 4)}, None, x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert [m.kernel_size for m in holder[0]] == [(1, 1), (3, 3), (1, 1)]
    assert holder[0][1].stride == (2, 2)


def test_tucker_factors_orthonormal_and_low_rank_exact():
    g = torch.Generator().manual_seed(4)
    core = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64)
    uo, _ = torch.linalg.qr(torch.randn(7, 2, generator=g, dtype=torch.float64))
    ui, _ = torch.linalg.qr(torch.randn(5, 3, generator=g, dtype=torch.float64))
    w = tucker2_reconstruct(core, uo, ui)
    c2, uo2, ui2 = tucker2_factors(w, 2, 3)
    assert torch.allclose(uo2.T @ uo2, torch.eye(2, dtype=torch.float64), atol=1e-10)
    assert torch.allclose(tucker2_reconstruct(c2, uo2, ui2), w, atol=1e-10)
    r4, r3 = tucker2_ratio_ranks({"in": 20, "out": 50, "kernel": [5, 5]}, 0.25)
    params = 20 * r3 + r3 * r4 * 25 + r4 * 50
    assert abs(params / 25000 - 0.25) < 0.03


def test_cp_als_recovers_synthetic_cp_tensor():
    g = torch.Generator().manual_seed(5)
    factors = [torch.randn(d, 3, generator=g, dtype=torch.float64) for d in (6, 5, 3, 3)]
    x = cp_reconstruct(factors)
    est, err = cp_als(x, 3)
    assert err < 1e-5
    assert torch.linalg.norm(cp_reconstruct(est) - x) / torch.linalg.norm(x) < 1e-5
    _, err1 = cp_als(x, 1)
    assert err1 > 0.05  # rank 1 cannot represent it


def test_cp_conv_layers_match_cp_kernel():
    g = torch.Generator().manual_seed(6)
    factors = [torch.randn(d, 2, generator=g) for d in (6, 4, 3, 3)]
    conv = nn.Conv2d(4, 6, 3, padding=1, stride=2)
    conv.weight.data = cp_reconstruct(factors)
    x = torch.randn(2, 4, 9, 9, generator=g)
    ref, out, holder = _pair({"method": "cp", "rank": 2}, conv, x)
    assert torch.allclose(out, ref, atol=1e-3 * ref.abs().max())
    assert [m.groups for m in holder[0]] == [1, 2, 2, 1]
    assert sum(p.numel() for p in holder.parameters()) == 2 * (4 + 3 + 3 + 6) + 6


def test_btd_shapes_groups_and_exact_block_sum():
    x = torch.randn(2, 4, 9, 9)
    ref, out, holder = _pair({"method": "btd", "rank": (2, 1), "groups": 2}, None, x)
    seq = holder[0]
    assert out.shape == ref.shape
    assert seq[1].groups == 2 and seq[1].weight.shape == (4, 1, 3, 3)
    assert seq[0].out_channels == 2 and seq[2].in_channels == 4
    assert sum(p.numel() for p in seq.parameters()) == 4 * 2 + 2 * (2 * 1 * 9) + 4 * 6 + 6
    # two blocks on disjoint channel sets (one stronger) are recovered exactly
    g = torch.Generator().manual_seed(7)
    w = torch.zeros(6, 4, 3, 3, dtype=torch.float64)
    w[:3, :2] = 5 * torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    w[3:, 2:] = torch.randn(3, 2, 3, 3, generator=g, dtype=torch.float64)
    blocks = btd_factors(w, 3, 2, groups=2)
    recon = sum(tucker2_reconstruct(*b) for b in blocks)
    assert torch.allclose(recon, w, atol=1e-8)
    single = tucker2_reconstruct(*tucker2_factors(w, 3, 2))
    assert torch.linalg.norm(single - w) > 1.0


def test_report_counts_params_and_macs():
    model = build_model("lenet5")
    _, rep = decompose(model, {"conv2": {"method": "tucker2", "rank": (8, 4)}},
                       example_input=torch.zeros(1, 1, 28, 28))
    r = rep.layers[0]
    assert r.params_before == 50 * 20 * 25 + 50
    assert r.params_after == 20 * 4 + 4 * 8 * 25 + 8 * 50 + 50
    assert r.macs_before == 50 * 20 * 25 * 8 * 8
    assert r.macs_after == (20 * 4 * 12 * 12 + 4 * 8 * 25 * 8 * 8 + 8 * 50 * 8 * 8)
    assert count_macs(nn.Linear(4, 3), (2, 4)) == 24


@pytest.mark.parametrize("spec, match", [
    ({"fc": {"method": "svd", "rank": 0}}, "0"),
    ({"fc": {"method": "svd", "rank": 11}}, "11"),
    ({"conv": {"method": "tucker2", "rank": (7, 2)}}, "7"),
    ({"fc": {"method": "svd", "energy": 1.5}}, "1.5"),
    ({"fc": {"method": "svd", "energy": 0.0}}, "0.0"),
    ({"fc": {"method": "svd", "ratio": -0.1}}, "-0.1"),
    ({"act": {"method": "svd", "rank": 1}}, "ReLU"),
    ({"grouped": {"method": "tucker2", "rank": 1}}, "groups=2"),
    ({"nothere*": {"method": "svd", "rank": 1}}, "nothere"),
    ({"fc": {"method": "tucker2", "rank": 1}}, "Conv2d"),
    ({"conv": {"method": "svd", "rank": 1}}, "Linear"),
    ({"fc": {"method": "pca", "rank": 1}}, "pca"),
    ({"fc": {"method": "svd"}}, "exactly one"),
    ({"fc": {"method": "svd", "rank": 2, "bogus": 1}}, "bogus"),
    ({"conv": {"method": "cp", "energy": 0.9}}, "energy"),
    ({"conv": {"method": "btd", "rank": 1, "groups": 0}}, "groups"),
    ({"conv": {"method": "tucker2", "rank": 1}, "fc": {"method": "svd", "rank": 99}}, "99"),
])
def test_bad_inputs_raise_config_error(spec, match):
    model = Net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=match):
        decompose(model, spec)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_glob_selects_all_matching_layers():
    model = build_model("lenet5")
    _, rep = decompose(model, {"fc*": LowRankConfig("svd", ratio=0.5)})
    assert [r.name for r in rep.layers] == ["fc1", "fc2"]
    assert rep.params_after < rep.params_before


def test_decomposed_lenet5_save_load_bit_identical(tmp_path):
    model = build_model("lenet5").eval()
    decompose(model, {"fc1": {"method": "svd", "rank": 20},
                      "conv2": {"method": "btd", "rank": (4, 3), "groups": 2},
                      "conv1": {"method": "separable", "rank": 3}})
    path = tmp_path / "lr.nnc"
    nncompress.save(model, path)
    loaded = nncompress.load(path)
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert loaded.conv2[1].groups == 2
    assert nncompress.read_info(path).lowrank["fc1"]["ranks"] == [20]
    # a plain model's file has no record and loads as before
    plain = build_model("lenet5").eval()
    nncompress.save(plain, tmp_path / "p.nnc")
    assert not nncompress.read_info(tmp_path / "p.nnc").lowrank
    assert torch.equal(nncompress.load(tmp_path / "p.nnc")(x), plain(x))


def test_damaged_lowrank_record_is_rejected(tmp_path):
    model, _ = decompose(build_model("lenet5"), {"fc1": {"method": "svd", "rank": 4}})
    record = {"fc1": {**lowrank_spec(model)["fc1"], "ranks": [10**9]}}
    with pytest.raises(ConfigError, match="1000000000"):
        apply_lowrank_spec(build_model("lenet5"), record, max_dim=800)
    with pytest.raises(ConfigError, match="damaged"):
        apply_lowrank_spec(build_model("lenet5"), {"fc1": {"method": "svd"}})
    from nncompress.state import model_state

    model_state(model).lowrank = {"fc1": {**lowrank_spec(model)["fc1"], "method": "cp"}}
    nncompress.save(model, tmp_path / "bad.nnc")  # record disagrees with the layer it names
    with pytest.raises(FormatError, match="bad.nnc"):
        nncompress.load(tmp_path / "bad.nnc")


def test_decompose_config_equals_its_layers_mapping():
    from nncompress.decompose import DecomposeConfig

    a, b = Net(), Net()
    b.load_state_dict(a.state_dict())
    spec = {"conv": {"method": "tucker2", "rank": [3, 2]}, "f*": {"method": "svd", "rank": 4}}
    _, rep_a = decompose(a, spec)
    _, rep_b = decompose(b, DecomposeConfig(spec))
    assert rep_a.as_dict() == rep_b.as_dict()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(ConfigError, match="'layers' must map at least one layer"):
        DecomposeConfig({})
    with pytest.raises(ConfigError, match=r"layers\.fc: rank=0 out of range"):
        DecomposeConfig({"fc": {"method": "svd", "rank": 0}})
