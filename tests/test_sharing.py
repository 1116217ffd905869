import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from nncompress.errors import ConfigError
from nncompress.prune import MaskCallback, magnitude_prune
from nncompress.quantize import (
    CentroidFineTuner,
    SharedWeights,
    SharingConfig,
    centroid_gradient,
    kmeans_1d,
    share_weights,
    sharing_ratio,
)
from nncompress.train import TrainConfig, fit


def test_paper_ratio_formula():
    assert sharing_ratio(16, 2) == pytest.approx(16 * 32 / (16 * 2 + 4 * 32))  # 3.2, paper Fig. 3
    assert sharing_ratio(16, 2) == pytest.approx(3.2)
    assert sharing_ratio(1000, 5) == pytest.approx(32000 / 6024)
    assert sharing_ratio(0, 4) == 0.0
    with pytest.raises(ConfigError):
        sharing_ratio(10, 0)


@pytest.mark.parametrize("kw", [dict(bits_fc=0), dict(bits_fc=17), dict(bits_conv=2.5),
                                dict(bits_conv=True), dict(bits_fc="5"), dict(init="kmeans++"),
                                dict(max_iter=0), dict(tol=-1.0)])
def test_bad_config_rejected(kw):
    with pytest.raises(ConfigError):
        SharingConfig(**kw)


def test_share_lenet5_keeps_zeros_and_limits_values(lenet5):
    magnitude_prune(lenet5, sparsity=0.7)
    before = {n: p.detach().clone() for n, p in lenet5.named_parameters()}
    shared = share_weights(lenet5, SharingConfig(bits_conv=4, bits_fc=3))
    params = dict(lenet5.named_parameters())
    assert set(shared) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    for name, layer in shared.items():
        w, w0 = params[name].detach(), before[name]
        bits = 4 if name.startswith("conv") else 3
        assert layer.bits == bits
        assert torch.equal(w == 0, w0 == 0)  # the same zero positions, exactly
        nz = torch.unique(w[w != 0])
        assert nz.numel() <= 2**bits and layer.codebook.numel() <= 2**bits
        assert layer.codebook.dtype == torch.float32
        assert torch.all(layer.codebook[1:] > layer.codebook[:-1])  # sorted, no duplicates
        assert torch.equal(torch.sort(nz).values, layer.codebook)  # every entry used
        # The clustering is k-means of the nonzeros: same centroids as kmeans_1d.
        r = kmeans_1d(w0[w0 != 0].numpy(), 2**bits)
        used = np.unique(r.centroids[r.labels].astype(np.float32))
        np.testing.assert_array_equal(layer.codebook.numpy(), used)
        # Each weight went to its nearest centroid (Lloyd's assignment at the fixed point).
        orig = w0[w0 != 0].double()
        dist = (orig[:, None] - layer.codebook.double()[None, :]).abs()
        own = dist.gather(1, layer.labels[:, None]).squeeze(1)  # (nnz,)
        assert torch.all(own <= dist.min(1).values + 1e-6)
    assert torch.equal(params["fc1.bias"], before["fc1.bias"])  # biases untouched


def test_layer_codebook_reconstructs_weight(lenet300):
    magnitude_prune(lenet300, sparsity=0.9)
    shared = share_weights(lenet300, SharingConfig(bits_fc=5))
    for name, w in [("fc1.weight", lenet300.fc1.weight), ("fc3.weight", lenet300.fc3.weight)]:
        cb, idx = shared.layer_codebook(name)
        assert idx.shape == w.shape and idx.dtype == torch.int64
        assert torch.equal(idx == -1, w == 0)
        assert int(idx.max()) < cb.numel() and int(idx[idx >= 0].min()) >= 0
        rebuilt = torch.where(idx >= 0, cb[idx.clamp(min=0)], torch.zeros(()))
        assert torch.equal(rebuilt, w.detach())
    summ = shared.summary()["fc1.weight"]
    n = int((lenet300.fc1.weight != 0).sum())
    assert summ["n"] == n and summ["ratio"] == pytest.approx(n * 32 / (n * 5 + 32 * 32))


def test_include_exclude_and_empty_layer():
    model = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 3))
    with torch.no_grad():
        model[1].weight.zero_()
    w2 = model[2].weight.detach().clone()
    shared = share_weights(model, SharingConfig(bits_fc=1, exclude=("2",)))
    assert set(shared) == {"0.weight", "1.weight"}
    assert torch.equal(model[2].weight, w2)
    assert shared["1.weight"].codebook.numel() == 0 and torch.all(model[1].weight == 0)
    assert torch.unique(model[0].weight).numel() <= 2


def _tiny_linear() -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """A Sequential holding one Linear (weight "0.weight"), 16 samples, 4 classes."""
    g = torch.Generator().manual_seed(3)
    lin = nn.Sequential(nn.Linear(6, 4))
    with torch.no_grad():
        lin[0].weight.copy_(torch.randn(4, 6, generator=g))
        lin[0].weight[lin[0].weight.abs() < 0.4] = 0.0
    x = torch.randn(16, 6, generator=g)
    y = torch.randint(0, 4, (16,), generator=g)
    return lin, x, y


