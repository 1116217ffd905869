"""Q16 TNN: ternary activations c + a t on {-a, 0, +a} (c = 0) or {0, a, 2a}, ternary
weights, the multiplication-free product, the calibration fit, save -> load, the recipe."""

import pytest
import torch
from torch import nn

import nncompress
from nncompress.errors import ConfigError, FormatError
from nncompress.quantize import QuantizeRun, quantize_model
from nncompress.quantize.activations import make_activation
from nncompress.quantize.api import activation_spec
from nncompress.quantize.tnn_method import (
    TernaryAct,
    TNNConfig,
    fit_centered,
    fit_nonnegative,
    ternary_activation,
    ternary_codes,
)
from nncompress.recipes import parse_recipe
from nncompress.recipes.runner import run_recipe
from nncompress.train import TrainConfig

FT = TrainConfig(epochs=1, lr=1e-3, optimizer="adam", batch_size=64)


def _inputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each Linear/Conv layer's input after its pre-hooks (the quantized activation)."""
    seen, handles = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv2d)):
            handles.append(mod.register_forward_hook(lambda m, a, o, name=name: seen.__setitem__(name, a[0])))
    model(x)
    for h in handles:
        h.remove()
    return seen


def test_codes_and_levels():
    x = torch.linspace(-3, 3, 61)
    t = ternary_codes(x, 0.5)
    assert set(t.unique().tolist()) == {-1.0, 0.0, 1.0}
    assert torch.equal(t, torch.where(x > 0.5, 1.0, torch.where(x < -0.5, -1.0, 0.0)))
    y = ternary_activation(x, 0.5, 1.25)
    assert set(y.unique().tolist()) == {-1.25, 0.0, 1.25}
    y = ternary_activation(x, 0.5, 1.0, center=1.0)  # {0, a, 2a}
    assert set(y.unique().tolist()) == {0.0, 1.0, 2.0}


def test_straight_through_window():
    x = torch.tensor([-3.0, -1.0, 0.2, 1.4, 1.6], requires_grad=True)
    ternary_activation(x, 0.5, 1.0).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]  # |x| <= a + Delta = 1.5


def test_centered_fit_is_the_least_squares_optimum():
    x = torch.randn(2000, generator=torch.Generator().manual_seed(3))
    delta, alpha = fit_centered(x)
    err = ((x - alpha * ternary_codes(x, delta)) ** 2).sum()
    for d in torch.linspace(0.05, 2.0, 40).tolist():
        t = ternary_codes(x, d)
        a = (x.abs() * t.abs()).sum() / t.abs().sum()  # best a for that threshold
        assert err <= ((x - a * t) ** 2).sum() + 1e-3
    assert 0.4 < delta < 0.9  # ~0.6 sigma for a Gaussian


def test_nonnegative_fit():
    x = torch.tensor([0.0] * 10 + [1.0] * 10 + [2.0] * 10)
    assert fit_nonnegative(x) == pytest.approx(1.0)


def test_calibrated_quantizer_picks_the_centre():
    q = TernaryAct()
    q.calibrating = True
    q(torch.randn(1000).relu())
    q.calibrating = False
    y = q(torch.rand(500) * 3)
    assert q.center == q.alpha and q.delta == q.alpha / 2
    assert set((y / q.alpha).unique().tolist()) <= {0.0, 1.0, 2.0}
    q = TernaryAct(centered=True)
    q.calibrating = True
    q(torch.randn(1000).relu())
    q.calibrating = False
    y = q(torch.rand(50))
    assert q.center == 0.0 and set(y.unique().tolist()) <= {0.0, q.alpha}
    with pytest.raises(ConfigError, match="calibration"):
        TernaryAct()(torch.ones(3))


