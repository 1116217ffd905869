"""Q17 product quantization: k-means per subspace, lookup-table inference equal to the
dense product, the file (codes + fp16 codebooks) reproducing the model, method: pq."""

import pytest
import torch
from torch import nn

import nncompress
from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.quantize.pq import (
    PQConfig,
    PQConv2d,
    PQEmbedding,
    PQLinear,
    kmeans_batched,
    pq_encode,
    pq_reconstruct,
    product_quantize,
)
from nncompress.recipes import parse_recipe
from nncompress.recipes.runner import run_recipe


def test_kmeans_batched_finds_separated_clusters_in_every_subspace():
    torch.manual_seed(0)
    centres = torch.tensor([[[0.0, 0.0], [10.0, 10.0]], [[-5.0, 5.0], [5.0, -5.0]]])  # (S=2, 2, 2)
    x = centres.repeat_interleave(20, dim=1) + 0.01 * torch.randn(2, 40, 2)
    c, a = kmeans_batched(x, 2, iters=10)
    for s in range(2):
        got = sorted(map(tuple, c[s].round().tolist()))
        assert got == sorted(map(tuple, centres[s].tolist()))
        assert len(set(a[s, :20].tolist())) == 1 and len(set(a[s, 20:].tolist())) == 1


def test_encode_is_exact_when_k_covers_every_subvector():
    rows = torch.randn(8, 6).half().float()
    codes, books = pq_encode(rows, 3, 8)
    assert torch.equal(pq_reconstruct(codes, books), rows)
    assert codes.shape == (8, 2) and books.shape == (2, 8, 3)


def test_linear_lookup_table_equals_dense_product():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 7))
    product_quantize(m, PQConfig(sub_dim=3, centroids=4))
    layer = m[0]
    assert isinstance(layer, PQLinear)
    x = torch.randn(5, 12)
    torch.testing.assert_close(layer.lookup_forward(x), x @ layer.dense_weight().T + layer.bias)
    assert layer.codes.max() < 4 and torch.equal(layer.codebooks, layer.codebooks.half().float())


@pytest.mark.parametrize("stride,padding,dilation", [(1, 0, 1), (2, 1, 1), (1, 2, 2)])
def test_conv_lookup_table_equals_dense_convolution(stride, padding, dilation):
    torch.manual_seed(1)
    m = nn.Sequential(nn.Conv2d(6, 5, 3, stride=stride, padding=padding, dilation=dilation))
    product_quantize(m, PQConfig(sub_dim=2, centroids=8))
    layer = m[0]
    assert isinstance(layer, PQConv2d)
    x = torch.randn(2, 6, 9, 9)
    torch.testing.assert_close(layer.lookup_forward(x), layer(x), atol=1e-5, rtol=1e-5)


def test_embedding_rows_are_their_codewords():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Embedding(50, 8))
    table = m[0].weight.detach().clone()
    rep = product_quantize(m, PQConfig(sub_dim=4, centroids=16))
    layer = m[0]
    assert isinstance(layer, PQEmbedding)
    ids = torch.tensor([[3, 7, 49]])
    assert torch.equal(layer(ids), layer.dense_weight()[ids])
    assert rep.layers["0"]["relative_error"] < (table - table.mean(0)).norm() / table.norm()


def test_bits_per_weight_formula():
    m = nn.Sequential(nn.Linear(64, 32))
    rep = product_quantize(m, PQConfig(sub_dim=4, centroids=16))
    # codes: 32 rows x 16 subspaces x 4 bits; codebooks 16 x 16 x 4 fp16
    assert rep.layers["0"]["bits_per_weight"] == (32 * 16 * 4 + 16 * 16 * 4 * 16) / (64 * 32)


def test_file_stores_codes_and_fp16_codebooks_and_reloads_exactly(tmp_path):
    torch.manual_seed(0)
    model = build_model("lenet5").eval()
    product_quantize(model, PQConfig(sub_dim=5, centroids=32, exclude=["conv1"]))
    path = tmp_path / "pq.nnc"
    info = nncompress.save(model, path)
    codecs = {t.name: t.codec for t in info.tensors}
    assert codecs["fc1.codes"] == "symbols" and codecs["fc1.codebooks"] == "fp16"
    loaded = nncompress.load(path)
    x = torch.randn(4, 1, 28, 28)
    assert isinstance(loaded.conv2, PQConv2d) and torch.equal(loaded(x), model(x))
    dense_bytes = 4 * sum(p.numel() for p in build_model("lenet5").parameters())
    assert path.stat().st_size < dense_bytes / 8


def test_refusals_name_the_value():
    with pytest.raises(ConfigError, match="centroids must be an integer"):
        PQConfig(centroids=1)
    with pytest.raises(ConfigError, match="sub_dim=3 does not divide conv1's input dimension 1"):
        product_quantize(build_model("lenet5"), PQConfig(sub_dim=3))


def test_damaged_record_is_refused(tmp_path):
    from nncompress.layer_records import restore_layers
    from nncompress.quantize.pq import _from_spec
    with pytest.raises(ConfigError, match="field 'k'"):
        restore_layers(nn.Sequential(nn.Linear(4, 4)), {"0": {"kind": "linear", "in": 4, "out": 4, "sub_dim": 2,
                                                             "k": -1, "bias": True}}, None, _from_spec, "pq")
    with pytest.raises(ConfigError, match="lacks"):
        restore_layers(nn.Sequential(nn.Linear(4, 4)), {"9": {"kind": "linear", "in": 4, "out": 4, "sub_dim": 2,
                                                             "k": 2, "bias": True}}, None, _from_spec, "pq")


def test_method_pq_through_a_recipe(tmp_path):
    raw = {"name": "pq", "model": {"name": "lenet300"}, "data": {"name": "digits", "train_subset": 128},
           "stages": [{"quantize": {"method": "pq", "sub_dim": 4, "centroids": 16,
                                    "finetune": {"epochs": 1, "lr": 0.01, "batch_size": 64}}}]}
    report = run_recipe(parse_recipe(raw), tmp_path / "r.nnc")
    assert set(report["stages"][0]["layers"]) == {"fc1", "fc2", "fc3"}
    loaded = nncompress.load(tmp_path / "r.nnc")
    assert isinstance(loaded.fc1, PQLinear)
    assert torch.equal(loaded.fc1.codebooks, loaded.fc1.codebooks.half().float())
