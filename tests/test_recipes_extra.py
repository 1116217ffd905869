"""Recipe stages/options of the techniques added last: the ``decompose`` stage (L1-L5),
attention transfer in ``distill:`` (K2), and ``quantize`` methods ``hashed`` (Q13) and
``bfp`` (Q15). Tiny recipes on scikit-learn's digits, run through the runner."""

import json

import pytest
import torch
import yaml

import nncompress
from nncompress.errors import ConfigError
from nncompress.quantize.hashed import HashedLinear
from nncompress.recipes import STAGES, load_recipe, parse_recipe
from nncompress.recipes.runner import build_context, run_recipe

TRAIN = {"train": {"epochs": 1, "lr": 0.05, "batch_size": 64}}
FINETUNE = {"epochs": 1, "lr": 0.01, "batch_size": 64}


def recipe(stages: list, model: str = "lenet300", subset: int = 200) -> dict:
    return {"name": "extra", "model": {"name": model}, "data": {"name": "digits", "train_subset": subset},
            "stages": stages}


def run(raw: dict, out, report_dir=None) -> tuple[dict, object]:
    """Run ``raw`` through the runner; returns the report and the final context."""
    held = {}
    report = run_recipe(parse_recipe(raw), out, report_dir,
                        stage_hook=lambda _name, ctx: held.update(ctx=ctx))
    return report, held["ctx"]


def batch(ctx, n: int = 16) -> torch.Tensor:
    return torch.stack([ctx.test_data[i][0] for i in range(n)])


def assert_loads_back(path, ctx) -> torch.nn.Module:
    """``nncompress.load`` without a skeleton gives the evaluated model's exact outputs."""
    loaded = nncompress.load(path)
    ctx.model.eval()
    x = batch(ctx)
    with torch.no_grad():
        assert torch.equal(loaded(x), ctx.model(x))
    return loaded


def run_stages(raw: dict):
    recipe_ = parse_recipe(raw)
    ctx = build_context(recipe_)
    reports = [STAGES.get(s.name).run(ctx, s.config) for s in recipe_.stages]
    return ctx, reports


# -- decompose (L1-L5) ---------------------------------------------------------------------


def test_decompose_stage_shrinks_lenet300_and_file_loads_back(tmp_path):
    raw = recipe([TRAIN, {"prune": {"sparsity": {"fc3": 0.5}}},
                  {"decompose": {"layers": {"fc1": {"method": "svd", "rank": 16},
                                            "fc2": {"method": "svd", "energy": 0.9}},
                                 "finetune": FINETUNE}},
                  {"encode": {"index_bits_fc": 5}}, "evaluate"])
    report, ctx = run(raw, tmp_path / "m.nnc", tmp_path / "report")
    stage = report["stages"][2]
    assert stage["stage"] == "decompose" and stage["accuracy"] is not None
    assert json.loads((tmp_path / "report" / "report.json").read_text())["stages"][2]["layers"][0]["name"] == "fc1"
    assert stage["parameters_after"] < stage["parameters_before"]
    assert [r["ranks"] for r in stage["layers"]][0] == [16]
    assert sum(p.numel() for p in ctx.model.parameters()) == stage["parameters_after"]
    assert ctx.masks is not None and set(ctx.masks) == {"fc3.weight"}  # pruned layer kept its mask
    assert int((ctx.model.fc3.weight == 0).sum()) >= 500  # and fine-tuning kept its zeros
    info = nncompress.read_info(tmp_path / "m.nnc")
    assert info.lowrank["fc1"]["method"] == "svd" and info.lowrank["fc1"]["ranks"] == [16]
    loaded = assert_loads_back(tmp_path / "m.nnc", ctx)
    assert loaded.fc1[0].weight.shape == (16, 784)
    assert report["summary"]["compressed_accuracy"] == report["stages"][-2]["accuracy"]


