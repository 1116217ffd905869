"""The ``decompose`` stage's registered methods beyond low rank: ``tt`` (L6),
``toeplitz`` / ``circulant`` (L7), ``ternary`` (L8), through ``parse_recipe`` and
``run_recipe`` on tiny digits models; bad options are refused naming the key; the method
registry and the recipe reference."""

import math

import pytest
import torch
from torch import nn

import nncompress
from nncompress.decompose import DECOMPOSE_METHODS, apply_method, method_config
from nncompress.decompose.registry import DecomposeRegistry
from nncompress.decompose.ternary import TernaryFactorized
from nncompress.decompose.toeplitz import StructuredLinear, structured_dense
from nncompress.decompose.tt import TTLinear
from nncompress.errors import ConfigError
from nncompress.recipes import parse_recipe
from nncompress.recipes.runner import run_recipe

FINETUNE = {"epochs": 1, "lr": 0.01, "batch_size": 64}


def recipe(stages: list, model: str = "lenet300", subset: int = 128) -> dict:
    return {"name": "methods", "model": {"name": model}, "data": {"name": "digits", "train_subset": subset},
            "stages": stages}


def run(raw: dict, out) -> tuple[dict, object]:
    held = {}
    report = run_recipe(parse_recipe(raw), out, stage_hook=lambda _name, ctx: held.update(ctx=ctx))
    return report, held["ctx"]


def assert_loads_back(path, ctx) -> nn.Module:
    """The saved file (no skeleton) gives the evaluated model's exact outputs."""
    loaded = nncompress.load(path)
    ctx.model.eval()
    x = torch.stack([ctx.test_data[i][0] for i in range(8)])
    with torch.no_grad():
        assert torch.equal(loaded(x), ctx.model(x))
    return loaded


def test_registry_names_each_method_with_its_config():
    assert {"lowrank", "tt", "toeplitz", "circulant", "ternary"} <= set(DECOMPOSE_METHODS.names())
    assert method_config("circulant", {}).kind == "circulant"
    assert method_config("toeplitz", {"include": ["fc1"]}).include == ["fc1"]
    assert method_config("tt", {"cores": 2, "rank": 3}).rank == 3
    reg = DecomposeRegistry()
    with pytest.raises(TypeError, match="fixed options"):
        reg.register("x", type(method_config("tt", {})), lambda m, c: {}, "doc", fixed={"kinds": 1})


def test_apply_method_matches_the_entry_point():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(12, 6))
    w = m[0].weight.detach().clone()
    rep = apply_method(m, "circulant", method_config("circulant", {}))
    assert isinstance(m[0], StructuredLinear) and rep["0"]["params_after"] == 12
    # the nearest circulant: every entry is the mean of its (i - j) mod 12 class
    v = m[0].vector.detach()
    assert torch.allclose(v[1], torch.stack([w[i, (i - 1) % 12] for i in range(6)]).mean(), atol=1e-6)
    assert torch.equal(m[0].dense_weight(), structured_dense(v, "circulant", 12, 6))


def test_tt_stage_on_lenet300_loads_back(tmp_path):
    raw = recipe([{"decompose": {"method": "tt", "cores": 2, "rank": 4, "include": ["fc1", "fc2"],
                                 "finetune": FINETUNE}}])
    report, ctx = run(raw, tmp_path / "m.nnc")
    stage = report["stages"][0]
    assert stage["method"] == "tt" and {r["name"] for r in stage["layers"]} == {"fc1", "fc2"}
    fc1 = ctx.model.fc1
    assert isinstance(fc1, TTLinear) and isinstance(ctx.model.fc3, nn.Linear)
    assert fc1.ranks == [1, 4, 1] and math.prod(fc1.in_modes) == 784 and math.prod(fc1.out_modes) == 300
    layer = next(r for r in stage["layers"] if r["name"] == "fc1")
    assert layer["params_after"] == fc1.num_tt_params() == sum(
        r0 * n * m * r1 for r0, n, m, r1 in zip(fc1.ranks, fc1.in_modes, fc1.out_modes, fc1.ranks[1:]))
    assert stage["parameters_after"] < stage["parameters_before"] / 10
    assert isinstance(assert_loads_back(tmp_path / "m.nnc", ctx).fc1, TTLinear)


