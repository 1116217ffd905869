"""One-shot second-order compression (nncompress.quantize.oneshot): the column solver against the
exact quadratic optimum and the layer-wise OBS, sparsity patterns, grids, errors vs
round-to-nearest, Hessian capture, dict batches, file round trips and bad configs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

import nncompress
from nncompress.errors import ConfigError, FormatError
from nncompress.format.codecs import EncodedTensor, get_codec
from nncompress.prune.obs import damped_inverse, obs_update
from nncompress.quantize import GPTQConfig
from nncompress.quantize.kmeans1d import kmeans_1d
from nncompress.quantize.oneshot import (
    CodebookGrid,
    OneShotConfig,
    UniformGrid,
    capture_hessians,
    input_groups,
    oneshot_compress,
    refit_codebook,
    relative_error,
    rtn_layer,
    solve_layer,
)
from nncompress.quantize.oneshot.solver import (
    inverse_cholesky,
    uniform_codes,
    uniform_dequant,
    uniform_params,
)
from nncompress.quantize.registry import QuantizeRun, quantize_model


def correlated(d: int, n: int = 2048, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs X (d, n) with correlated coordinates, and H = 2/n X X^T (float64)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5
    x = mix @ torch.randn(d, n, generator=g, dtype=torch.float64) + 0.3 * torch.randn(d, 1, generator=g,
                                                                                         dtype=torch.float64)
    return x, 2 * x @ x.T / n


def damped(h: torch.Tensor, damp: float) -> torch.Tensor:
    return h + damp * h.diagonal().mean() * torch.eye(h.shape[0], dtype=h.dtype)


# ---- the solver ------------------------------------------------------------------------------


@pytest.mark.parametrize("block_size", [2, 4, 128])
def test_gptq_equals_exact_sequential_optimum(block_size):
    """Column i goes to the grid; then the still-free weights take argmin (w'-w)^T H (w'-w)
    with every fixed column held, solved by a linear system."""
    torch.manual_seed(0)
    rows, d, damp = 3, 8, 0.01
    w = torch.randn(rows, d, dtype=torch.float64)
    _, h = correlated(d, 64)
    hd = damped(h, damp)
    grid = UniformGrid(3)
    s, z = uniform_params(w.float(), 3, False)
    ref = w.clone()
    q = torch.zeros_like(w)
    for i in range(d):
        q[:, i] = uniform_dequant(uniform_codes(ref[:, i:i + 1].float(), s, z, 3), s, z).squeeze(1).double()
        fixed, free = slice(0, i + 1), slice(i + 1, d)
        if i + 1 < d:  # H_FF (w_F - w0_F) = -H_F,fixed (q_fixed - w0_fixed)
            rhs = -(q[:, fixed] - w[:, fixed]) @ hd[fixed, free]  # (rows, free)
            ref[:, free] = w[:, free] + torch.linalg.solve(hd[free, free], rhs.T).T
    res = solve_layer(w.float(), h, grid=grid, block_size=block_size, damp=damp, dtype=torch.float64)
    assert torch.allclose(res.weight.double(), q, atol=1e-6)
    assert torch.equal(res.scales[:, 0], s) and torch.equal(res.zeros[:, 0], z)


def test_single_weight_pruning_equals_layerwise_obs():
    """Pruning one weight (the first column, the least salient under both scores) is the
    OBS step w - (w_q / [H^-1]_qq) H^-1 e_q of prune/obs.py."""
    _, h = correlated(6, 128, seed=1)
    w = torch.tensor([[1e-3, 0.9, -1.1, 0.7, 1.3, -0.8]], dtype=torch.float64)
    hinv = damped_inverse(h, 0.01)
    res = solve_layer(w.float(), h, sparsity=1 / 6, damp=0.01, dtype=torch.float64)
    expected = obs_update(w[0], hinv, 0)
    assert res.mask[0].tolist() == [False] + [True] * 5
    assert torch.allclose(res.weight[0].double(), expected, atol=1e-6)


def test_inverse_cholesky_factor():
    _, h = correlated(5, 64)
    u = inverse_cholesky(h, 0.02)
    assert torch.allclose(u.T @ u, torch.linalg.inv(damped(h, 0.02)), atol=1e-8)
    assert torch.equal(u, torch.triu(u))


@pytest.mark.parametrize("sparsity,block_size", [(0.37, 16), (0.5, 128), (0.9, 7)])
def test_sparsity_fraction_exact(sparsity, block_size):
    torch.manual_seed(0)
    w = torch.randn(16, 64)
    _, h = correlated(64, 512)
    res = solve_layer(w, h, sparsity=sparsity, block_size=block_size)
    assert int((~res.mask).sum()) == round(sparsity * w.numel())
    assert torch.equal(res.weight == 0, ~res.mask)


@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (3, 8)])
def test_nm_pattern_exact(n, m):
    torch.manual_seed(0)
    w = torch.randn(8, 32)
    _, h = correlated(32, 256)
    res = solve_layer(w, h, nm=(n, m), block_size=12)  # block rounded to a multiple of M
    per_group = res.mask.reshape(8, -1, m).sum(-1)
    assert bool((per_group == n).all())
    assert torch.equal(res.weight != 0, res.mask)
    assert relative_error(w, res.weight, h) < relative_error(w, rtn_layer(w, nm=(n, m)), h)


@pytest.mark.parametrize("symmetric,group_size,act_order", [(False, None, False), (True, None, False),
                                                            (False, 16, False), (True, 8, True)])
def test_uniform_values_on_grid(symmetric, group_size, act_order):
    torch.manual_seed(0)
    w = torch.randn(6, 32)
    _, h = correlated(32, 256)
    res = solve_layer(w, h, grid=UniformGrid(3, symmetric, group_size), act_order=act_order, block_size=12)
    g = group_size or 32
    assert torch.equal(res.scales.half().float(), res.scales)
    s = res.scales.repeat_interleave(g, dim=1)
    z = res.zeros.repeat_interleave(g, dim=1)
    codes = (res.weight / s).round() + z
    assert bool(((codes >= 0) & (codes <= 7)).all())
    assert torch.equal((codes - z) * s, res.weight)
    if symmetric:
        assert bool((res.zeros == 4).all())


def test_codebook_values_on_codebook_and_refit_helps():
    torch.manual_seed(0)
    w = torch.randn(16, 48)
    _, h = correlated(48, 512)
    cb = torch.from_numpy(kmeans_1d(w.reshape(-1).numpy(), 8).centroids).float().half().float()
    plain = solve_layer(w, h, grid=CodebookGrid(cb), refit=False)
    refit = solve_layer(w, h, grid=CodebookGrid(cb), refit=True)
    assert set(plain.weight.unique().tolist()) <= set(cb.tolist())
    assert set(refit.weight.unique().tolist()) <= set(refit.codebook.tolist())
    assert refit.error <= plain.error


def test_refit_is_least_squares():
    """With the assignments fixed, the gradient of the quadratic in the centroids is 0."""
    torch.manual_seed(0)
    w = torch.randn(5, 12, dtype=torch.float64)
    _, h = correlated(12, 128)
    labels = torch.randint(0, 3, (5, 12))
    labels[0, :2] = -1  # pruned

    c = refit_codebook(w, labels, h, 3).double().requires_grad_(True)
    q = torch.where(labels >= 0, c[labels.clamp(min=0)], torch.zeros((), dtype=torch.float64))
    e = w - q
    loss = ((e @ h) * e).sum()
    loss.backward()
    assert c.grad.abs().max() < 1e-3 * loss.item()


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_error_below_round_to_nearest(bits):
    torch.manual_seed(bits)
    w = torch.randn(32, 64)
    _, h = correlated(64, 1024, seed=bits)
    uni = solve_layer(w, h, grid=UniformGrid(bits))
    assert uni.error < relative_error(w, rtn_layer(w, grid=UniformGrid(bits)), h)
    cb = torch.from_numpy(kmeans_1d(w.reshape(-1).numpy(), 2 ** bits).centroids).float()
    km = solve_layer(w, h, grid=CodebookGrid(cb))
    assert km.error < relative_error(w, rtn_layer(w, grid=CodebookGrid(cb)), h)


def test_dead_inputs_get_zero_weight():
    torch.manual_seed(0)
    w = torch.randn(4, 8)
    x, _ = correlated(8, 64)
    x[3] = 0
    h = 2 * x @ x.T / 64
    res = solve_layer(w, h, grid=UniformGrid(4))
    assert bool((res.weight[:, 3] == 0).all())


# ---- calibration ------------------------------------------------------------------------------


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 5 * 5, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_hessian_over_batches_equals_one_big_batch():
    torch.manual_seed(0)
    model = ConvNet()
    x = torch.randn(32, 2, 5, 5)
    many = capture_hessians(model, [x[i:i + 8] for i in range(0, 32, 8)])
    one = capture_hessians(model, [x])
    for name in ("conv", "fc"):
        assert torch.allclose(many[name], one[name], atol=1e-10)
    cols = F.unfold(x, 3, padding=1).transpose(1, 2).reshape(-1, 18).double()  # (32*25, 18)
    assert torch.allclose(one["conv"], 2 * cols.T @ cols / cols.shape[0], atol=1e-10)
    # tuple batches and n_samples cut the last batch
    cut = capture_hessians(model, [(x[:20], None), (x[20:], None)], n_samples=24)
    assert torch.allclose(cut["conv"], capture_hessians(model, [x[:24]])["conv"], atol=1e-10)


class Tiny(nn.Module):
    """A transformer-shaped toy taking tokenizer keywords; q/k/v read one tensor."""

    def __init__(self, vocab=20, d=8):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        h = self.emb(input_ids)
        a = torch.softmax(self.q(h) @ self.k(h).transpose(1, 2), -1)
        return (self.out(a @ self.v(h)),)


def test_dict_batch_calibration_skips_padding():
    torch.manual_seed(0)
    model = Tiny()
    ids = torch.randint(0, 20, (3, 5))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    batch = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    hs = capture_hessians(model, [batch])
    rows = model.emb(ids)[mask.bool()].double()  # (9, 8)
    assert torch.allclose(hs["q"], 2 * rows.T @ rows / 9, atol=1e-10)
    assert input_groups(model, batch) == [["q", "k", "v"], ["out"]]
    res = oneshot_compress(model, OneShotConfig(bits=4, exclude=["out"]), [batch, batch])
    assert sorted(res.errors) == ["k", "q", "v"] and res.summary["groups"] == 1


def test_sequential_calibrates_on_compressed_outputs():
    torch.manual_seed(0)
    x = torch.randn(64, 16)
    dense = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4))
    seq, par = [nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)) for _ in range(2)]
    seq.load_state_dict(dense.state_dict()), par.load_state_dict(dense.state_dict())
    oneshot_compress(seq, OneShotConfig(bits=2, sequential=True), [x])
    oneshot_compress(par, OneShotConfig(bits=2, sequential=False), [x])
    assert torch.equal(seq[0].weight, par[0].weight)  # the first layer sees the same input
    h_seq = capture_hessians(seq, [x], ["2"])["2"]  # what layer 2 saw in sequential mode
    w2 = dense[2].weight.detach()
    expected = solve_layer(w2, h_seq, grid=UniformGrid(2)).weight
    assert torch.equal(seq[2].weight, expected)
    assert not torch.equal(par[2].weight, expected)


# ---- whole models, files ------------------------------------------------------------------------


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


@pytest.mark.parametrize("cfg", [
    OneShotConfig(bits=3, group_size=8),
    OneShotConfig(bits=4, symmetric=True, sparsity=0.5),
    OneShotConfig(bits=2, grid="kmeans"),
    OneShotConfig(bits=3, grid="kmeans", nm="2:4"),
], ids=["uniform-group", "uniform-sym-sparse", "kmeans", "kmeans-2:4"])
def test_save_load_round_trip_exact(tmp_path, cfg):
    model = mlp()
    data = [torch.randn(32, 16) for _ in range(3)]
    res = oneshot_compress(model, cfg, data)
    path = tmp_path / "m.nnc"
    nncompress.save(model, path)
    info = nncompress.read_info(path)
    codecs = {t.name: t.codec for t in info.tensors}
    dense = cfg.sparsity == 0 and cfg.nm is None
    assert codecs["0.weight"] == ("gptq" if cfg.grid == "uniform" else "kmeans_rows" if dense else "deep")
    loaded = nncompress.load(path, model=mlp(1))
    for (n, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), n
    if cfg.grid == "kmeans":
        before = {n: p.clone() for n, p in model.named_parameters()}
        res.shared.apply(model)  # SharedWeights describes the model exactly
        assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    if res.masks is not None:
        params = dict(model.named_parameters())
        assert all(bool((params[n][~m] == 0).all()) for n, m in res.masks.items())  # pruned = 0


def test_gptq_codec_refuses_damage_and_off_grid():
    codec = get_codec("gptq")
    w = torch.tensor([[0.5, -0.5, 0.0, 1.0], [1.0, 2.0, 3.0, 0.0]])
    enc = codec.encode(w, bits=3, group_size=2, scales=torch.tensor([[0.5, 0.5], [1.0, 1.0]]),
                       zeros=torch.tensor([[2, 2], [1, 1]]))
    codec.check(enc)
    assert torch.equal(codec.decode(enc), w)
    bad = [
        EncodedTensor("gptq", enc.shape, enc.dtype, {**enc.meta, "group": 3}, enc.sections),
        EncodedTensor("gptq", enc.shape, enc.dtype, {**enc.meta, "width": 9}, enc.sections),
        EncodedTensor("gptq", enc.shape, enc.dtype, enc.meta, {**enc.sections, "scales": b"\0" * 3}),
        EncodedTensor("gptq", enc.shape, enc.dtype, enc.meta, {**enc.sections, "scales": b"\0" * 8}),
        EncodedTensor("gptq", enc.shape, enc.dtype, enc.meta, {**enc.sections, "zeros": b"\xff" * 4}),
        EncodedTensor("gptq", enc.shape, enc.dtype, enc.meta, {k: v for k, v in enc.sections.items()
                                                                if k != "zeros"}),
    ]
    for e in bad:
        with pytest.raises(FormatError):
            codec.check(e)
    with pytest.raises(ConfigError, match="not on the given grid"):
        codec.encode(w + 0.1, bits=3, group_size=2, scales=torch.tensor([[0.5, 0.5], [1.0, 1.0]]),
                     zeros=torch.tensor([[2, 2], [1, 1]]))


def test_gptq_quantizer_method():
    model = mlp()
    data = TensorDataset(torch.randn(40, 16), torch.zeros(40, dtype=torch.long))
    result = quantize_model(model, GPTQConfig(bits=4, batch_size=16), QuantizeRun(calib_data=data))
    assert result.summary["samples"] == 40 and set(result.summary["errors"]) == {"0", "2"}
    assert GPTQConfig(grid="kmeans").training() == "optional"
    with pytest.raises(ConfigError, match="gptq"):
        quantize_model(mlp(), GPTQConfig(), QuantizeRun())


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,match", [
    ({"bits": 1}, "bits must be an integer in \\[2, 8\\], got 1"),
    ({"bits": 9}, "got 9"),
    ({"sparsity": 1.0}, "sparsity must be in \\[0, 1\\), got 1.0"),
    ({"sparsity": -0.1}, "got -0.1"),
    ({"nm": "4:4"}, "0 < N < M.*'4:4'"),
    ({"nm": "2-4"}, "'2-4'"),
    ({"bits": 4, "damp": 0.0}, "damp must be in \\(0, 1\\)"),
    ({"bits": 4, "grid": "lattice"}, "lattice"),
    ({}, "needs bits"),
    ({"bits": 4, "grid": "kmeans", "group_size": 8}, "group_size=8 needs"),
    ({"sparsity": 0.5, "nm": "2:4"}, "not both"),
])
def test_bad_configs(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        OneShotConfig(**kwargs)


def test_unknown_layer_named_with_the_allowed_ones():
    with pytest.raises(ConfigError, match=r"'fc9'.*\['0', '2'\]"):
        oneshot_compress(mlp(), OneShotConfig(bits=4, include=["fc9"]), [torch.randn(4, 16)])
    with pytest.raises(ConfigError, match="group_size=5 must divide the 16 inputs of layer '0'"):
        oneshot_compress(mlp(), OneShotConfig(bits=4, group_size=5), [torch.randn(4, 16)])


@pytest.mark.parametrize("grid", ["uniform", "kmeans"])
def test_method_gptq_through_a_recipe(tmp_path, grid):
    """The quantizer added as one file in quantize/ runs from a recipe (no recipes/ glue)
    and its file reproduces the compressed model."""
    from nncompress.recipes import parse_recipe
    from nncompress.recipes.runner import run_recipe
    raw = {"name": "gptq", "model": {"name": "lenet300"}, "data": {"name": "digits", "train_subset": 128},
           "stages": [{"quantize": {"method": "gptq", "bits": 3, "grid": grid, "n_samples": 64}}]}
    out = tmp_path / "r.nnc"
    run_recipe(parse_recipe(raw), out)
    loaded = nncompress.load(out)
    w = loaded.fc1.weight
    assert torch.unique(w).numel() <= (2 ** 3 if grid == "kmeans" else 2 ** 3 * w.shape[0])


def test_codebook_per_block_of_rows(tmp_path):
    """rows_per_codebook: every block of rows lies on its own <= 2^bits codebook, the file
    (kmeans_rows) reproduces it, and the finer grid does not lose to one codebook."""
    torch.manual_seed(0)
    errs = {}
    for rpc in (None, 4):
        model = mlp()
        data = [torch.randn(32, 16) for _ in range(3)]
        res = oneshot_compress(model, OneShotConfig(bits=2, grid="kmeans", rows_per_codebook=rpc), data)
        errs[rpc] = res.errors["0"]["obs"]
        w = model[0].weight
        if rpc:
            for start in range(0, w.shape[0], rpc):
                assert torch.unique(w[start:start + rpc]).numel() <= 4
            path = tmp_path / "m.nnc"
            nncompress.save(model, path)
            assert {t.name: t.codec for t in nncompress.read_info(path).tensors}["0.weight"] == "kmeans_rows"
            loaded = nncompress.load(path, model=mlp(1))
            assert torch.equal(loaded[0].weight, w)
            assert torch.equal(res.shared["0.weight"].values().reshape(w.shape), w)
    assert errs[4] <= errs[None] * 1.05
    with pytest.raises(ConfigError, match="rows_per_codebook"):
        OneShotConfig(bits=4, rows_per_codebook=8)  # uniform grid