def test_decompose_conv_methods_on_lenet5_load_back(tmp_path):
    raw = recipe([{"decompose": {"layers": {"conv2": {"method": "tucker2", "ratio": 0.5},
                                            "conv1": {"method": "separable", "rank": 2},
                                            "fc*": {"method": "svd", "ratio": 0.2}}}}], model="lenet5")
    report, ctx = run(raw, tmp_path / "m.nnc")
    stage = report["stages"][0]
    assert {r["name"] for r in stage["layers"]} == {"conv1", "conv2", "fc1", "fc2"}
    assert stage["parameters_after"] < stage["parameters_before"] / 4
    assert_loads_back(tmp_path / "m.nnc", ctx)


# -- attention transfer (K2) in distill: -----------------------------------------------------


def at_recipe(distill: dict | None) -> dict:
    prune = {"sparsity": 0.5, "retrain": FINETUNE}
    if distill is not None:
        prune["distill"] = distill
    return recipe([TRAIN, {"prune": prune}], model="lenet5", subset=128)


def test_attention_transfer_term_is_used_and_hooks_removed():
    kd_only, _ = run_stages(at_recipe({"alpha": 0.5, "temperature": 4.0}))
    beta0, _ = run_stages(at_recipe({"alpha": 0.5, "temperature": 4.0,
                                     "attention": {"beta": 0.0, "layers": ["conv1", "conv2"]}}))
    ctx, reports = run_stages(at_recipe({"alpha": 0.5, "temperature": 4.0,
                                         "attention": {"beta": 1000, "layers": ["conv1", ["conv2", "conv2"]]}}))
    att = reports[1]["distill"]["attention"]
    assert att["pairs"] == [["conv1", "conv1"], ["conv2", "conv2"]]
    assert att["steps"] == 2 and att["mean_term"] > 0  # 128 samples, batch 64: two steps
    a, b, c = kd_only.model.state_dict(), beta0.model.state_dict(), ctx.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # beta 0: exactly K1 alone
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])  # the AT term changed training
    assert not any(m._forward_hooks for m in ctx.model.modules())  # student hooks removed
    mask = ctx.masks["conv1.weight"]
    assert torch.all(ctx.model.conv1.weight[~mask] == 0)


def test_attention_in_quantize_and_decompose_finetune(tmp_path):
    att = {"alpha": 0.0, "attention": {"layers": ["conv2"]}}
    raw = recipe([TRAIN, {"decompose": {"layers": {"conv2": {"method": "cp", "rank": 8}},
                                        "finetune": FINETUNE, "distill": att}},
                  {"quantize": {"method": "kmeans", "bits_fc": 4, "finetune": FINETUNE, "distill": att}}],
                 model="lenet5", subset=128)
    report, ctx = run(raw, tmp_path / "m.nnc")
    assert report["stages"][1]["distill"]["attention"]["mean_term"] > 0  # decomposed conv2 vs teacher's
    assert report["stages"][2]["distill"]["attention"]["steps"] == 2
    assert not any(m._forward_hooks for m in ctx.model.modules())


@pytest.mark.parametrize("attention,match", [
    ({"layers": ["conv1"], "betta": 5}, r"stages\[1\]\.prune\.distill\.attention: unknown key\(s\) \['betta'\]"),
    ({"layers": ["conv1"], "beta": -1}, r"attention\.beta=-1\.0 out of range; allowed: >= 0"),
    ({"layers": ["conv1"], "p": 0}, r"attention\.p=0\.0 out of range; allowed: > 0"),
    ({"layers": []}, "at least one layer"),
    ({"layers": [["conv1", "conv1", "conv2"]]}, r"attention\.layers\[0\].*not allowed"),
    ({"layers": [3]}, r"attention\.layers\[0\]: 3 does not fit"),
])
def test_bad_attention_rejected_with_names(attention, match):
    with pytest.raises(ConfigError, match=match):
        parse_recipe(at_recipe({"alpha": 0.5, "attention": attention}), "r.yaml")


