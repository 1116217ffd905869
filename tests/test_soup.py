"""Uniform model soup (nncompress.train.soup) and the prune stage's final_soup option."""

from dataclasses import replace

import pytest
import torch

from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.prune.mask import MaskCallback, Masks
from nncompress.train import TrainConfig, fit
from nncompress.train.soup import SEED_STRIDE, average_states, soup_fit

CFG = TrainConfig(epochs=2, lr=0.05, batch_size=32, momentum=0.9, weight_decay=1e-3, seed=5)


def test_average_states_is_the_elementwise_mean_and_keeps_counters():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([2.0, 6.0]), "n": torch.tensor(7)}
    c = {"w": torch.tensor([0.0, 1.0]), "n": torch.tensor(9)}
    out = average_states([a, b, c])
    assert torch.equal(out["w"], torch.tensor([1.0, 3.0]))
    assert out["n"].item() == 3 and out["n"].dtype == a["n"].dtype  # integer counters from the first
    with pytest.raises(ConfigError, match="at least one"):
        average_states([])
    with pytest.raises(ConfigError, match="keys"):
        average_states([a, {"w": a["w"]}])
    with pytest.raises(ConfigError, match="shapes"):
        average_states([a, {"w": torch.zeros(3), "n": a["n"]}])


def _masked_model():
    torch.manual_seed(0)
    model = build_model("lenet300")
    masks = Masks({"fc1.weight": torch.rand(300, 784) > 0.9, "fc2.weight": torch.rand(100, 300) > 0.7})
    masks.apply(model)
    return model, masks


def test_one_ingredient_is_exactly_fit(tiny_data):
    a, masks = _masked_model()
    b, _ = _masked_model()
    fit(a, tiny_data, CFG, callbacks=[MaskCallback(masks)])
    res = soup_fit(b, tiny_data, CFG, 1, callbacks=lambda: [MaskCallback(masks)])
    assert len(res.histories) == 1 and res.soup_score is None
    for (k, v), w in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(v, w), k


def test_soup_is_the_mean_of_independent_runs_and_pruned_weights_stay_zero(tiny_data):
    model, masks = _masked_model()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    scores = iter(range(100))
    res = soup_fit(model, tiny_data, CFG, 3, callbacks=lambda: [MaskCallback(masks)],
                   evaluate_fn=lambda m: float(next(scores)))
    runs = []
    for i in range(3):  # each ingredient by hand: same start, seed + i * stride
        m = build_model("lenet300")
        m.load_state_dict(start)
        fit(m, tiny_data, replace(CFG, seed=CFG.seed + i * SEED_STRIDE),
            callbacks=[MaskCallback(masks)])
        runs.append(m.state_dict())
    assert not torch.equal(runs[0]["fc1.weight"], runs[1]["fc1.weight"])  # other data orders
    for k, v in model.state_dict().items():
        assert torch.allclose(v, (runs[0][k] + runs[1][k] + runs[2][k]) / 3, atol=1e-6), k
    for name, keep in masks.items():  # pruned weights exactly zero in the soup
        assert torch.all(dict(model.named_parameters())[name][~keep] == 0), name
    # evaluate_fn: the 3 ingredients, then the soup of the first 2, then the soup of all 3
    assert res.ingredient_scores == [0.0, 1.0, 2.0] and res.prefix_scores == [3.0, 4.0] and res.soup_score == 4.0


@pytest.mark.parametrize("bad", [0, -2, True, 1.5])
def test_bad_ingredient_counts_are_rejected(tiny_data, bad):
    model, _ = _masked_model()
    with pytest.raises(ConfigError, match="ingredients"):
        soup_fit(model, tiny_data, CFG, bad)


def test_prune_stage_final_soup_reports_ingredients_and_validates():
    from nncompress.recipes import parse_recipe
    from nncompress.recipes.runner import build_context
    from nncompress.recipes.stages import STAGES

    prune = {"schedule": [{"fc1": 0.8, "fc2": 0.7, "fc3": 0.5}], "retrain": {"epochs": 1, "batch_size": 64},
             "final_retrain": {"epochs": 1, "batch_size": 64}, "final_soup": 2}
    raw = {"name": "s", "model": {"name": "lenet300"}, "data": {"name": "digits", "train_subset": 128},
           "stages": [{"prune": prune}]}
    recipe = parse_recipe(raw)
    ctx = build_context(recipe)
    out = STAGES.get("prune").run(ctx, recipe.stages[0].config)
    soup = out["soup"]
    assert soup["ingredients"] == 2 and len(soup["ingredient_accuracy"]) == 2
    assert soup["soup_of_first_accuracy"] == [soup["soup_accuracy"]]
    assert ctx.masks.total_sparsity() == pytest.approx(out["total_sparsity"])
    for name, keep in ctx.masks.items():
        assert torch.all(dict(ctx.model.named_parameters())[name][~keep] == 0), name
    for bad, match in [(0, "final_soup=0"), ("two", "final_soup")]:
        with pytest.raises(ConfigError, match=match):
            parse_recipe({**raw, "stages": [{"prune": {**prune, "final_soup": bad}}]})
    with pytest.raises(ConfigError, match="add a 'final_retrain'"):
        parse_recipe({**raw, "stages": [{"prune": {k: v for k, v in prune.items() if k != "final_retrain"}}]})
