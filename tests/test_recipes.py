import json

import pytest
import torch
import yaml

import nncompress
from nncompress.cli import main
from nncompress.errors import ConfigError
from nncompress.recipes import builtin_recipes, load_recipe, parse_recipe

TINY = {
    "name": "tiny",
    "model": {"name": "lenet300"},
    "data": {"name": "digits", "train_subset": 300},
    "stages": [
        {"train": {"epochs": 2, "lr": 0.05, "batch_size": 64}},
        {"prune": {"schedule": [0.5, {"fc1": 0.9, "default": 0.8}], "retrain": {"epochs": 1, "lr": 0.02},
                   "remove_dead_neurons": True}},
        {"quantize": {"method": "kmeans", "bits_fc": 4, "finetune": {"epochs": 1, "lr": 0.001}}},
        {"encode": {"index_bits_fc": 4}},
        "evaluate",
    ],
}


def test_builtin_recipes_parse():
    names = builtin_recipes()
    assert "deep-compression-lenet300" in names and "deep-compression-lenet5" in names
    for name in names:
        assert load_recipe(name).stages


@pytest.mark.parametrize("patch,match", [
    ({"stagez": []}, r"unknown key\(s\) \['stagez'\]"),
    ({"stages": [{"train": {"epochz": 1}}]}, r"stages\[0\]\.train: unknown key\(s\) \['epochz'\]"),
    ({"stages": [{"train": {"epochs": "many"}}]}, "expected a number"),
    ({"stages": [{"train": {"epochs": -1}}]}, "epochs must be > 0"),
    ({"stages": [{"shrink": {}}]}, "unknown recipe stage 'shrink'"),
    ({"stages": [{"encode": {"index_bits_fc": 40}}]}, "index_bits_fc=40 out of range"),
    ({"stages": [{"quantize": {"bits_fc": 0}}]}, None),
    ({"stages": [{"quantize": {"codebook_dtype": "float8"}}]}, "codebook_dtype 'float8' not allowed"),
    ({"stages": [{"quantize": {"bits": {"fc1": "four"}}}]}, "bits"),
    ({"stages": []}, "non-empty list"),
])
def test_bad_recipes_rejected_with_names(patch, match):
    raw = {**TINY, **patch}
    with pytest.raises(ConfigError, match=match):
        recipe = parse_recipe(raw, "r.yaml")
        # values checked when the stage runs (bits) still fail before any training:
        from nncompress.quantize.sharing import SharingConfig
        SharingConfig(bits_fc=recipe.stages[0].config.bits_fc)