@pytest.mark.parametrize("layers,match", [
    (["conv9"], "has no submodule 'conv9'"),
    (["fc1"], r"needs a \(B, C, H, W\) activation"),
    ([["conv1", "conv2"]], "spatial sizes differ"),
])
def test_bad_attention_layers_fail_before_training(layers, match):
    raw = at_recipe({"alpha": 0.5, "attention": {"layers": layers}})
    raw["stages"] = raw["stages"][1:]  # no train stage: fails at once
    ctx = build_context(parse_recipe(raw))
    with pytest.raises(ConfigError, match=match):
        STAGES.get("prune").run(ctx, parse_recipe(raw).stages[0].config)
    assert not any(m._forward_hooks for m in ctx.model.modules())


# -- quantize: hashed (Q13) and bfp (Q15) ---------------------------------------------------


def test_hashed_quantize_file_loads_back_without_skeleton(tmp_path):
    raw = recipe([TRAIN, {"quantize": {"method": "hashed", "params": {"compression": 8, "seed": 3},
                                       "exclude": ["fc3"], "finetune": FINETUNE}},
                  {"encode": {}}, "evaluate"])
    report, ctx = run(raw, tmp_path / "m.nnc", tmp_path / "report")
    assert (tmp_path / "report" / "report.md").is_file()
    layers = report["stages"][1]["layers"]
    assert set(layers) == {"fc1", "fc2"} and layers["fc1"]["buckets"] == 784 * 300 // 8
    assert isinstance(ctx.model.fc1, HashedLinear) and type(ctx.model.fc3) is torch.nn.Linear
    info = nncompress.read_info(tmp_path / "m.nnc")
    shapes = {t.name: t.shape for t in info.tensors}
    assert shapes["fc1.weight"] == [784 * 300 // 8] and "fc1.hash_seed" in shapes
    assert info.arch["name"] == "hashed" and info.arch["kwargs"]["base"]["name"] == "lenet300"
    loaded = assert_loads_back(tmp_path / "m.nnc", ctx)
    assert isinstance(loaded.fc2, HashedLinear) and loaded.fc2.seed == ctx.model.fc2.seed == 4
    assert info.file_bytes < 4 * 266610 / 5


def test_hashed_with_distill_and_bucket_map(tmp_path):
    raw = recipe([TRAIN, {"quantize": {"method": "hashed", "params": {"buckets": {"fc1": 5000}},
                                       "finetune": FINETUNE, "distill": {"alpha": 0.7}}}])
    report, ctx = run(raw, tmp_path / "m.nnc")
    assert report["stages"][1]["distill"] == {"alpha": 0.7, "temperature": 4.0}
    assert ctx.model.fc1.weight.shape == (5000,) and type(ctx.model.fc2) is torch.nn.Linear
    assert_loads_back(tmp_path / "m.nnc", ctx)


def test_bfp_quantize_file_loads_back_equal(tmp_path):
    raw = recipe([TRAIN, {"prune": {"sparsity": 0.5}},
                  {"quantize": {"method": "bfp", "params": {"mantissa_bits": 6, "block": 16, "biases": True}}},
                  {"encode": {"other": "fp16"}}, "evaluate"])
    report, ctx = run(raw, tmp_path / "m.nnc")
    stage = report["stages"][2]
    assert stage["method"] == "bfp" and 6 < stage["bits_per_value"] < 6.6
    codecs = {t.name: t.codec for t in nncompress.read_info(tmp_path / "m.nnc").tensors}
    assert codecs["fc1.weight"] == codecs["fc3.bias"] == "bfp"
    assert_loads_back(tmp_path / "m.nnc", ctx)
    assert ctx.masks.sparsity()["fc1.weight"] == pytest.approx(0.5, abs=1e-3)
    assert int((ctx.model.fc1.weight == 0).sum()) >= 784 * 150  # zeros survive the rounding


def test_bfp_one_exponent_per_tensor_and_include(tmp_path):
    raw = recipe([{"quantize": {"method": "bfp", "include": ["fc1"], "params": {"mantissa_bits": 4, "block": None}}}])
    report, ctx = run(raw, tmp_path / "m.nnc")
    assert set(report["stages"][0]["layers"]) == {"fc1.weight"}
    assert len(torch.unique(ctx.model.fc1.weight)) <= 15  # 4-bit signed mantissas, one exponent
    assert_loads_back(tmp_path / "m.nnc", ctx)


# -- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize("stage,match", [
    ({"decompose": {"layers": {"fc1": {"method": "svd", "rank": -2}}}},
     r"stages\[0\]\.decompose: layers\.fc1: rank=-2 out of range; allowed: integers >= 1"),
    ({"decompose": {"layers": {"fc1": {"method": "svd", "energy": 1.5}}}}, r"energy must be in \(0, 1\], got 1\.5"),
    ({"decompose": {"layers": {"fc1": {"method": "svd", "energy": 0}}}}, r"energy must be in \(0, 1\], got 0"),
    ({"decompose": {"layers": {"fc1": {"method": "svd", "ratio": 2}}}}, r"ratio must be in \(0, 1\], got 2"),
    ({"decompose": {"layers": {"fc1": {"method": "qr", "rank": 2}}}}, r"method 'qr' not allowed; use one of"),
    ({"decompose": {"layers": {"fc1": {"method": "svd", "rnk": 2}}}},
     r"decompose\.layers\.fc1: unknown key\(s\) \['rnk'\]"),
    ({"decompose": {"layers": {"fc1": {"method": "svd", "rank": 2, "energy": 0.5}}}}, "exactly one of rank/energy/ratio"),
    ({"decompose": {"layers": {"fc1": {"method": "svd", "rank": [2, 3]}}}}, "only tucker2 and btd"),
    ({"decompose": {"layers": {}}}, "'layers' must map at least one layer"),
    ({"decompose": {"layers": {"fc1": {"method": "svd", "rank": 2}}, "distill": {"alpha": 0.5}}}, "add a 'finetune'"),
    ({"decompose": {"layerz": {}}}, r"unknown key\(s\) \['layerz'\]"),
    ({"quantize": {"method": "hashd"}}, r"unknown method 'hashd'; allowed: \['kmeans', 'bfp', 'bwnh', 'hashed'"),
    ({"quantize": {"method": "hashed", "params": {"ratio": 1.5}}}, r"params: ratio=1\.5 out of range; allowed: \(0, 1\]"),
    ({"quantize": {"method": "hashed", "params": {"compression": 0.5}}}, r"compression=0\.5 out of range; allowed: >= 1"),
    ({"quantize": {"method": "hashed", "params": {"ratio": 0.5, "buckets": {"fc1": 9}}}}, "exactly one of ratio"),
    ({"quantize": {"method": "hashed", "params": {"buckets": {"fc1": 0}}}}, r"buckets\.fc1=0 out of range"),
    ({"quantize": {"method": "hashed", "params": {"bucket": 5}}}, r"params: unknown key\(s\) \['bucket'\]"),
    ({"quantize": {"method": "hashed", "params": {"ratio": 0.5}, "bits": {"fc1": 4}}},
     r"unknown key\(s\) \['bits'\].*is an option of \['kmeans'"),
    ({"quantize": {"method": "hashed", "params": {"ratio": 0.5}, "distill": {"alpha": 0.5}}}, "add a 'finetune'"),
    ({"quantize": {"method": "bfp", "params": {"mantissa_bits": 30}}},
     r"mantissa_bits=30 is not allowed; use an int in \[2, 24\]"),
    ({"quantize": {"method": "bfp", "params": {"mantissa_bits": 1}}}, r"mantissa_bits=1 is not allowed"),
    ({"quantize": {"method": "bfp", "params": {"block": 0}}}, r"block=0 is not allowed; use an int >= 1"),
    ({"quantize": {"method": "bfp", "params": {"mantisa_bits": 8}}}, r"unknown key\(s\) \['mantisa_bits'\]"),
    ({"quantize": {"method": "bfp", "finetune": {"epochs": 1}}}, "post-training"),
])
def test_bad_new_options_rejected_with_names(stage, match):
    with pytest.raises(ConfigError, match=match):
        parse_recipe(recipe([stage]), "r.yaml")


