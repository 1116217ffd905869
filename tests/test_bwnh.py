"""BWNH (Q13): codes and scales by hashing, monotone objective, BWN baseline, model-level
binarisation through the QAT wrapper, finalize/save, bad arguments."""

import pytest
import torch
from torch import nn

import nncompress.format as nnc
from nncompress.errors import ConfigError
from nncompress.quantize import (
    BWNHQuantizer,
    bwn_objective,
    bwnh_alpha,
    bwnh_binarize,
    bwnh_codes,
    bwnh_objective,
    bwnh_solve_gram,
    bwnh_stats,
    finalize,
)
from nncompress.quantize.binary import bwn_quantize
from nncompress.quantize.bwnh_codes import gram
from nncompress.quantize.layers import QuantConv2d, QuantLinear
from nncompress.train import TrainConfig, fit


def _case(n=6, d=12, m=40, seed=0, correlated=True):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, d, generator=g)
    x = torch.randn(d, m, generator=g)
    if correlated:  # anisotropic inputs, as real feature maps: BWN's scale is then far off
        x = torch.randn(d, d, generator=g) @ x
    return w, x


def _err(w, x, wq):
    return float(torch.linalg.norm(w.double() @ x.double() - wq.double() @ x.double()))


def test_codes_are_binary_and_shapes():
    w, x = _case()
    b, alpha = bwnh_codes(w, x, iters=5)
    assert b.shape == w.shape and alpha.shape == (w.shape[0],)
    assert set(b.unique().tolist()) <= {-1.0, 1.0}
    assert torch.all((b == 1) | (b == -1))
    assert (alpha >= 0).all()
    assert b.dtype == w.dtype and alpha.dtype == w.dtype


def test_error_not_above_bwn_and_strictly_below_on_random_case():
    for seed in range(5):
        w, x = _case(seed=seed)
        b, alpha = bwnh_codes(w, x, iters=10)
        e_bwnh = _err(w, x, alpha[:, None] * b)
        e_bwn = _err(w, x, bwn_quantize(w))
        assert e_bwnh <= e_bwn + 1e-9
        assert bwnh_objective(w, x, b, alpha) <= bwn_objective(w, x) + 1e-9
    w, x = _case(seed=0)
    b, alpha = bwnh_codes(w, x, iters=10)
    assert _err(w, x, alpha[:, None] * b) < 0.95 * _err(w, x, bwn_quantize(w))
    # uncorrelated inputs too
    w, x = _case(seed=3, correlated=False)
    b, alpha = bwnh_codes(w, x, iters=10)
    assert _err(w, x, alpha[:, None] * b) < _err(w, x, bwn_quantize(w))


def test_objective_non_increasing_and_matches_direct_error():
    w, x = _case(n=8, d=20, m=30, seed=1)
    res = bwnh_solve_gram(w, gram(x), iters=15)
    h = res.history
    assert len(h) >= 2
    for a, b in zip(h, h[1:]):
        assert b <= a * (1 + 1e-12) + 1e-12
    assert h[-1] < h[0]
    # the recorded objective is ||WX - diag(alpha) B X||_F^2
    direct = _err(w, x, res.alpha[:, None] * res.codes) ** 2
    assert direct == pytest.approx(res.objective, rel=1e-5)
    # iters=k gives the first k steps of the same deterministic run
    for k in (1, 2, 3):
        r = bwnh_solve_gram(w, gram(x), iters=k)
        assert r.history == h[: len(r.history)]


def test_alpha_closed_form():
    w, x = _case(seed=2)
    b, alpha = bwnh_codes(w, x, iters=10)
    bx, wx = b.double() @ x.double(), w.double() @ x.double()
    expected = (bx * wx).sum(1) / (bx * bx).sum(1)
    assert torch.allclose(alpha.double(), expected, rtol=1e-5)
    assert torch.allclose(bwnh_alpha(w, x, b), expected, rtol=1e-9)
    # no other scale does better for these codes
    base = bwnh_objective(w, x, b, alpha)
    for f in (0.9, 1.1):
        assert bwnh_objective(w, x, b, alpha * f) > base


