"""HashedNets (Q13): deterministic hash, bucket gradients, parameter count, init, errors."""

import pytest
import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.quantize.hashed import (
    HashedConv2d,
    HashedLinear,
    hash_index,
    hash_sign,
    hashed_from_linear,
)
from nncompress.quantize.hashed_arch import hash_model


def test_hash_deterministic_and_seed_dependent():
    a, b = hash_index(1000, 37, seed=3), hash_index(1000, 37, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, hash_index(1000, 37, seed=4))
    assert torch.equal(hash_sign(1000, 3), hash_sign(1000, 3))
    assert not torch.equal(hash_sign(1000, 3), hash_sign(1000, 4))
    # spread: every bucket is used and none holds more than 3x its share
    counts = torch.bincount(a, minlength=37)
    assert int(counts.min()) > 0 and int(counts.max()) < 3 * 1000 / 37
    # two layers with the same seed share the index: the layer buffers come from the hash
    la, lb = HashedLinear(10, 7, 9, seed=5), HashedLinear(10, 7, 9, seed=5)
    assert torch.equal(la.index, lb.index) and torch.equal(la.sign, lb.sign)


def test_bucket_gradient_is_signed_sum_over_positions():
    layer = HashedLinear(3, 2, buckets=4, seed=1, sign_hash=True, bias=False)
    x = torch.randn(5, 3)
    g_out = torch.randn(5, 2)
    layer(x).backward(g_out)
    # dL/dV = g_out^T x  (2 x 3); dL/dw_k = sum_{p: h(p)=k} xi(p) dL/dV_p, by hand
    g_v = (g_out.T @ x).reshape(-1).tolist()
    idx, sign = layer.index.tolist(), layer.sign.tolist()
    expected = [0.0] * 4
    for p in range(6):
        expected[idx[p]] += sign[p] * g_v[p]
    assert torch.allclose(layer.weight.grad, torch.tensor(expected), atol=1e-5)
    assert set(sign) <= {-1.0, 1.0}


def test_virtual_weight_is_indexed_buckets():
    layer = HashedLinear(4, 3, buckets=5, seed=2)
    v = layer.virtual_weight()
    assert v.shape == (3, 4)
    assert torch.equal(v.reshape(-1), layer.weight.detach()[layer.index] * layer.sign)
    x = torch.randn(2, 4)
    assert torch.allclose(layer(x), x @ v.T + layer.bias, atol=1e-6)


def test_parameter_count_and_state_dict():
    layer = HashedLinear(100, 30, buckets=50, seed=0)
    assert sum(p.numel() for p in layer.parameters()) == 50 + 30
    assert set(layer.state_dict()) == {"weight", "bias", "hash_seed"}  # no index stored
    assert layer.compression() == 3000 / 50
    nobias = HashedLinear(100, 30, buckets=50, bias=False)
    assert sum(p.numel() for p in nobias.parameters()) == 50
    conv = HashedConv2d(3, 4, 3, buckets=10)
    assert sum(p.numel() for p in conv.parameters()) == 10 + 4


def test_bucket_average_reproduces_constant_per_bucket_layer():
    src = HashedLinear(12, 6, buckets=7, seed=9)
    dense = nn.Linear(12, 6)
    with torch.no_grad():
        dense.weight.copy_(src.virtual_weight())
    h = hashed_from_linear(dense, buckets=7, seed=9)
    assert torch.allclose(h.weight, src.weight, atol=1e-6)
    x = torch.randn(3, 12)
    assert torch.allclose(h(x), dense(x), atol=1e-5)
    # a different seed cannot reproduce it
    other = hashed_from_linear(dense, buckets=7, seed=10)
    assert not torch.allclose(other(x), dense(x), atol=1e-3)