@pytest.mark.parametrize("stage,match", [
    ({"decompose": {"layers": {"fc1": {"method": "svd", "rank": 400}}}}, r"fc1: svd rank must be an integer in \[1, 300\]"),
    ({"decompose": {"layers": {"fc9": {"method": "svd", "rank": 4}}}}, "'fc9' matches no Linear/Conv2d layer"),
    ({"decompose": {"layers": {"fc1": {"method": "tucker2", "rank": 4}}}}, "fc1"),
    ({"quantize": {"method": "hashed", "params": {"buckets": {"fc9": 4}}}}, r"unknown Linear layer\(s\) \['fc9'\]"),
    ({"quantize": {"method": "hashed", "params": {"buckets": {"fc3": 5000}}}}, r"buckets=5000 is not allowed; use an int in \[1, 1000\]"),
])
def test_layer_dependent_values_fail_when_the_stage_starts(stage, match):
    recipe_ = parse_recipe(recipe([stage]))
    ctx = build_context(recipe_)
    with pytest.raises(ConfigError, match=match):
        STAGES.get(recipe_.stages[0].name).run(ctx, recipe_.stages[0].config)


def test_readme_style_recipe_parses(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe([
        TRAIN,
        {"decompose": {"layers": {"fc1": {"method": "svd", "energy": 0.8}}, "finetune": FINETUNE}},
        {"prune": {"sparsity": 0.5, "retrain": FINETUNE,
                   "distill": {"alpha": 0.5, "temperature": 4, "attention": {"beta": 1000, "layers": ["fc1"]}}}},
        {"quantize": {"method": "bfp", "params": {"mantissa_bits": 8, "block": 32}}},
    ])))
    stages = load_recipe(path).stages
    assert [s.name for s in stages] == ["train", "decompose", "prune", "quantize"]
    assert stages[2].config.distill.attention.pairs == [("fc1", "fc1")]