def test_unknown_layer_in_sparsity_is_named(tmp_path):
    raw = {**TINY, "stages": [{"prune": {"sparsity": {"fc9": 0.5}}}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="fc9"):
        from nncompress.recipes.runner import run_recipe

        run_recipe(load_recipe(path), tmp_path / "m.nnc")


@pytest.mark.slow
def test_cli_run_info_eval_export(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "m.nnc"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    s = report["summary"]
    assert s["file_bytes"] == out.stat().st_size
    assert s["ratio"] == pytest.approx(s["dense_fp32_bytes"] / s["file_bytes"])
    assert s["dense_fp32_bytes"] == 4 * 266610  # the original model, even after neuron removal
    assert s["ratio"] > 20
    # Reported sparsity equals the counted zeros of the loaded model.
    assert s["nonzero_weights"] == sum(r["nonzeros"] for r in report["layers"])
    fc1 = next(r for r in report["layers"] if r["name"] == "fc1")
    removed = report["stages"][1]["removed_neurons"].get("fc1", 0)
    assert fc1["weights"] == 784 * (300 - removed)
    assert fc1["nonzeros"] == round(0.1 * 235200)
    for png in ("weights.png", "accuracy.png"):
        assert (tmp_path / "report" / png).stat().st_size > 1000
    capsys.readouterr()
    assert main(["eval", str(out), "--data", "digits", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == pytest.approx(s["compressed_accuracy"])
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["file_bytes"] == out.stat().st_size
    assert {r["codec"] for r in info["table"]["rows"] if r["layer"].endswith("weight")} == {"deep"}
    # info's ratio is the report's: against the original model the file's architecture names
    assert info["table"]["total"]["original_fp32_bytes"] == s["dense_fp32_bytes"]
    assert info["table"]["total"]["ratio_vs_original"] == pytest.approx(s["ratio"])
    assert main(["export", str(out), str(tmp_path / "m.safetensors")]) == 0
    from safetensors.torch import load_file

    import nncompress

    dense = load_file(str(tmp_path / "m.safetensors"))
    model = nncompress.load(out)
    for k, v in model.state_dict().items():
        assert dense[k].equal(v)


def test_cli_reports_errors_cleanly(tmp_path, capsys):
    bad = tmp_path / "bad.nnc"
    bad.write_bytes(b"\x00" * 64)
    assert main(["eval", str(bad)]) == 2
    assert "not an .nnc file" in capsys.readouterr().err
    assert main(["run", "no-such-recipe"]) == 2
    assert "unknown recipe" in capsys.readouterr().err


def test_dropout_adjusted_after_every_cut(tmp_path):
    import math

    from nncompress.recipes.runner import build_context
    from nncompress.recipes.stages import STAGES

    raw = {"name": "d", "model": {"name": "lenet300", "kwargs": {"dropout": 0.5}},
           "data": {"name": "digits", "train_subset": 64},
           "stages": [{"prune": {"schedule": [0.5, {"fc1": 0.9, "fc2": 0.84, "fc3": 0.5}],
                                 "retrain": {"epochs": 1, "batch_size": 64}, "adjust_dropout": True}}]}
    recipe = parse_recipe(raw)
    ctx = build_context(recipe)
    seen = []
    orig = ctx.model.drop1.__class__.forward

    def spy(self, x):  # record p as used during retraining
        if self.training:
            seen.append((self is ctx.model.drop1, self.p))
        return orig(self, x)

    ctx.model.drop1.__class__.forward = spy
    try:
        STAGES.get("prune").run(ctx, recipe.stages[0].config)
    finally:
        ctx.model.drop1.__class__.forward = orig
    # drop1 feeds fc2: round 1 keeps 50% of fc2, round 2 keeps 16%.
    ps = sorted({p for is1, p in seen if is1}, reverse=True)
    assert ps == pytest.approx([0.5 * math.sqrt(0.5), 0.5 * math.sqrt(0.16)])
    assert ctx.model.drop2.p == pytest.approx(0.5 * math.sqrt(0.5))


def test_sparse_train_stage_gsm_hits_exact_count(tmp_path):
    from nncompress.recipes.runner import run_recipe

    raw = {"name": "gsm", "model": {"name": "lenet300"}, "data": {"name": "digits", "train_subset": 128},
           "stages": [{"sparse_train": {"method": "gsm", "params": {"q": 5000},
                                        "train": {"epochs": 1, "batch_size": 64, "momentum": 0.9}}}]}
    report = run_recipe(parse_recipe(raw), tmp_path / "g.nnc")
    assert report["summary"]["nonzero_weights"] == 5000


def test_structured_stage_and_sensitivity_cli(tmp_path, capsys):
    from nncompress.recipes.runner import run_recipe

    raw = {"name": "s", "model": {"name": "lenet5"}, "data": {"name": "digits", "train_subset": 64},
           "stages": [{"structured": {"criterion": "l1", "target": 0.5, "samples": 64, "round_to": 4}}]}
    report = run_recipe(parse_recipe(raw), tmp_path / "s.nnc")
    stage = report["stages"][0]
    assert stage["mac_reduction"] >= 2.0
    for name, shape in stage["shapes"].items():  # every pruned layer keeps a multiple of 4 outputs
        if name != "fc2.weight":
            assert shape[0] % 4 == 0 or shape[0] in (20, 50, 500), (name, shape)
    assert report["summary"]["macs"] == stage["pruned"]["macs"]  # the file holds the smaller model
    assert main(["sensitivity", str(tmp_path / "s.nnc"), "--data", "digits", "--samples", "100",
                 "--ratios", "0.5", "--out", str(tmp_path / "sens")]) == 0
    data = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert set(data["suggested_ratios"]) and (tmp_path / "sens" / "sensitivity.png").exists()


def test_structured_stage_distils_and_fades_before_removal(tmp_path):
    from nncompress.recipes.runner import run_recipe

    raw = {"name": "s", "model": {"name": "lenet5"}, "data": {"name": "digits", "train_subset": 64},
           "stages": [{"train": {"epochs": 1, "lr": 0.01}},
                      {"structured": {"criterion": "l1", "target": 0.5, "samples": 64, "fade_epochs": 0.5,
                                      "finetune": {"epochs": 1, "lr": 0.01},
                                      "distill": {"alpha": 0.5, "temperature": 4}}}]}
    report = run_recipe(parse_recipe(raw), tmp_path / "s.nnc")
    stage = report["stages"][1]
    assert stage["mac_reduction"] >= 2.0 and stage["fade_epochs"] == 0.5
    assert stage["distill"]["alpha"] == 0.5
    assert report["summary"]["macs"] == stage["pruned"]["macs"]
    fine_tunes = [c for c in report["curves"] if c["stage"] == "structured"]  # the fits are reported
    assert fine_tunes and fine_tunes[0]["label"] == "step 1 fine-tune" and len(fine_tunes[0]["epochs"]) == 1


@pytest.mark.parametrize("extra, match", [
    ({"fade_epochs": 1.0}, "fade_epochs=1.0 out of range"),
    ({"fade_epochs": 3.0, "finetune": {"epochs": 2}}, r"allowed: \(0, 2"),
    ({"distill": {"alpha": 0.5}}, "add a 'finetune' block"),
    ({"distill": {"alpha": 0.5, "attention": {"layers": ["conv1"]}}, "finetune": {"epochs": 1}},
     "attention is not allowed"),
])
def test_structured_stage_rejects_bad_fade_and_distill(extra, match):
    raw = {"name": "s", "model": {"name": "lenet5"}, "data": {"name": "digits"},
           "stages": [{"structured": {"criterion": "l1", "target": 0.5, **extra}}]}
    with pytest.raises(ConfigError, match=match):
        parse_recipe(raw)


def test_structured_stage_rounds_to_measured_latency_steps(tmp_path):
    from nncompress.recipes.runner import run_recipe

    raw = {"name": "s", "model": {"name": "lenet5"}, "data": {"name": "digits", "train_subset": 64},
           "stages": [{"structured": {"criterion": "l1", "target": 0.3, "samples": 64,
                                      "round_to": "latency", "latency_batch": 4}}]}
    report = run_recipe(parse_recipe(raw), tmp_path / "s.nnc")
    assert report["stages"][0]["mac_reduction"] >= 1.0 / 0.7
    raw["stages"][0]["structured"]["round_to"] = "fastest"
    with pytest.raises(ConfigError, match="'fastest'"):
        run_recipe(parse_recipe(raw), tmp_path / "t.nnc")


def test_lowbit_quantize_stage_after_pruning(tmp_path):
    import nncompress
    from nncompress.recipes.runner import run_recipe

    raw = {"name": "twn", "model": {"name": "lenet300"}, "data": {"name": "digits", "train_subset": 128},
           "stages": [{"prune": {"sparsity": 0.8}},
                      {"quantize": {"method": "twn", "finetune": {"epochs": 1, "batch_size": 64, "lr": 0.001}}}]}
    report = run_recipe(parse_recipe(raw), tmp_path / "t.nnc")
    model = nncompress.load(tmp_path / "t.nnc")
    for name in ("fc1", "fc2", "fc3"):
        w = getattr(model, name).weight
        levels = torch.unique(w.abs(), sorted=True)
        assert levels[0] == 0 and len(levels) <= 1 + w.shape[0]  # {0} plus per-row alpha at most
    assert (model.fc1.weight == 0).float().mean() >= 0.8  # pruned zeros kept by the ternary levels
    assert report["summary"]["ratio"] > 10


def test_trained_state_replaces_the_train_stage_with_the_same_result(tmp_path):
    import copy

    from nncompress.recipes.runner import run_recipe

    recipe = load_recipe("smoke-digits")
    trained = {}

    def keep(stage, ctx):
        if stage == "train":
            trained.update(copy.deepcopy(ctx.model.state_dict()))

    full = run_recipe(recipe, tmp_path / "a.nnc", stage_hook=keep)
    reused = run_recipe(recipe, tmp_path / "b.nnc", trained_state=trained)
    assert reused["summary"] == full["summary"]
    assert (tmp_path / "a.nnc").read_bytes() == (tmp_path / "b.nnc").read_bytes()
    assert reused["stages"][0]["reused_trained_state"] is True
    raw = {"name": "p", "model": {"name": "lenet300"}, "data": {"name": "digits", "train_subset": 64},
           "stages": [{"prune": {"sparsity": 0.5}}]}
    with pytest.raises(ConfigError, match="first 'train' stage"):
        run_recipe(parse_recipe(raw), tmp_path / "c.nnc", trained_state=trained)


def test_half_codebooks_and_layer_bits_in_a_recipe(tmp_path):
    import nncompress
    from nncompress.format import read_info
    from nncompress.recipes.runner import run_recipe

    raw = {**TINY, "stages": [*TINY["stages"][:2],
                              {"quantize": {"bits_fc": 4, "bits": {"fc1": 3}, "codebook_dtype": "float16"}},
                              {"encode": {"index_bits_fc": 4, "other": "int8"}}, "evaluate"]}
    report = run_recipe(parse_recipe(raw), tmp_path / "h.nnc")
    info = read_info(tmp_path / "h.nnc")
    fc1 = next(t for t in info.tensors if t.name == "fc1.weight")
    assert fc1.meta["codebook_dtype"] == "float16" and fc1.meta["codebook_size"] <= 2**3
    assert {t.codec for t in info.tensors if t.name.endswith("bias")} == {"int8"}
    assert all(t.nbytes == t.shape[0] for t in info.tensors if t.name.endswith("bias"))
    model = nncompress.load(tmp_path / "h.nnc")
    assert torch.equal(model.fc1.weight, model.fc1.weight.half().float())
    # the file holds exactly the model that was evaluated: same accuracy from the loaded model
    stages = {s["stage"]: s for s in report["stages"]}
    assert stages["save+load"]["accuracy"] == stages["evaluate"]["accuracy"]


def test_structured_stage_removes_blocks_and_the_file_rebuilds_them(tmp_path):
    from nncompress.prune.structured.blocks import removed_blocks
    from nncompress.recipes.runner import run_recipe

    raw = {"name": "s", "model": {"name": "resnet20"}, "data": {"name": "digits", "train_subset": 64},
           "stages": [{"structured": {"criterion": "l1", "target": 0.5, "samples": 64, "blocks": 2,
                                      "keep_coupled": True, "block_fit": "affine"}}]}
    report = run_recipe(parse_recipe(raw), tmp_path / "b.nnc")
    stage = report["stages"][0]
    assert len(stage["removed_blocks"]) == 2 and stage["mac_reduction"] >= 2.0
    back = nncompress.load(tmp_path / "b.nnc")
    assert removed_blocks(back) == sorted(stage["removed_blocks"], key=lambda n: int(n.split(".")[1]))
    raw["stages"][0]["structured"]["blocks"] = ["fc"]
    with pytest.raises(ConfigError, match="not removable"):
        run_recipe(parse_recipe(raw), tmp_path / "c.nnc")
    raw["stages"][0]["structured"]["block_fit"] = "median"
    with pytest.raises(ConfigError, match="block_fit='median'"):
        parse_recipe(raw)


# -- the recipe reference (nncompress recipes --describe) ---------------------------------

def _stage_configs(stage):
    """The stage's config, the params dataclass of each of its choices, and the nested
    option dataclasses that are not another stage's config (those are checked there)."""
    import dataclasses
    import typing

    from nncompress.recipes import STAGES
    from nncompress.recipes.describe import _dataclasses_in

    config = STAGES.get(stage).config
    others = {STAGES.get(n).config for n in STAGES.names()}
    todo = [config, *getattr(config, "param_types", dict)().values()]
    seen = []
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.append(cls)
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            todo += [d for d in _dataclasses_in(hints[f.name]) if d not in others]
    return seen


@pytest.mark.parametrize("stage", ["decompose", "distill", "encode", "evaluate", "prune", "quantize",
                                   "sparse_train", "structured", "train"])
def test_every_stage_key_has_a_description(stage):
    from nncompress.recipes import STAGES
    from nncompress.recipes.describe import config_keys

    assert set(STAGES.names()) <= {"decompose", "distill", "encode", "evaluate", "prune", "quantize",
                                   "sparse_train", "structured", "train"}, "a new stage: add it to the parametrize list"
    missing = [f"{getattr(cls, '__name__', type(cls).__name__)}.{key}"
               for cls in _stage_configs(stage) for key, _, _, doc in config_keys(cls) if not doc.strip()]
    assert missing == []


def test_describe_prints_every_key_with_type_default_and_first_paragraph(capsys):
    from nncompress.config import field_docs
    from nncompress.prune.sparse_methods import GSMParams
    from nncompress.prune.structured import StructuredPruneConfig
    from nncompress.recipes import STAGES

    assert main(["recipes", "--describe"]) == 0
    text = capsys.readouterr().out
    for name in STAGES.names():
        assert f"\nstage {name}: " in text
    block = text.split("\nstage structured: ")[1].split("\n\n")[0]
    for key, doc in field_docs(StructuredPruneConfig).items():
        assert f"\n  {key}: " in block
        assert " ".join(doc.split()[:6]) in " ".join(block.split())
    assert "\n  fade_epochs: float = 0.0\n" in block and "\n  samples: int = 512\n" in block
    gsm = text.split("\nsparse_train params of gsm: ")[1].split("\n\n")[0]
    keys = [line.split(":")[0].strip() for line in gsm.splitlines()[1:] if not line.startswith("      ")]
    assert keys == ["q", "ratio", "sparsity", "include", "exclude"] and set(keys) == set(field_docs(GSMParams))
    assert "\nLowRankConfig (nested options): " in text


def test_report_dense_baseline_shows_the_original_macs(monkeypatch):
    """The dense column shows the model before any stage, not the pruned count."""
    from nncompress.report import writer
    from nncompress.report.writer import report_markdown

    monkeypatch.setattr(writer, "table_markdown", lambda table: "")

    summary = {"dense_accuracy": 0.9, "compressed_accuracy": 0.89, "dense_fp32_bytes": 1000, "file_bytes": 10,
               "ratio": 100.0, "original_parameters": 250, "weights": 200, "nonzero_weights": 20,
               "macs": 220_598, "sparse_macs": 5_000, "original_macs": 266_200}
    text = report_markdown({"recipe": "r", "command": "c", "summary": summary, "stages": [],
                            "table": {"rows": [], "total": {}}, "plots": []})
    assert "| MACs / sample | 266,200 | 220,598 (5,000 with a nonzero weight) |" in text
