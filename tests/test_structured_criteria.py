"""Each importance formula on a tiny case computed by hand; handlers give one score per channel."""

import math

import pytest
import torch
from torch import nn

from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.prune.structured import criteria as F
from nncompress.prune.structured import find_groups
from nncompress.prune.structured.scoring import CRITERIA, ScoreData, score


def test_filter_norm_l1_l2():
    w = torch.tensor([[[1.0, -2.0]], [[3.0, 4.0]]])  # (2, 1, 2)
    assert torch.allclose(F.filter_norm(w, 1), torch.tensor([3.0, 7.0]))
    assert torch.allclose(F.filter_norm(w, 2), torch.tensor([math.sqrt(5), 5.0]))
    with pytest.raises(ConfigError, match="p=3"):
        F.filter_norm(w, 3)


def test_apoz_counts_zeros_after_relu():
    acts = torch.tensor([[[1.0, -1.0, 0.0, 2.0], [-1.0, -2.0, -3.0, 4.0]],
                         [[5.0, 6.0, 7.0, -8.0], [-1.0, -1.0, -1.0, -1.0]]])  # (N=2, C=2, 4)
    # channel 0: zeros at -1, 0 (sample 0) and -8 (sample 1) -> 3/8; channel 1: 7/8
    assert torch.allclose(F.apoz(acts), torch.tensor([3 / 8, 7 / 8]))
    assert torch.allclose(F.apoz_score(acts), torch.tensor([5 / 8, 1 / 8]))


