"""P7 sparse execution: CSR kernels equal the dense layers; the planner swaps exactly the
layers it reports and keeps the model's outputs."""

import pytest
import torch
from torch import nn

import nncompress
from nncompress.errors import ConfigError
from nncompress.prune import magnitude_prune
from nncompress.sparse import (
    SparseConv2d,
    SparseLinear,
    csr_linear,
    interleaved_medians,
    load_sparse,
    num_threads,
    to_csr,
    to_sparse_inference,
)

DC_LENET300 = {"fc1.weight": 0.92, "fc2.weight": 0.91, "fc3.weight": 0.74}


def test_to_csr_stores_only_nonzeros_with_int32_indices():
    w = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 4.0]])
    csr = to_csr(w)
    assert csr.values().tolist() == [2.0, 3.0, 4.0]
    assert csr.crow_indices().tolist() == [0, 1, 3]
    assert csr.col_indices().tolist() == [1, 0, 2]
    assert csr.crow_indices().dtype == torch.int32
    assert torch.equal(csr.to_dense(), w)


@pytest.mark.parametrize("lead", [(1,), (5,), (2, 3)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_csr_linear_matches_hand_computed_product(lead, with_bias):
    w = torch.tensor([[0.0, 2.0, 0.0], [3.0, 0.0, 4.0]])
    b = torch.tensor([10.0, -1.0]) if with_bias else None
    x = torch.arange(float(3 * torch.Size(lead).numel())).reshape(*lead, 3)
    # y0 = 2*x1 (+10), y1 = 3*x0 + 4*x2 (-1)
    expect = torch.stack([2 * x[..., 1], 3 * x[..., 0] + 4 * x[..., 2]], dim=-1)
    if with_bias:
        expect = expect + b
    y = csr_linear(x, to_csr(w), b)
    assert y.shape == (*lead, 2)
    assert torch.allclose(y, expect, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 7])
def test_sparse_linear_equals_pruned_linear(batch):
    lin = nn.Linear(64, 32)
    magnitude_prune(nn.Sequential(lin), sparsity=0.9)
    sp = SparseLinear.from_dense(lin)
    assert sp.nnz == int((lin.weight != 0).sum()) == 64 * 32 - round(0.9 * 64 * 32)
    assert sp.sparsity == pytest.approx(1 - sp.nnz / (64 * 32))
    x = torch.randn(batch, 64)
    assert torch.allclose(sp(x), lin(x), atol=1e-5)
    back = sp.to_dense()
    assert torch.equal(back.weight, lin.weight) and torch.equal(back.bias, lin.bias)


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding=2, dilation=2),
                                dict(bias=False, stride=(1, 2), padding=(1, 0))])
@pytest.mark.parametrize("shape", [(1, 3, 9, 8), (4, 3, 9, 8), (3, 9, 8)])
def test_sparse_conv2d_equals_conv2d(kw, shape):
    conv = nn.Conv2d(3, 6, 3, **kw)
    magnitude_prune(nn.Sequential(conv), sparsity=0.7)
    sp = SparseConv2d.from_dense(conv)
    x = torch.randn(*shape)
    assert torch.allclose(sp(x), conv(x), atol=1e-5)
    assert torch.equal(sp.to_dense().weight, conv.weight)


