"""One verb for every quantizer: ``quantize_model(model, config, run)`` dispatching on the
config type, the recipe stage mapping YAML to that config, and a quantizer added from a
test file (a config + a handler) running through ``parse_recipe`` and the stage without
any change to ``recipes/``."""

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import nncompress
from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.quantize import (
    QUANTIZERS,
    BFPConfig,
    HashedConfig,
    KMeansConfig,
    QuantizerConfig,
    QuantizeResult,
    QuantizeRun,
    make_config,
    quantize_model,
    register_quantizer,
)
from nncompress.recipes import STAGES, parse_recipe
from nncompress.recipes.runner import build_context, run_recipe
from nncompress.train import Callback, TrainConfig

FINETUNE = {"epochs": 1, "lr": 0.01, "batch_size": 64}


# -- a quantizer defined here: weights rounded to a grid of step `step` -------------------


@dataclass
class GridConfig(QuantizerConfig):
    """Round every Linear weight to a multiple of ``step`` (> 0); ``layers``: the Linear
    layers to round (default all)."""

    step: float = 0.25
    layers: list[str] | None = None

    def __post_init__(self):
        if not self.step > 0:
            raise ConfigError(f"step={self.step!r} out of range; allowed: > 0")

    def training(self) -> str:
        return "optional"


class _Regrid(Callback):
    def __init__(self, weights, step):
        self.weights, self.step = weights, step

    @torch.no_grad()
    def after_optimizer_step(self, model, optimizer):
        for w in self.weights:
            w.copy_(torch.round(w / self.step) * self.step)


def _grid(model: nn.Module, config: GridConfig, run: QuantizeRun) -> QuantizeResult:
    weights = [m.weight for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and (config.layers is None or n in config.layers)]
    regrid = _Regrid(weights, config.step)
    regrid.after_optimizer_step(model, None)
    run.mark("after_grid")
    if run.finetune is not None:
        run.fit(model, run.finetune, [regrid])
    return QuantizeResult(model, {"layers": len(weights), "step": config.step})


@pytest.fixture
def grid():
    register_quantizer(GridConfig, name="grid")(_grid)
    yield
    QUANTIZERS.unregister("grid")


def _recipe(quant: dict, train: bool = True, subset: int = 128) -> dict:
    stages = [{"train": {"epochs": 1, "lr": 0.05, "batch_size": 64}}] if train else []
    return {"name": "q", "model": {"name": "lenet300"}, "data": {"name": "digits", "train_subset": subset},
            "stages": [*stages, {"quantize": quant}]}


def _run_stages(raw: dict):
    recipe = parse_recipe(raw)
    ctx = build_context(recipe)
    reports = [STAGES.get(s.name).run(ctx, s.config) for s in recipe.stages]
    return ctx, reports


def _on_grid(w: torch.Tensor, step: float) -> bool:
    return torch.equal(w, torch.round(w / step) * step)


def test_a_quantizer_from_a_test_file_runs_through_the_recipe_stage(grid, tmp_path):
    quant = {"method": "grid", "step": 0.125, "layers": ["fc1", "fc2"], "finetune": FINETUNE,
             "distill": {"alpha": 0.5}}
    ctx, reports = _run_stages(_recipe(quant))
    assert reports[-1] == {"method": "grid", "layers": 2, "step": 0.125,
                           "distill": {"alpha": 0.5, "temperature": 4.0}}
    assert _on_grid(ctx.model.fc1.weight, 0.125) and _on_grid(ctx.model.fc2.weight, 0.125)
    assert not _on_grid(ctx.model.fc3.weight, 0.125)
    assert "after_grid" in ctx.snapshots and ctx.teacher is not None
    # the same options nested under params (older recipes), end to end with the file
    report = run_recipe(parse_recipe(_recipe({"method": "grid", "params": {"step": 0.5}}, train=False)),
                        tmp_path / "g.nnc")
    assert report["stages"][0]["step"] == 0.5
    assert _on_grid(nncompress.load(tmp_path / "g.nnc").fc3.weight, 0.5)


@pytest.mark.parametrize("quant,match", [
    ({"method": "grid", "step": 0}, r"stages\[1\]\.quantize: method 'grid': step=0\.0 out of range; allowed: > 0"),
    ({"method": "grid", "step": "fine"}, r"method 'grid'\.step: expected a number, got 'fine'"),
    ({"method": "grid", "stp": 1}, r"unknown key\(s\) \['stp'\]; allowed: \[.*'step'"),
    ({"method": "grid", "bits_fc": 4}, r"unknown key\(s\) \['bits_fc'\]; allowed: \['layers', 'step'\] "
                                       r"\('bits_fc' is an option of \['kmeans'\]\)"),
    ({"method": "grid", "step": 1, "params": {"step": 2}}, r"\['step'\] given at the top level and in 'params'"),
    ({"method": "grid", "distill": {"alpha": 0.5}}, "method 'grid': 'distill' acts during training; add a 'finetune'"),
    ({"method": "gird"}, r"unknown method 'gird'; allowed: \[.*'grid'\]"),
])
def test_the_config_checks_its_keys_when_the_recipe_is_read(grid, quant, match):
    with pytest.raises(ConfigError, match=match):
        parse_recipe(_recipe(quant))