def test_gap_entropy_by_hand():
    # channel 0: values 0,0,0,1 -> bins (2): p = 3/4, 1/4; channel 1: constant -> 0
    gap = torch.tensor([[0.0, 2.0], [0.0, 2.0], [0.0, 2.0], [1.0, 2.0]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert torch.allclose(F.gap_entropy(gap, bins=2), torch.tensor([h, 0.0]), atol=1e-6)
    # 4 bins over [0, 3]: values 0,1,2,3 each alone -> log 4
    assert torch.allclose(F.gap_entropy(torch.tensor([[0.0], [1.0], [2.0], [3.0]]), 4),
                          torch.tensor([math.log(4)]), atol=1e-6)


def test_taylor_mean_of_product_then_abs_then_layer_l2():
    a = torch.tensor([[[1.0, 3.0], [2.0, 0.0]], [[-1.0, 1.0], [4.0, 4.0]]])  # (N=2, C=2, 2)
    g = torch.tensor([[[1.0, -1.0], [1.0, 1.0]], [[1.0, 1.0], [0.5, 0.0]]])
    # ch0: sample0 mean(1,-3)=-1 -> 1; sample1 mean(-1,1)=0 -> 0; avg 0.5
    # ch1: sample0 mean(2,0)=1; sample1 mean(2,0)=1; avg 1
    raw = F.taylor(a, g, normalise=False)
    assert torch.allclose(raw, torch.tensor([0.5, 1.0]))
    assert torch.allclose(F.taylor(a, g), torch.tensor([0.5, 1.0]) / math.sqrt(1.25))


def test_class_discriminability_icc():
    labels = torch.tensor([0, 0, 1, 1])
    fire = torch.tensor([[0.0, 1.0, 5.0], [2.0, 3.0, 5.0], [4.0, 1.0, 5.0], [6.0, 3.0, 5.0]])
    # ch0: class means 1, 5; mu 3; between = 2*4 + 2*4 = 16; within = 1+1+1+1 = 4 -> 0.8
    # ch1: class means 2, 2 -> between 0 -> 0; ch2 constant -> 0
    assert torch.allclose(F.class_discriminability(fire, labels), torch.tensor([0.8, 0.0, 0.0]))


def test_activation_correlation_takes_max_abs_over_next_channels():
    this = torch.tensor([[1.0, 1.0], [2.0, -1.0], [3.0, 1.0], [4.0, -1.0]])
    nxt = torch.tensor([[4.0, 0.0], [3.0, 1.0], [2.0, 0.0], [1.0, 1.0]])
    # ch0 vs next0: exactly -1 -> 1; ch1 vs next1: exactly -1 -> 1 (ch1 vs next0: 0.447)
    out = F.activation_correlation(this, nxt)
    assert torch.allclose(out, torch.tensor([1.0, 1.0]), atol=1e-6)
    nxt2 = torch.tensor([[1.0], [2.0], [1.0], [2.0]])  # corr(ch0, .) = 0.4472, corr(ch1, .) = -1
    assert torch.allclose(F.activation_correlation(this, nxt2), torch.tensor([1 / math.sqrt(5), 1.0]), atol=1e-6)


def test_oracle_is_loss_increase():
    out = F.oracle(lambda j: [2.0, 2.5, 1.9][j], 3, 2.0)
    assert torch.allclose(out, torch.tensor([0.0, 0.5, -0.1]))


def test_aofp_finds_the_harmless_channel_by_halving():
    # damage = sum of channel weights silenced; channel 5 harmless, others cost their index+1
    cost = [1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 6.0, 7.0]
    gen = torch.Generator().manual_seed(0)
    s = F.aofp(lambda sel: sum(cost[j] for j in sel), 8, gen)
    assert int(s.argmin()) == 5 and s[5] == 0
    # 3 halvings of 8 channels: 4 leave at level 0 (score 3 + tie-break < 0.5), 2 at level 1
    # (score 2.x), 1 at level 2 (1.x), the survivor scores 0
    levels = sorted(int(v) for v in s)
    assert levels == [0, 1, 2, 2, 3, 3, 3, 3] and s.max() < 3.5


def test_random_search_keeps_the_best_candidate():
    gen = torch.Generator().manual_seed(0)
    # loss is the number of "important" channels {0, 1} among those removed: best removes neither
    s = F.random_search(lambda sel: float(len({0, 1} & set(sel))), 6, 2, 32, gen)
    lowest_two = set(s.argsort()[:2].tolist())
    assert not lowest_two & {0, 1}
    assert (s[[0, 1]] >= 1).all()


@pytest.mark.parametrize("name", list(CRITERIA))
def test_every_handler_scores_every_channel(name):
    model = build_model("lenet5").eval()
    x = torch.randn(32, 1, 28, 28)
    y = torch.randint(0, 10, (32,))
    groups = find_groups(model, x[:1])
    sub = [g for g in groups if g.name != "fc1"]  # keep the oracle fast: conv groups only
    out = score(model, sub, name, ScoreData(x, y, batch_size=16, candidates=4))
    assert {k: v.shape for k, v in out.items()} == {"conv1": (20,), "conv2": (50,)}


def test_data_criteria_without_data_fail_clearly():
    model = build_model("lenet5")
    groups = find_groups(model, torch.randn(1, 1, 28, 28))
    with pytest.raises(ConfigError, match="needs data"):
        score(model, groups, "apoz", None)
    with pytest.raises(ConfigError, match="allowed"):
        score(model, groups, "nope", None)


def test_l1_handler_sums_coupled_convs():
    model = build_model("resnet20")
    groups = find_groups(model, torch.randn(1, 1, 28, 28))
    g = next(g for g in groups if g.name == "conv1")
    out = score(model, [g], "l1")["conv1"]
    mods = dict(model.named_modules())
    expect = sum(mods[m].weight.abs().flatten(1).sum(1) for m in
                 ["conv1", "layers.0.conv2", "layers.1.conv2", "layers.2.conv2"])
    assert torch.allclose(out, expect)


def test_apoz_handler_reads_relu_of_site():
    conv = nn.Conv2d(1, 2, 1, bias=True)
    model = nn.Sequential(conv, nn.ReLU(), nn.Conv2d(2, 3, 1), nn.Flatten(), nn.Linear(3 * 4, 2))
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
        conv.bias.zero_()
    x = torch.tensor([1.0, -1.0, 2.0, -2.0]).view(1, 1, 2, 2)
    groups = [g for g in find_groups(model, x) if g.name == "0"]
    out = score(model, groups, "apoz", ScoreData(x, torch.tensor([0])))["0"]
    assert torch.allclose(out, torch.tensor([0.5, 0.5]))  # each channel zero at 2 of 4 pixels


def test_a_registered_criterion_is_known_to_score_the_pruner_and_recipes():
    from nncompress.prune.structured import (
        Criterion,
        StructuredPruneConfig,
        register_criterion,
        structured_prune,
    )
    from nncompress.recipes import parse_recipe

    def reversed_l1(model, groups, data=None):  # removes the largest filters first
        return {name: -s for name, s in CRITERIA["l1"](model, groups).items()}

    register_criterion(Criterion("reversed-l1", reversed_l1, needs_data=False))
    try:
        model = build_model("lenet5")
        x = torch.randn(1, 1, 28, 28)
        norms = model.conv1.weight.detach().abs().sum((1, 2, 3))
        res = structured_prune(model, StructuredPruneConfig("reversed-l1", target=0.3), example_inputs=x)
        assert res.criterion == "reversed-l1" and model.conv1.out_channels < 20
        kept = model.conv1.weight.detach().abs().sum((1, 2, 3))  # the smallest filters survive
        assert kept.max() <= norms.sort().values[len(kept) - 1] + 1e-6
        raw = {"name": "r", "stages": [{"structured": {"criterion": "reversed-l1", "target": 0.3}}]}
        assert parse_recipe(raw).stages[0].config.criterion == "reversed-l1"
    finally:
        CRITERIA.pop("reversed-l1")
