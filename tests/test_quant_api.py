"""quantize_ / finalize / quantize_model: plain modules, exact packing, loading, zeros,
INQ partitions, ADMM, bad arguments."""

import pytest
import torch
from torch import nn

import nncompress.format as nnc
from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.prune import magnitude_prune
from nncompress.quantize.api import (
    activation_spec,
    apply_activation_spec,
    finalize,
    quant_summary,
    quantize_,
    quantize_model,
)
from nncompress.quantize.inq import INQ, partition_mask
from nncompress.quantize.layers import QuantConv2d, QuantLinear
from nncompress.quantize.methods import METHODS, make_config
from nncompress.train import TrainConfig, fit

FAST = TrainConfig(epochs=1, lr=1e-3, optimizer="adam", batch_size=64, max_steps=2)


class Tiny(nn.Module):
    """conv -> linear -> linear, small enough for every method in well under a second."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=4)
        self.fc1 = nn.Linear(4 * 6 * 6, 16)
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x):
        x = torch.relu(self.conv(x)).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def _expected_pow2_or_levels(method, model):
    w = model.fc1.weight
    if method in ("twn", "ttq"):
        return w.unique().numel() <= 3
    if method in ("bwn", "xnor"):
        return torch.equal(w.abs(), w.abs().amax(dim=1, keepdim=True).expand_as(w))
    if method in ("bnn", "binaryconnect"):
        return set(w.unique().tolist()) <= {-1.0, 1.0}
    if method == "admm":
        return w.unique().numel() <= 3
    if method == "inq":
        nz = w[w != 0].abs()
        return bool((torch.frexp(nz)[0] == 0.5).all()) and w.unique().numel() <= 17
    return True


@pytest.mark.parametrize("method", sorted(METHODS))
def test_packed_then_loaded_equals_finalized_model(method, tiny_data, tmp_path):
    model = Tiny()
    model = quantize_model(
        model, method, train_data=tiny_data, calib_data=tiny_data, train_cfg=FAST
    )
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in (model.conv, model.fc1, model.fc2))
    assert list(model.state_dict()) == list(Tiny().state_dict())  # keys unchanged
    assert _expected_pow2_or_levels(method, model)
    model.eval()
    x = tiny_data.tensors[0][:16]
    out = model(x)
    nnc.save(model, tmp_path / "q.nnc")
    loaded = apply_activation_spec(
        nnc.load(tmp_path / "q.nnc", model=Tiny()), activation_spec(model)
    )
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(loaded(x), out)


def test_finalized_weights_equal_fake_quant_forward(tiny_data):
    model = quantize_(Tiny(), make_config("twn"))
    assert isinstance(model.fc1, QuantLinear) and isinstance(model.conv, QuantConv2d)
    fake = model.fc1.quant_weight().detach().clone()
    x = tiny_data.tensors[0][:8]
    out_fake = model(x).detach()
    finalize(model)
    assert torch.equal(model.fc1.weight, fake)
    assert torch.allclose(model(x), out_fake)


def test_xnor_keeps_first_and_last_layer_float():
    model = build_model("lenet5")
    conv1, fc2 = model.conv1.weight.detach().clone(), model.fc2.weight.detach().clone()
    quantize_(model, make_config("xnor"))
    assert type(model.conv1) is nn.Conv2d and type(model.fc2) is nn.Linear
    assert isinstance(model.conv2, QuantConv2d) and isinstance(model.fc1, QuantLinear)
    finalize(model)
    assert torch.equal(model.conv1.weight, conv1) and torch.equal(model.fc2.weight, fc2)
    assert set(activation_spec(model)) == {"conv2", "fc1"}
    assert quant_summary(model)["fc1"]["bits"] == 1.0


def test_bnn_binarizes_inputs_except_first_layer(tiny_data):
    model = finalize(quantize_(Tiny(), make_config("bnn")))
    seen = {}
    model.fc1.register_forward_pre_hook(lambda m, a: seen.__setitem__("fc1", a[0]))
    model(tiny_data.tensors[0][:4])  # hooks run in order: the quantizer's first
    assert set(activation_spec(model)) == {"fc1", "fc2"}
    assert set(seen["fc1"].unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("method", ["twn", "ttq", "int8", "inq", "admm", "shiftcnn"])
def test_pruned_zeros_stay_zero(method, tiny_data):
    model = Tiny()
    magnitude_prune(model, sparsity=0.6)
    zeros = {n: (p == 0) for n, p in model.named_parameters() if n.endswith("weight")}
    assert zeros["fc1.weight"].float().mean() > 0.5
    model = quantize_model(
        model, method, train_data=tiny_data, calib_data=tiny_data, train_cfg=FAST
    )
    for n, p in model.named_parameters():
        if n in zeros:
            assert torch.all(p[zeros[n]] == 0), n


def test_inq_partition_largest_first_and_frozen(tiny_data):
    w = torch.tensor([0.1, -0.9, 0.5, 0.2, -0.05, 0.3, 0.0, 0.7])
    m = partition_mask(w, torch.zeros(8, dtype=torch.bool), 0.5)
    assert set(torch.nonzero(m).flatten().tolist()) == {1, 2, 7, 5}
    m2 = partition_mask(w, m, 0.75)
    assert m2.sum() == 6 and torch.all(m2[m])
    model = quantize_(Tiny(), make_config("inq", {"bits": 5}))
    inq = INQ(model)
    inq.step(0.5)
    frozen = inq.frozen["fc1.weight"]
    before = model.fc1.weight.detach().clone()
    assert frozen.float().mean().item() == pytest.approx(0.5, abs=1 / frozen.numel())
    q = before[frozen].abs()
    assert bool((torch.frexp(q[q > 0])[0] == 0.5).all())
    fit(model, tiny_data, TrainConfig(epochs=1, lr=0.1, max_steps=3), callbacks=[inq.callback()])
    after = model.fc1.weight.detach()
    assert torch.equal(after[frozen], before[frozen])
    assert not torch.equal(after[~frozen], before[~frozen])


def test_admm_callback_updates_g_and_lambda(tiny_data):
    from nncompress.quantize.admm import ADMMCallback, admm_project, level_set

    model = Tiny()
    cb = ADMMCallback(model, ["fc1.weight"], "ternary", rho=1.0, interval=1)
    fit(model, tiny_data, TrainConfig(epochs=1, lr=0.01, max_steps=1), callbacks=[cb])
    w = model.fc1.weight.detach()
    # after one step: lambda = 0 + W - G with G = Proj(W + 0)
    g, _ = admm_project(w, level_set("ternary"))
    assert torch.equal(cb.G["fc1.weight"], g)
    assert torch.allclose(cb.lam["fc1.weight"], w - g)


@pytest.mark.parametrize(
    "method,params,text",
    [
        ("int8", {"bits": 12}, "bits=12 is out of range; allowed: 2..8"),
        ("inq", {"bits": 1}, "bits=1 is out of range; allowed: 2..8"),
        ("dorefa", {"w_bits": 0}, "w_bits=0 is out of range; allowed: 1..8"),
        ("dorefa", {"g_bits": 1}, "g_bits=1 is out of range; allowed: 2..16"),
        ("shiftcnn", {"bits": 9}, "bits=9 is out of range; allowed: 2..8"),
        ("act-log", {"bits": 1.5}, "bits=1.5 must be an integer in 2..8"),
        ("admm", {"levels": "quinary"}, "levels='quinary' is not allowed"),
        ("twn", {"bogus": 1}, "unknown parameter"),
        ("int3", {}, "unknown quantization method"),
    ],
)
def test_bad_arguments_are_rejected_with_value_and_range(method, params, text):
    with pytest.raises(
        ConfigError, match=text.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")
    ):
        make_config(method, params)


def test_qat_needs_train_data():
    with pytest.raises(ConfigError, match="needs train_data"):
        quantize_model(Tiny(), "twn")


def test_binaryconnect_scaled_uses_fixed_mean_abs():
    model = Tiny()
    expect = model.fc1.weight.detach().abs().mean()
    finalize(quantize_(model, make_config("binaryconnect", {"scaled": True})))
    assert set(model.fc1.weight.abs().unique().tolist()) == {expect.item()}