def test_unregistered_method_is_unknown_again(grid):
    QUANTIZERS.unregister("grid")
    with pytest.raises(ConfigError, match="unknown method 'grid'"):
        parse_recipe(_recipe({"method": "grid"}))


# -- distillation and fine-tuning: the same for every method -------------------------------


def test_distill_works_with_a_low_bit_method():
    """``distill`` was k-means/hashed/BWNH glue; through the run it reaches every method
    that trains: alpha 0 trains exactly as without it, alpha > 0 changes the training."""
    plain = {"method": "twn", "finetune": {**FINETUNE, "label_smoothing": 0.1}}
    ctx_plain, _ = _run_stages(_recipe(plain))
    ctx_zero, rep_zero = _run_stages(_recipe({**plain, "distill": {"alpha": 0.0}}))
    ctx_kd, rep_kd = _run_stages(_recipe({**plain, "distill": {"alpha": 0.9, "temperature": 2.0}}))
    for k, v in ctx_plain.model.state_dict().items():
        assert torch.equal(v, ctx_zero.model.state_dict()[k]), k
    assert not torch.equal(ctx_plain.model.fc1.weight, ctx_kd.model.fc1.weight)
    assert rep_kd[-1]["distill"] == {"alpha": 0.9, "temperature": 2.0}
    assert rep_zero[-1]["method"] == "twn" and rep_zero[-1]["params"]["keep_zeros"] is True


def test_a_method_that_always_trains_distils_without_a_finetune_block():
    ctx, reports = _run_stages(_recipe({"method": "twn", "distill": {"alpha": 0.5}}, subset=64))
    assert reports[-1]["distill"] == {"alpha": 0.5, "temperature": 4.0}
    assert len(torch.unique(ctx.model.fc2.weight)) <= 3


# -- the Python API ------------------------------------------------------------------------


def test_quantize_model_dispatches_on_the_config_type(tiny_data):
    model = build_model("lenet300")
    res = quantize_model(model, KMeansConfig(bits_fc=3), QuantizeRun(
        train_data=tiny_data, finetune=TrainConfig(epochs=1, max_steps=2, batch_size=16)))
    assert res.model is model and set(res.summary["layers"]) == {"fc1.weight", "fc2.weight", "fc3.weight"}
    assert len(torch.unique(model.fc2.weight)) <= 2**3
    res = quantize_model(build_model("lenet300"), BFPConfig(mantissa_bits=4, block=None, include=["fc3"]))
    assert set(res.summary["layers"]) == {"fc3.weight"}
    assert len(torch.unique(res.model.fc3.weight)) <= 15


def test_the_old_call_by_name_still_works_for_every_method(tiny_data):
    model = quantize_model(build_model("lenet300"), "hashed", {"compression": 4, "seed": 1})
    assert model.fc1.weight.shape == (784 * 300 // 4,)
    model = quantize_model(build_model("lenet300"), "bf16", calib_batches=2)
    assert torch.equal(model.fc1.weight, model.fc1.weight.bfloat16().float())
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['bogus'\] for method 'kmeans'"):
        quantize_model(build_model("lenet300"), "kmeans", {"bogus": 1})


@dataclass
class _Unregistered(QuantizerConfig):
    x: list[int] = field(default_factory=list)


@pytest.mark.parametrize("config,run,match", [
    (_Unregistered(), None, "no quantizer is registered for _Unregistered"),
    (BFPConfig(), QuantizeRun(finetune=TrainConfig()), r"method 'bfp' does not train \(post-training\)"),
    (make_config("int8"), QuantizeRun(distill=lambda t: None), r"method 'int8' does not train"),
    (HashedConfig(ratio=0.5), QuantizeRun(finetune=TrainConfig()), "method 'hashed' trains and needs train_data"),
    (make_config("twn"), QuantizeRun(), "method 'twn' trains and needs train_data"),
])
def test_run_settings_the_method_cannot_use_are_refused(config, run, match):
    with pytest.raises(ConfigError, match=match):
        quantize_model(build_model("lenet300"), config, run)


def test_a_run_takes_loss_fn_or_distill_not_both():
    with pytest.raises(ConfigError, match="loss_fn or distill, not both"):
        QuantizeRun(loss_fn=lambda logits, y, x: logits.sum(), distill=lambda train: None)


def test_registering_checks_the_config_type():
    class NotADataclass:
        pass

    with pytest.raises(TypeError, match="not a dataclass subclass of QuantizerConfig"):
        register_quantizer(NotADataclass, name="nope")
    with pytest.raises(ConfigError, match="already the config of quantizer 'kmeans'"):
        register_quantizer(KMeansConfig, name="kmeans2")