def test_tnn_model_activations_on_ternary_levels_and_file_round_trip(tiny_data, tmp_path):
    model = nncompress.models.build_model("lenet300")
    quantize_model(model, TNNConfig(centered=True, ternary_input=True), QuantizeRun(train_data=tiny_data, finetune=FT))
    model.eval()
    x = tiny_data.tensors[0][:32]
    spec = activation_spec(model)
    assert set(spec) == {"fc1", "fc2", "fc3"} and all(s["kind"] == "ternary" for s in spec.values())
    for name, inp in _inputs(model, x).items():
        a = spec[name]["alpha"]
        assert spec[name]["center"] == 0.0
        assert set(inp.unique().tolist()) <= {-a, 0.0, a}, name  # {-a, 0, +a}
    for mod in (model.fc1, model.fc2, model.fc3):  # ternary weights, one scale per neuron
        w = mod.weight.detach()
        assert all(len(set(row.abs().unique().tolist()) - {0.0}) <= 1 for row in w)
    nncompress.save(model, tmp_path / "t.nnc")
    loaded = nncompress.load(tmp_path / "t.nnc")
    assert torch.equal(loaded(x), model(x))
    assert activation_spec(loaded) == spec


def test_the_product_is_multiplication_free(tiny_data):
    """W y = alpha_w a (T_w t) + c W 1 + b: an integer sum of +-1 terms, then scales."""
    model = nncompress.models.build_model("lenet300")
    quantize_model(model, TNNConfig(), QuantizeRun(train_data=tiny_data, finetune=FT))
    model.eval()
    s = activation_spec(model)["fc2"]
    inp = _inputs(model, tiny_data.tensors[0][:16])["fc2"]
    t = ternary_codes(inp, s["delta"], s["center"])  # the codes of the stored input
    w = model.fc2.weight.detach()
    scale = w.abs().amax(1)  # alpha_w per neuron
    tw = torch.where(scale[:, None] > 0, w / scale.clamp_min(1e-30)[:, None], 0.0).round()
    assert set(tw.unique().tolist()) <= {-1.0, 0.0, 1.0}
    acc = (t.to(torch.int32) @ tw.T.to(torch.int32)).float()  # additions of +-1 only
    out = s["alpha"] * scale * acc + s["center"] * w.sum(1) + model.fc2.bias.detach()
    torch.testing.assert_close(out, model.fc2(inp), rtol=1e-5, atol=1e-4)


def test_convolutional_model_and_config_refusals(tiny_data, tmp_path):
    model = nncompress.models.build_model("lenet5")
    quantize_model(model, TNNConfig(), QuantizeRun(train_data=tiny_data, finetune=FT))
    spec = activation_spec(model)
    assert "conv1" not in spec and spec and all(s["center"] >= 0 for s in spec.values())
    nncompress.save(model, tmp_path / "c.nnc")
    x = tiny_data.tensors[0][:8]
    model.eval()
    assert torch.equal(nncompress.load(tmp_path / "c.nnc")(x), model(x))
    with pytest.raises(ConfigError, match="centered"):
        TNNConfig(centered="yes")
    with pytest.raises(ConfigError, match="alpha"):
        make_activation({"kind": "ternary", "delta": 0.1, "alpha": -1.0, "center": 0.0})
    with pytest.raises(ConfigError, match="together"):
        make_activation({"kind": "ternary", "delta": 0.1})


def test_a_damaged_record_is_a_format_error(tiny_data, tmp_path):
    import json

    from nncompress.format.container import pack_container, unpack_container

    model = nncompress.models.build_model("lenet300")
    quantize_model(model, TNNConfig(), QuantizeRun(train_data=tiny_data, finetune=FT))
    path = tmp_path / "d.nnc"
    nncompress.save(model, path)
    c = unpack_container(path.read_bytes())
    meta = json.loads(json.dumps(c.meta))
    meta["activations"]["fc2"]["alpha"] = -1.0
    path.write_bytes(pack_container(meta, c.sections))
    with pytest.raises(FormatError, match="alpha"):
        nncompress.load(path)


def test_method_tnn_through_a_recipe(tmp_path):
    raw = {"name": "tnn", "model": {"name": "lenet300"}, "data": {"name": "digits", "train_subset": 128},
           "stages": [{"quantize": {"method": "tnn", "finetune": {"epochs": 1, "lr": 0.001, "batch_size": 64,
                                                                 "optimizer": "adam"}}}]}
    run_recipe(parse_recipe(raw), tmp_path / "r.nnc")
    loaded = nncompress.load(tmp_path / "r.nnc")
    assert {s["kind"] for s in activation_spec(loaded).values()} == {"ternary"}