@pytest.mark.parametrize("conv", [nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(2, 2, 3, padding="same"),
                                  nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")])
def test_sparse_conv2d_rejects_unsupported(conv):
    with pytest.raises(ConfigError):
        SparseConv2d.from_dense(conv)


def test_sparse_mode_replaces_every_pruned_layer_and_keeps_outputs(lenet5):
    magnitude_prune(lenet5, sparsity=0.8)
    x = torch.randn(3, 1, 28, 28)
    fast, report = to_sparse_inference(lenet5, x, mode="sparse", repeats=1, warmup=0)
    assert [r.name for r in report.layers] == ["conv1", "conv2", "fc1", "fc2"]
    assert report.sparse_layers == ["conv1", "conv2", "fc1", "fc2"]
    assert isinstance(fast.conv1, SparseConv2d) and isinstance(fast.fc1, SparseLinear)
    assert isinstance(lenet5.conv1, nn.Conv2d)  # not in place by default
    for r in report.layers:  # reported sparsity is the counted zeros
        w = lenet5.get_submodule(r.name).weight
        assert r.nnz == int((w != 0).sum())
        assert r.sparsity == pytest.approx(float((w == 0).float().mean()))
    with torch.inference_mode():
        assert torch.allclose(fast(x), lenet5(x), atol=1e-5)
    assert report.max_abs_diff is not None and report.max_abs_diff <= 1e-5


@pytest.mark.parametrize("batch", [1, 64])
def test_auto_thresholds_decide_by_measured_speedup(lenet300, batch):
    magnitude_prune(lenet300, sparsity=DC_LENET300)
    x = torch.randn(batch, 1, 28, 28)
    everything, rep_all = to_sparse_inference(lenet300, x, min_speedup=1e-9, repeats=3)
    nothing, rep_none = to_sparse_inference(lenet300, x, min_speedup=1e9, repeats=3)
    assert rep_all.sparse_layers == ["fc1", "fc2", "fc3"]
    assert rep_none.sparse_layers == []
    assert all(type(m) is nn.Linear for m in (nothing.fc1, nothing.fc2, nothing.fc3))
    for r in rep_all.layers:
        assert r.speedup == pytest.approx(r.dense_ms / r.sparse_ms)
    with torch.inference_mode():
        assert torch.allclose(everything(x), lenet300(x), atol=1e-5)


def test_dense_mode_and_unpruned_layers_stay_dense(lenet300):
    magnitude_prune(lenet300, sparsity={"fc1.weight": 0.9})
    x = torch.randn(2, 1, 28, 28)
    out, rep = to_sparse_inference(lenet300, x, mode="dense", repeats=1)
    assert rep.sparse_layers == []
    assert [r.reason for r in rep.layers][1:] == ["not pruned", "not pruned"]
    assert rep.layers[0].reason == "mode=dense" and rep.layers[0].dense_ms > 0
    _, rep = to_sparse_inference(lenet300, x, mode="sparse", repeats=1)
    assert rep.sparse_layers == ["fc1"]


class _Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 3)

    def forward(self, x, scale=1.0):
        return self.head(self.attn(x, x, x)[0] * scale)


def test_only_exact_linear_is_replaced_and_kwargs_inputs_work():
    model = _Attn()
    magnitude_prune(model, sparsity=0.5)  # prunes attn.out_proj (a Linear subclass) too
    x = torch.randn(2, 5, 8)
    out, rep = to_sparse_inference(model, {"x": x, "scale": 2.0}, mode="sparse", repeats=1)
    reasons = {r.name: r.reason for r in rep.layers}
    assert reasons["attn.out_proj"].startswith("unsupported")
    assert rep.sparse_layers == ["head"]
    with torch.inference_mode():
        assert torch.allclose(out(x, scale=2.0), model.eval()(x, scale=2.0), atol=1e-5)


def test_bad_arguments_raise_config_error(lenet300):
    x = torch.randn(1, 1, 28, 28)
    with pytest.raises(ConfigError, match="fast"):
        to_sparse_inference(lenet300, x, mode="fast")
    with pytest.raises(ConfigError):
        to_sparse_inference(lenet300, x, min_speedup=0)
    with pytest.raises(ConfigError):
        to_sparse_inference(lenet300, x, sparse_threads=(0,))
    with pytest.raises(ConfigError):
        interleaved_medians({"a": lambda: None}, repeats=0)


def test_num_threads_is_scoped():
    before = torch.get_num_threads()
    with num_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
    lin = nn.Linear(4, 4)
    sp = SparseLinear.from_dense(lin, threads=2)
    sp(torch.randn(3, 4))
    assert torch.get_num_threads() == before


def test_interleaved_medians_calls_each_function_equally_in_rotated_order():
    calls = []
    fns = {k: (lambda k=k: calls.append(k)) for k in "abc"}
    ms = interleaved_medians(fns, repeats=4, warmup=1)
    assert set(ms) == {"a", "b", "c"} and all(v >= 0 for v in ms.values())
    timed = calls[3:]
    assert timed == list("abc" "bca" "cab" "abc")


def test_load_sparse_runs_a_saved_pruned_model_with_the_same_outputs(lenet300, tmp_path):
    magnitude_prune(lenet300, sparsity=DC_LENET300)
    nncompress.save(lenet300, tmp_path / "m.nnc")
    x = torch.randn(4, 1, 28, 28)
    model, rep = load_sparse(tmp_path / "m.nnc", x, mode="sparse", repeats=1)
    assert rep.sparse_layers == ["fc1", "fc2", "fc3"]
    assert [r.nnz for r in rep.layers] == [int((w != 0).sum()) for w in
                                           (lenet300.fc1.weight, lenet300.fc2.weight, lenet300.fc3.weight)]
    with torch.inference_mode():
        assert torch.allclose(model(x), lenet300.eval()(x), atol=1e-5)