def test_single_bit_flips_do_not_help():
    """At convergence (a sweep changed no bit) no single bit flip lowers the objective."""
    w, x = _case(n=3, d=8, m=20, seed=4)
    res = bwnh_solve_gram(w, gram(x), iters=50)
    assert res.iters_run < 50
    for i in range(3):
        for k in range(8):
            b = res.codes.clone(); b[i, k] = -b[i, k]
            assert bwnh_objective(w, x, b, res.alpha) >= res.objective * (1 - 1e-6)


def test_identity_inputs_give_bwn():
    """With X = I the objective is ||W - aB||^2: sign(W) and mean|W| are optimal."""
    w, _ = _case(seed=5)
    b, alpha = bwnh_codes(w, torch.eye(w.shape[1]), iters=5)
    assert torch.allclose(alpha[:, None] * b, bwn_quantize(w), atol=1e-6)


@pytest.mark.parametrize("iters", [0, -1, 1.5, True])
def test_bad_iters(iters):
    w, x = _case()
    with pytest.raises(ConfigError, match="iters"):
        bwnh_codes(w, x, iters=iters)


def test_bad_inputs():
    w, x = _case()
    with pytest.raises(ConfigError, match="no samples"):
        bwnh_codes(w, x[:, :0])
    with pytest.raises(ConfigError, match="does not match"):
        bwnh_codes(w, x[:5])
    with pytest.raises(ConfigError, match="2-D"):
        bwnh_codes(w.flatten(), x)
    with pytest.raises(ConfigError, match="2-D"):
        bwnh_codes(w, x.flatten())


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 5, stride=2, padding=1)
        self.conv_g = nn.Conv2d(4, 4, 3, groups=2)
        self.fc1 = nn.Linear(4 * 11 * 11, 16)
        self.fc2 = nn.Linear(16, 10)
        self.norm = nn.LayerNorm(10)

    def forward(self, x):
        x = torch.relu(self.conv_g(torch.relu(self.conv(x)))).flatten(1)
        return self.norm(self.fc2(torch.relu(self.fc1(x))))


def _model_and_data(seed=0):
    torch.manual_seed(seed)
    return Tiny(), torch.randn(16, 1, 28, 28)


def test_model_level_leaves_other_layers_untouched():
    model, x = _model_and_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    bwnh_binarize(model, x, layers=["fc1", "conv_g"], iters=3)
    assert isinstance(model.fc1, QuantLinear) and isinstance(model.conv_g, QuantConv2d)
    assert type(model.conv) is nn.Conv2d and type(model.fc2) is nn.Linear
    after = model.state_dict()
    for k in ("conv.weight", "conv.bias", "fc2.weight", "fc2.bias", "norm.weight", "norm.bias",
              "fc1.bias", "conv_g.bias"):
        assert torch.equal(after[k], before[k]), k
    assert not torch.equal(after["fc1.weight"], before["fc1.weight"])
    # the forward weight is alpha * B with B in {-1, +1}
    for mod in (model.fc1, model.conv_g):
        wq = mod.quant_weight().detach()
        alpha = mod.wq.alpha.detach()
        b = wq / alpha.reshape([-1] + [1] * (wq.dim() - 1))
        assert torch.allclose(b.abs(), torch.ones_like(b))
    assert set(bwnh_stats(model)) == {"fc1", "conv_g"}


def test_model_level_beats_bwn_per_layer_and_matches_pure_function():
    model, x = _model_and_data(1)
    w_fc2 = model.fc2.weight.detach().clone()
    feats = []
    h = model.fc2.register_forward_pre_hook(lambda m, a: feats.append(a[0].detach()))
    model(x); h.remove()
    bwnh_binarize(model, x, layers=["fc2"], iters=10, wrap=False)
    assert type(model.fc2) is nn.Linear
    b, alpha = bwnh_codes(w_fc2, feats[0].T, iters=10)
    assert torch.allclose(model.fc2.weight, alpha[:, None] * b, atol=1e-6)
    st = bwnh_stats(model)["fc2"]
    assert st.objective <= st.objective_sign_ls <= st.objective_bwn
    rel = st.relative()
    assert rel["bwnh"] < rel["bwn"]


