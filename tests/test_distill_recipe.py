"""The ``distill`` option of the prune and quantize recipe stages (K1 during compression)."""

import copy

import pytest
import torch

from nncompress.errors import ConfigError
from nncompress.recipes import STAGES, parse_recipe
from nncompress.recipes.runner import build_context


def tiny(distill=None, quant_distill=None, label_smoothing=0.0) -> dict:
    prune = {"schedule": [0.5, {"fc1": 0.9, "default": 0.8}],
             "retrain": {"epochs": 1, "lr": 0.02, "batch_size": 64, "label_smoothing": label_smoothing},
             "final_retrain": {"epochs": 1, "lr": 0.01, "batch_size": 64}, "remove_dead_neurons": True}
    quant = {"method": "kmeans", "bits_fc": 4, "finetune": {"epochs": 1, "lr": 0.001, "batch_size": 64}}
    if distill is not None:
        prune["distill"] = distill
    if quant_distill is not None:
        quant["distill"] = quant_distill
    return {"name": "tiny", "model": {"name": "lenet300", "kwargs": {"dropout": 0.2}},
            "data": {"name": "digits", "train_subset": 200},
            "stages": [{"train": {"epochs": 2, "lr": 0.05, "batch_size": 64}}, {"prune": prune},
                       {"quantize": quant}]}


def run_stages(raw: dict, after_train=None):
    recipe = parse_recipe(raw)
    ctx = build_context(recipe)
    for stage in recipe.stages:
        STAGES.get(stage.name).run(ctx, stage.config)
        if stage.name == "train" and after_train is not None:
            after_train(ctx)
    return ctx


@pytest.mark.parametrize("distill,match", [
    ({"alpha": 1.5}, r"stages\[1\]\.prune\.distill: alpha must be in \[0, 1\], got 1.5"),
    ({"alpha": 0.5, "tau": 3}, r"stages\[1\]\.prune\.distill: unknown key\(s\) \['tau'\]"),
    ({"temperature": 0}, r"stages\[1\]\.prune\.distill: temperature must be > 0"),
    ({"temperature": "hot"}, r"stages\[1\]\.prune\.distill\.temperature: expected a number"),
    (0.7, r"stages\[1\]\.prune\.distill: expected a mapping"),
])
def test_bad_distill_rejected_with_names(distill, match):
    with pytest.raises(ConfigError, match=match):
        parse_recipe(tiny(distill=distill), "r.yaml")
    with pytest.raises(ConfigError, match=match.replace("1", "2", 1).replace("prune", "quantize")):
        parse_recipe(tiny(quant_distill=distill), "r.yaml")


def test_alpha_zero_trains_exactly_as_without_distillation():
    plain = run_stages(tiny(label_smoothing=0.1))
    zero = run_stages(tiny({"alpha": 0.0, "temperature": 3.0}, {"alpha": 0.0}, label_smoothing=0.1))
    assert plain.teacher is None and zero.teacher is not None
    a, b = plain.model.state_dict(), zero.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_teacher_is_the_frozen_trained_model_and_masks_hold():
    kept = {}
    raw = tiny({"alpha": 0.7, "temperature": 3.0}, {"alpha": 0.7, "temperature": 3.0})
    raw["stages"][1]["prune"]["remove_dead_neurons"] = False  # keep the masks of the cuts
    ctx = run_stages(raw, after_train=lambda c: kept.update(copy.deepcopy(c.model.state_dict())))
    teacher = ctx.teacher
    assert teacher is not ctx.model and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    for k, v in teacher.state_dict().items():  # never updated by the distilling stages
        assert torch.equal(v, kept[k]), k
    weights = dict(ctx.model.named_parameters())
    for name, mask in ctx.masks.items():  # pruned weights exactly zero after KD retraining + sharing
        assert torch.all(weights[name][~mask] == 0), name
    assert ctx.masks.sparsity()["fc1.weight"] == pytest.approx(0.9, abs=1e-4)
    assert int((ctx.model.fc1.weight != 0).sum()) <= round(0.1 * 784 * 300)
    plain = run_stages(tiny())
    assert not torch.equal(plain.model.fc3.weight, ctx.model.fc3.weight)  # KD changed the training


def test_without_train_stage_the_unpruned_model_teaches():
    raw = tiny({"alpha": 0.5})
    raw["stages"] = raw["stages"][1:2]
    recipe = parse_recipe(raw)
    ctx = build_context(recipe)
    before = copy.deepcopy(ctx.model.state_dict())
    STAGES.get("prune").run(ctx, recipe.stages[0].config)
    for k, v in ctx.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