def test_hash_model_replaces_linears():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x = torch.randn(4, 1, 8, 8)
    hash_model(model, ratio=1 / 8, seed=0)
    assert isinstance(model[1], HashedLinear) and isinstance(model[3], HashedLinear)
    assert model[1].buckets == 256 and model[3].buckets == 40
    assert model[1].seed != model[3].seed
    assert model(x).shape == (4, 10)
    m2 = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    hash_model(m2, buckets={"2": 5})
    assert type(m2[0]) is nn.Linear and m2[2].buckets == 5


@pytest.mark.parametrize("buckets", [0, -1, 3 * 4 + 1, 2.5])
def test_bad_buckets(buckets):
    with pytest.raises(ConfigError, match="buckets"):
        HashedLinear(3, 4, buckets=buckets)


def test_bad_hash_model_args():
    model = nn.Sequential(nn.Linear(4, 4))
    with pytest.raises(ConfigError, match="ratio"):
        hash_model(model, ratio=0.0)
    with pytest.raises(ConfigError, match="unknown"):
        hash_model(model, buckets={"fc9": 3})
    with pytest.raises(ConfigError):
        hash_model(model)


def test_trains_on_tiny_problem():
    torch.manual_seed(0)
    x = torch.randn(128, 10)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(HashedLinear(10, 16, 20, seed=0), nn.ReLU(), HashedLinear(16, 2, 8, seed=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    first = None
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.6 * first


def test_save_stores_buckets_and_seed_and_loads_into_skeleton(tmp_path):
    import nncompress
    from nncompress.models import build_model

    model = hash_model(build_model("lenet300"), ratio=1 / 8, seed=3)
    info = nncompress.save(model, tmp_path / "h.nnc")
    names = {t.name for t in info.tensors}
    assert names == {f"fc{i}.{k}" for i in (1, 2, 3) for k in ("weight", "bias", "hash_seed")}
    skeleton = hash_model(build_model("lenet300"), ratio=1 / 8, seed=0)  # seed comes from the file
    back = nncompress.load(tmp_path / "h.nnc", model=skeleton)
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(back(x), model(x))
    assert info.file_bytes < 4 * 266_200 / 6  # buckets only: ~1/8 of the dense fp32 bytes


def test_plain_load_of_a_hashed_file_names_the_mismatch(tmp_path):
    import nncompress
    from nncompress.errors import FormatError
    from nncompress.models import build_model

    nncompress.save(hash_model(build_model("lenet300"), ratio=1 / 8), tmp_path / "h.nnc")
    with pytest.raises(FormatError, match=r"unexpected \['fc1.hash_seed'.*hash_model"):
        nncompress.load(tmp_path / "h.nnc", model=build_model("lenet300"))  # a skeleton without hashed layers


def test_accounting_counts_the_virtual_weights_and_their_macs():
    from nncompress.analysis.accounting import layer_stats, totals
    from nncompress.quantize.hashed import HashedConv2d

    model = nn.Sequential(HashedConv2d(1, 4, 3, buckets=10, padding=1), nn.Flatten(),
                          HashedLinear(4 * 28 * 28, 10, buckets=50))
    rows = layer_stats(model, torch.zeros(1, 1, 28, 28))
    assert [r.kind for r in rows] == ["HashedConv2d", "HashedLinear"]
    assert [r.weights for r in rows] == [4 * 9, 10 * 4 * 28 * 28]  # virtual, not the buckets
    assert [r.macs for r in rows] == [4 * 28 * 28 * 9, 10 * 4 * 28 * 28]
    assert totals(rows)["nonzeros"] == sum(int((m.virtual_weight() != 0).sum()) for m in (model[0], model[2]))


def test_hashed_builtin_model_loads_without_a_skeleton(tmp_path):
    import nncompress
    from nncompress.models import build_model

    model = hash_model(build_model("lenet300"), ratio=1 / 16, seed=3).eval()
    nncompress.save(model, tmp_path / "h.nnc")
    loaded = nncompress.load(tmp_path / "h.nnc").eval()
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert isinstance(loaded.fc1, HashedLinear) and loaded.fc1.buckets == model.fc1.buckets
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