def _bwnh_recipe(**quant) -> dict:
    return {"name": "bwnh-digits", "model": {"name": "lenet300"}, "data": {"name": "digits"}, "seed": 0,
            "stages": [{"train": {"epochs": 3, "lr": 0.05, "batch_size": 64}},
                       {"quantize": {"method": "bwnh", **quant}}, {"encode": {}}, {"evaluate": {}}]}


def test_bwnh_method_binarises_and_round_trips(tmp_path):
    from nncompress.recipes import parse_recipe
    from nncompress.recipes.runner import run_recipe

    recipe = parse_recipe(_bwnh_recipe(params={"iters": 3, "calib_images": 128, "sample": 2000},
                                       finetune={"epochs": 1, "lr": 0.001, "optimizer": "adam"}), "t")
    report = run_recipe(recipe, tmp_path / "m.nnc")
    stage = next(s for s in report["stages"] if s["stage"] == "quantize")
    assert stage["layers"] == ["fc1", "fc2", "fc3"]
    assert all(e["bwnh"] <= e["bwn"] + 1e-6 for e in stage["relative_error"].values())
    loaded = nncompress.load(tmp_path / "m.nnc")
    w = loaded.fc2.weight.detach()
    for row in w:  # one scale per output unit: |w| constant within a row
        assert torch.allclose(row.abs(), row.abs()[0].expand_as(row))
    assert report["summary"]["compressed_accuracy"] == stage["accuracy"]
    assert report["summary"]["ratio"] > 20  # 1-bit signs + a scale per row vs fp32


@pytest.mark.parametrize("params, match", [({"iters": 0}, "iters=0"), ({"calib_images": -1}, "calib_images"),
                                           ({"sample": 0}, "sample=0"), ({"bogus": 1}, "bogus")])
def test_bwnh_method_rejects_bad_params(params, match):
    from nncompress.recipes import parse_recipe

    with pytest.raises(ConfigError, match=match):
        parse_recipe(_bwnh_recipe(params=params), "t")