@pytest.mark.parametrize("method", ["toeplitz", "circulant"])
def test_structured_stage_on_lenet300_loads_back(tmp_path, method):
    raw = recipe([{"decompose": {"method": method, "exclude": ["fc3"]}}])
    report, ctx = run(raw, tmp_path / "m.nnc")
    stage = report["stages"][0]
    assert stage["method"] == method and [r["name"] for r in stage["layers"]] == ["fc1", "fc2"]
    fc1 = ctx.model.fc1
    assert isinstance(fc1, StructuredLinear) and fc1.kind == method
    assert fc1.vector.numel() == (784 + 300 - 1 if method == "toeplitz" else 784)
    assert 0 < stage["layers"][0]["relative_error"] < 1.0
    loaded = assert_loads_back(tmp_path / "m.nnc", ctx)
    assert loaded.fc1.kind == method


def test_ternary_stage_on_lenet5_conv_and_fc_loads_back(tmp_path):
    raw = recipe([{"decompose": {"method": "ternary", "rank_ratio": 0.5, "scale_bits": 6,
                                 "include": ["conv2", "fc1"], "finetune": FINETUNE}}], model="lenet5")
    report, ctx = run(raw, tmp_path / "m.nnc")
    stage = report["stages"][0]
    assert stage["method"] == "ternary" and {r["name"] for r in stage["layers"]} == {"conv2", "fc1"}
    for name in ("conv2", "fc1"):
        layer = ctx.model.get_submodule(name)
        assert isinstance(layer, TernaryFactorized)
        assert set(torch.cat([layer.a.flatten(), layer.b.flatten()]).unique().tolist()) <= {-1.0, 0.0, 1.0}
        assert layer.scale_codes.abs().max() <= 2 ** 5 - 1  # 6-bit signed codes
    assert ctx.model.conv2.kernel == (5, 5) and isinstance(ctx.model.conv1, nn.Conv2d)
    assert isinstance(assert_loads_back(tmp_path / "m.nnc", ctx).conv2, TernaryFactorized)


def test_lowrank_stays_the_default_method(tmp_path):
    cfg = parse_recipe(recipe([{"decompose": {"layers": {"fc1": {"method": "svd", "rank": 8}}}}])).stages[0].config
    assert cfg.method == "lowrank" and cfg.config.layers["fc1"].rank == 8


@pytest.mark.parametrize("stage,match", [
    ({"method": "tt", "cores": 1}, r"stages\[0\]\.decompose: cores must be an integer in \[2, 8\], got 1"),
    ({"method": "tt", "rank": 0}, r"stages\[0\]\.decompose: rank must be an integer in \[1, 65536\], got 0"),
    ({"method": "tt", "rnk": 4}, r"unknown key\(s\) \['rnk'\] for method 'tt'; allowed: \['cores', 'exclude'"),
    ({"method": "tt", "layers": {"fc1": {"method": "svd", "rank": 2}}}, r"unknown key\(s\) \['layers'\]"),
    ({"method": "tt", "cores": "3"}, r"decompose\.cores: expected an integer, got '3'"),
    ({"method": "toeplitz", "kind": "circulant"}, r"key\(s\) \['kind'\] are set by method 'toeplitz'"),
    ({"method": "circulant", "include": "fc1"}, r"decompose\.include: expected a list"),
    ({"method": "ternary", "rank_ratio": 5}, r"rank_ratio=5(\.0)? out of range; allowed: \(0, 4\]"),
    ({"method": "ternary", "scale_bits": 1}, r"scale_bits must be an integer in \[2, 16\], got 1"),
    ({"method": "ternary", "distill": {"alpha": 0.5}}, "add a 'finetune'"),
    ({"method": "svd"}, r"method 'svd' not allowed; use one of \[.*'tt'"),
])
def test_bad_method_options_are_refused_naming_the_key(stage, match):
    with pytest.raises(ConfigError, match=match):
        parse_recipe(recipe([{"decompose": stage}]), "r.yaml")


def test_a_glob_matching_no_layer_is_refused_before_any_stage(tmp_path):
    raw = recipe([{"decompose": {"method": "tt", "include": ["fc9"]}}])
    with pytest.raises(ConfigError, match=r"include\[0\]: 'fc9' matches no layer"):
        run(raw, tmp_path / "m.nnc")


def test_recipe_reference_documents_the_methods(capsys):
    from nncompress.cli import main

    assert main(["recipes", "--describe"]) == 0
    text = capsys.readouterr().out
    stage = text.split("\nstage decompose: ")[1].split("\n\n")[0]
    assert "\n  method: str = 'lowrank'\n" in stage
    for method, key in [("tt", "cores"), ("toeplitz", "include"), ("circulant", "exclude"),
                        ("ternary", "scale_bits"), ("lowrank", "layers")]:
        block = text.split(f"\ndecompose params of {method}: ")[1].split("\n\n")[0]
        assert f"\n  {key}: " in block