def test_model_level_all_layers_sequential_and_finalize_roundtrip(tmp_path):
    model, x = _model_and_data(2)
    bwnh_binarize(model, [(x[:8], None), (x[8:], None)], iters=3, sample=200)
    assert all(isinstance(m, (QuantLinear, QuantConv2d))
               for m in (model.conv, model.conv_g, model.fc1, model.fc2))
    assert all(s.columns <= 200 for s in bwnh_stats(model).values())
    # fine-tune through the BWN training path: alpha is a trained parameter
    a0 = model.fc1.wq.alpha.detach().clone()
    data = torch.utils.data.TensorDataset(x, torch.randint(0, 10, (16,)))
    fit(model, data, TrainConfig(epochs=1, lr=1e-2, optimizer="adam", batch_size=8, max_steps=2))
    assert not torch.equal(model.fc1.wq.alpha.detach(), a0)
    model.eval()
    with torch.no_grad():
        y = model(x)
    finalize(model)
    assert type(model.fc1) is nn.Linear and type(model.conv_g) is nn.Conv2d
    with torch.no_grad():
        assert torch.allclose(model(x), y, atol=1e-5)
    path = tmp_path / "bwnh.nnc"
    nnc.save(model, path)
    loaded = nnc.load(path, model=Tiny())
    assert torch.equal(loaded.fc1.weight, model.fc1.weight)


def test_sequential_uses_binarised_inputs():
    m_seq, x = _model_and_data(3)
    m_par, _ = _model_and_data(3)
    bwnh_binarize(m_seq, x, iters=3, sequential=True)
    bwnh_binarize(m_par, x, iters=3, sequential=False)
    # the first layer sees the same input either way; later layers see different ones
    assert torch.equal(m_seq.conv.weight, m_par.conv.weight)
    assert not torch.equal(m_seq.fc2.weight, m_par.fc2.weight)


def test_model_level_bad_input():
    model, x = _model_and_data()
    with pytest.raises(ConfigError, match="no nn.Linear / nn.Conv2d"):
        bwnh_binarize(nn.Sequential(nn.ReLU()), x)
    with pytest.raises(ConfigError, match="empty"):
        bwnh_binarize(model, [])
    with pytest.raises(ConfigError, match="0 samples"):
        bwnh_binarize(model, x[:0])
    with pytest.raises(ConfigError, match="iters=0"):
        bwnh_binarize(model, x, iters=0)
    with pytest.raises(ConfigError, match="sample=0"):
        bwnh_binarize(model, x, sample=0)
    with pytest.raises(ConfigError, match=r"layers=\['nope'\].*fc1"):
        bwnh_binarize(model, x, layers=["nope"])
    with pytest.raises(ConfigError, match="layers="):
        bwnh_binarize(model, x, layers=[])
    # nothing was changed by the failed calls
    assert all(type(m) in (nn.Conv2d, nn.Linear) for m in (model.conv, model.fc1, model.fc2))


def test_quantizer_forward_and_gradient():
    q = BWNHQuantizer(torch.tensor([0.5, 2.0]))
    w = torch.tensor([[0.3, -2.0], [-0.1, 0.4]], requires_grad=True)
    out = q(w)
    assert out.tolist() == [[0.5, -0.5], [-2.0, 2.0]]
    out.sum().backward()
    assert w.grad.tolist() == [[0.5, 0.0], [2.0, 2.0]]  # clipped STE, as BWN
    assert q.alpha.grad.tolist() == [0.0, 0.0]
    vals, (fmt, params) = q.quantize(w)
    assert fmt == "binary" and params == {"per_channel": True}
    assert torch.equal(vals, out.detach())
