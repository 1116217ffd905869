"""S12 GSM: top-Q selection, the update equals the paper's formula, exact final count."""

import pytest
import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.prune.gsm import GSMCallback, gsm_q, topq_masks
from nncompress.train import TrainConfig, fit


def test_topq_is_global_and_exact():
    a, b = torch.tensor([[5.0, 1.0], [0.5, 4.0]]), torch.tensor([3.0, 2.0, 6.0])
    ma, mb = topq_masks([a, b], 3)  # 6, 5, 4
    assert ma.tolist() == [[True, False], [False, True]] and mb.tolist() == [False, False, True]
    ma, mb = topq_masks([a, b], 4)  # 6, 5, 4, 3
    assert ma.tolist() == [[True, False], [False, True]] and mb.tolist() == [True, False, True]
    with pytest.raises(ConfigError):
        topq_masks([a], 5)


def test_q_from_ratio_and_sparsity():
    assert gsm_q(1000, ratio=8) == 125
    assert gsm_q(1000, sparsity=0.9) == 100
    with pytest.raises(ConfigError, match="exactly one"):
        gsm_q(1000, q=3, ratio=2)


def test_one_step_matches_paper_update():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    w0 = model[0].weight.detach().clone()
    lr, beta, eta, q = 0.1, 0.9, 0.01, 5
    cb = GSMCallback(model, q=q)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=beta, weight_decay=eta)
    z = torch.zeros_like(w0)
    w = w0.clone()
    for _ in range(2):
        wr = w.clone().requires_grad_()
        nn.functional.cross_entropy(x @ wr.T, y).backward()
        g = wr.grad
        score = (w * g).abs().reshape(-1)
        b = torch.zeros(12, dtype=torch.bool)
        b[torch.argsort(score, descending=True)[:q]] = True
        z = beta * z + eta * w + b.view_as(w) * g  # Ding et al. eq. 5
        w = w - lr * z
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        cb.after_backward(model)
        assert int((model[0].weight.grad != 0).sum()) == q
        opt.step()
        assert torch.allclose(model[0].weight.detach(), w, atol=1e-6)


def test_final_count_is_exactly_q(lenet300, tiny_data):
    total = sum(p.numel() for n, p in lenet300.named_parameters() if n.endswith("weight"))
    cb = GSMCallback(lenet300, ratio=40)
    fit(lenet300, tiny_data, TrainConfig(epochs=1, batch_size=32, momentum=0.95, weight_decay=1e-3), callbacks=[cb])
    masks = cb.finalize(lenet300)
    nonzero = sum(int((p != 0).sum()) for n, p in lenet300.named_parameters() if n.endswith("weight"))
    assert nonzero == cb.q == round(total / 40)
    assert sum(masks.kept().values()) == cb.q


def test_dispatcher_gsm_and_errors(lenet300, tiny_data):
    from nncompress.prune.sparse_train import SPARSE_METHODS, sparse_train

    assert set(SPARSE_METHODS) == {"gradual", "dns", "magnitude", "obd", "obs", "ssl", "gsm", "csgd"}
    res = sparse_train(lenet300, "gsm", tiny_data, TrainConfig(epochs=1, batch_size=64, weight_decay=1e-3), q=500)
    assert sum(res.masks.kept().values()) == 500 and res.info["q"] == 500
    with pytest.raises(ConfigError, match="allowed"):
        sparse_train(lenet300, "lottery", tiny_data, None)
    with pytest.raises(ConfigError, match="train_cfg"):
        sparse_train(lenet300, "dns", tiny_data, None, sparsity=0.5)


def test_sparse_train_config_equals_keyword_call_and_checks_params(lenet300, tiny_data):
    import copy

    from nncompress.prune.sparse_methods import GSMParams
    from nncompress.prune.sparse_train import SparseTrainConfig, sparse_train

    cfg = TrainConfig(epochs=1, batch_size=64, weight_decay=1e-3)
    twin = copy.deepcopy(lenet300)
    old = sparse_train(lenet300, "gsm", tiny_data, cfg, q=500)
    config = SparseTrainConfig("gsm", {"q": 500}, cfg)
    assert config.params == GSMParams(q=500)
    new = sparse_train(twin, config, tiny_data)
    assert all(torch.equal(old.masks[k], new.masks[k]) for k in old.masks)
    for params, match in [({"qq": 5}, r"gsm params: unknown key\(s\) \['qq'\]"),
                          ({"q": 5, "ratio": 10}, "exactly one of q, ratio, sparsity"),
                          ({"ratio": 0.5}, "ratio must be >= 1, got 0.5"),
                          ({"q": 1.5}, r"gsm params\.q: expected an integer")]:
        with pytest.raises(ConfigError, match=match):
            SparseTrainConfig("gsm", params, cfg)
    with pytest.raises(TypeError, match="belong in the config"):
        sparse_train(twin, config, tiny_data, cfg)
