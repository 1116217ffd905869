import pytest
import torch

from nncompress.errors import ConfigError
from nncompress.prune import (
    MaskCallback,
    Masks,
    layer_sparsity,
    magnitude_prune,
    std_threshold,
    topk_mask,
)
from nncompress.train import TrainConfig, fit


@pytest.mark.parametrize("opt,wd", [("sgd", 5e-4), ("adam", 1e-3), ("adamw", 1e-2)])
def test_pruned_weights_stay_exactly_zero(lenet300, tiny_data, opt, wd):
    # Train first so the optimizer has momentum, then prune and keep training.
    masks = magnitude_prune(lenet300, sparsity=0.8)
    cfg = TrainConfig(epochs=2, lr=0.01, optimizer=opt, weight_decay=wd, momentum=0.9, batch_size=32)
    fit(lenet300, tiny_data, cfg, callbacks=[MaskCallback(masks)])
    params = dict(lenet300.named_parameters())
    for name, m in masks.items():
        assert torch.all(params[name][~m] == 0)
        assert (params[name][m] != 0).float().mean() > 0.99  # survivors keep training


def test_momentum_without_callback_would_move_weights(lenet300, tiny_data):
    """The invariant above is not vacuous: plain SGD with momentum revives zeros."""
    masks = magnitude_prune(lenet300, sparsity=0.8)
    cfg = TrainConfig(epochs=1, lr=0.01, weight_decay=5e-4, batch_size=32)
    fit(lenet300, tiny_data, cfg)
    w = lenet300.fc1.weight
    assert (w[~masks["fc1.weight"]] != 0).any()


def test_reported_sparsity_equals_counted_zeros(lenet5):
    masks = magnitude_prune(lenet5, sparsity={"conv1.weight": 0.3, "default": 0.9})
    counted = layer_sparsity(lenet5, list(masks))
    for name, s in masks.sparsity().items():
        assert s == pytest.approx(counted[name], abs=1e-12)
    assert masks.sparsity()["conv1.weight"] == pytest.approx(150 / 500)
    assert masks.sparsity()["fc1.weight"] == pytest.approx(0.9, abs=1e-5)


def test_global_threshold_is_one_cut(lenet300):
    masks = magnitude_prune(lenet300, sparsity=0.9, scope="global")
    params = dict(lenet300.named_parameters())
    kept = torch.cat([params[n][m].abs() for n, m in masks.items()])
    assert masks.total_sparsity() == pytest.approx(0.9, abs=1e-5)
    # Every kept weight was at least as large as every pruned weight (before zeroing).
    assert kept.min() > 0


def test_quality_std_rule():
    w = torch.tensor([[0.1, -0.2, 3.0, -4.0]])
    thr = std_threshold(w, 0.5)
    assert thr == pytest.approx(0.5 * float(w.std()))
    model = torch.nn.Sequential(torch.nn.Linear(4, 1, bias=False))
    model[0].weight.data = w.clone()
    masks = magnitude_prune(model, quality=0.5)
    assert masks["0.weight"].tolist() == [[False, False, True, True]]


def test_topk_mask_exact_count_with_ties():
    m = topk_mask(torch.zeros(10), 0.35)
    assert int((~m).sum()) == 4  # round(3.5) with banker's rounding -> 4


def test_iterative_masks_only_grow(lenet300):
    m1 = magnitude_prune(lenet300, sparsity=0.5)
    with torch.no_grad():  # perturb so a different set would be chosen
        lenet300.fc1.weight.add_(torch.randn_like(lenet300.fc1.weight))
        m1.apply(lenet300)
    m2 = magnitude_prune(lenet300, sparsity=0.7, previous=m1)
    assert not torch.any(m2["fc1.weight"] & ~m1["fc1.weight"])


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, "x"])
def test_bad_sparsity_rejected(lenet300, bad):
    with pytest.raises(ConfigError, match="sparsity"):
        magnitude_prune(lenet300, sparsity=bad)


def test_model_without_prunable_layer_rejected():
    with pytest.raises(ConfigError, match="no prunable layer"):
        magnitude_prune(torch.nn.Sequential(torch.nn.ReLU()), sparsity=0.5)


def test_masks_from_zeros_roundtrip(lenet300):
    masks = magnitude_prune(lenet300, sparsity=0.6)
    again = Masks.from_zeros(lenet300, list(masks))
    for n in masks:
        assert torch.equal(masks[n], again[n])


def test_bare_layer_is_prunable():
    layer = torch.nn.Linear(10, 4)
    masks = magnitude_prune(layer, sparsity=0.5)
    assert list(masks) == ["weight"] and int((layer.weight == 0).sum()) == 20


def test_magnitude_config_equals_keywords_and_layers_are_selected_by_globs(lenet300):
    import copy

    from torch import nn

    from nncompress.modules import select_layers
    from nncompress.prune import MagnitudeConfig

    twin = copy.deepcopy(lenet300)
    old = magnitude_prune(lenet300, sparsity={"fc1.weight": 0.9, "default": 0.5}, exclude=["fc3"])
    new = magnitude_prune(twin, MagnitudeConfig(sparsity={"fc1.weight": 0.9, "default": 0.5}, exclude=["fc3"]))
    assert list(old) == list(new) == ["fc1.weight", "fc2.weight"]
    assert all(torch.equal(old[k], new[k]) for k in old)
    with pytest.raises(TypeError, match="belong in the config"):
        magnitude_prune(twin, MagnitudeConfig(sparsity=0.5), sparsity=0.9)
    with pytest.raises(ConfigError, match=r"sparsity must be in \[0, 1\), got 1.2"):
        MagnitudeConfig(sparsity={"default": 1.2})
    with pytest.raises(ConfigError, match="scope='all' not allowed; allowed: layer, global"):
        MagnitudeConfig(sparsity=0.5, scope="all")
    assert list(select_layers(lenet300, include=["fc*"], exclude=["fc2"], types=nn.Linear)) == ["fc1", "fc3"]
    assert list(select_layers(lenet300, types=nn.ReLU)) == [n for n, m in lenet300.named_modules()
                                                           if isinstance(m, nn.ReLU)]


def test_iterative_config_equals_schedule_call(lenet300, tiny_data):
    import copy

    from nncompress.prune import IterativeConfig, iterative_prune

    twin = copy.deepcopy(lenet300)
    retrain = TrainConfig(epochs=0.25, batch_size=64, lr=0.01)
    old = iterative_prune(lenet300, tiny_data, [0.5, 0.8], retrain, freeze="conv")
    new = iterative_prune(twin, tiny_data, IterativeConfig(schedule=[0.5, 0.8], retrain=retrain, freeze="conv"))
    assert all(torch.equal(old.masks[k], new.masks[k]) for k in old.masks)
    assert all(torch.equal(a, b) for a, b in zip(lenet300.parameters(), twin.parameters()))
    with pytest.raises(ConfigError, match="needs a 'retrain' config"):
        IterativeConfig(schedule=[0.5])
    with pytest.raises(ConfigError, match="freeze='all' not allowed; allowed: conv, fc"):
        IterativeConfig(schedule=[0.5], retrain=retrain, freeze="all")