def test_centroid_gradient_is_sum_of_member_gradients():
    lin, x, y = _tiny_linear()
    shared = share_weights(lin, SharingConfig(bits_fc=2))
    cb, idx = shared.layer_codebook("0.weight")
    nn.functional.cross_entropy(lin(x), y).backward()
    g = lin[0].weight.grad
    explicit = torch.zeros(cb.numel())
    for pos in range(idx.numel()):  # loop over every weight by hand
        j = int(idx.view(-1)[pos])
        if j >= 0:
            explicit[j] += g.view(-1)[pos]
    layer = shared["0.weight"]
    got = centroid_gradient(g[layer.mask], layer.labels, cb.numel())
    assert torch.allclose(got, explicit, rtol=1e-6, atol=1e-7)
    # Independent check by autograd: W = codebook[index] as a function of the codebook.
    cbp = cb.clone().requires_grad_(True)
    w = torch.where(idx >= 0, cbp[idx.clamp(min=0)], torch.zeros(()))
    nn.functional.cross_entropy(nn.functional.linear(x, w, lin[0].bias), y).backward()
    assert torch.allclose(cbp.grad, explicit, rtol=1e-5, atol=1e-7)


def test_one_fit_step_is_the_paper_update():
    lin, x, y = _tiny_linear()
    shared = share_weights(lin, SharingConfig(bits_fc=2))
    layer = shared["0.weight"]
    cb0 = layer.codebook.clone()
    probe = nn.Sequential(nn.Linear(6, 4))
    probe.load_state_dict(lin.state_dict())
    nn.functional.cross_entropy(probe(x), y).backward()
    expected_grad = centroid_gradient(probe[0].weight.grad[layer.mask], layer.labels, cb0.numel())
    cfg = TrainConfig(epochs=1, lr=0.1, batch_size=16, lr_schedule="constant", momentum=0.0)
    fit(lin, TensorDataset(x, y), cfg, callbacks=[CentroidFineTuner(shared, lr=0.05)])
    assert torch.allclose(layer.codebook, cb0 - 0.05 * expected_grad, rtol=1e-6, atol=1e-7)
    assert not torch.equal(layer.codebook, cb0)
    assert torch.allclose(lin[0].bias, probe[0].bias - 0.1 * probe[0].bias.grad)  # main opt
    assert torch.equal(lin[0].weight[layer.mask], layer.codebook[layer.labels])


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_fit_keeps_model_equal_to_codebook(lenet300, tiny_data, opt):
    masks = magnitude_prune(lenet300, sparsity=0.8)
    shared = share_weights(lenet300, SharingConfig(bits_fc=3))
    cb0 = {n: l.codebook.clone() for n, l in shared.items()}
    bias0 = lenet300.fc1.bias.detach().clone()
    cfg = TrainConfig(epochs=2, lr=0.01, optimizer=opt, weight_decay=5e-4, batch_size=32)
    tuner = CentroidFineTuner(shared, lr=1e-3, momentum=0.9)
    fit(lenet300, tiny_data, cfg, callbacks=[MaskCallback(masks), tuner])
    params = dict(lenet300.named_parameters())
    for name, layer in shared.items():
        w = params[name].detach()
        assert torch.equal(w != 0, masks[name])  # zeros are still exactly the pruned ones
        assert torch.equal(w[layer.mask], layer.codebook[layer.labels])  # exactly shared
        assert torch.unique(w[w != 0]).numel() <= 8
        assert not torch.equal(layer.codebook, cb0[name])  # the centroids were tuned
    assert not torch.equal(lenet300.fc1.bias, bias0)


def test_tuner_state_roundtrip(tmp_path):
    lin, x, y = _tiny_linear()
    shared = share_weights(lin, SharingConfig(bits_fc=2))
    tuner = CentroidFineTuner(shared, lr=0.05, momentum=0.5)
    cfg = TrainConfig(epochs=2, lr=0.1, batch_size=8)
    fit(lin, TensorDataset(x, y), cfg, callbacks=[tuner])
    torch.save(tuner.state_dict(), tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    other = SharedWeights.from_state_dict(shared.state_dict())
    with torch.no_grad():
        other["0.weight"].codebook.zero_()
    fresh = CentroidFineTuner(other, lr=0.05, momentum=0.5)
    fresh.load_state_dict(state)
    assert torch.equal(other["0.weight"].codebook, shared["0.weight"].codebook)
    assert torch.equal(other["0.weight"].labels, shared["0.weight"].labels)


def test_tuner_rejects_bad_arguments():
    shared = SharedWeights({})
    for kw in (dict(lr=0.0), dict(lr=-1.0), dict(lr=0.1, momentum=1.0)):
        with pytest.raises(ConfigError):
            CentroidFineTuner(shared, **kw)


def test_per_layer_bits_and_unknown_layer(lenet300):
    magnitude_prune(lenet300, sparsity=0.5)
    shared = share_weights(lenet300, SharingConfig(bits_fc=5, bits={"fc1": 3}))
    assert shared["fc1.weight"].bits == 3 and shared["fc2.weight"].bits == 5
    assert len(torch.unique(lenet300.fc1.weight)) <= 2**3 + 1
    with pytest.raises(ConfigError, match="conv9"):
        share_weights(lenet300, SharingConfig(bits={"conv9": 4}))
    with pytest.raises(ConfigError, match="bits"):
        SharingConfig(bits={"fc1": 0})


def test_round_codebooks_to_half_saves_exactly(tmp_path, lenet300):
    import nncompress

    magnitude_prune(lenet300, sparsity=0.9)
    shared = share_weights(lenet300, SharingConfig(bits_fc=5))
    shared.round_codebooks(lenet300, torch.float16)
    for name, p in lenet300.named_parameters():
        if name in shared:
            assert torch.equal(p, p.half().float()), name
            assert torch.equal(p == 0, ~shared[name].mask) or bool((shared[name].codebook == 0).any())
    path = tmp_path / "m.nnc"
    nncompress.save(lenet300, path, codecs={n: "deep" for n in shared})
    loaded = nncompress.load(path)
    for name, t in lenet300.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
