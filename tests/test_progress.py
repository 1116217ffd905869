"""RunProgress: headings, labelled bars / plain lines, result lines, recorded curves, quiet."""

import io
import re

import pytest
import torch
from torch import nn

from nncompress.progress import RunProgress, describe_stage
from nncompress.recipes import load_recipe, parse_recipe
from nncompress.train.loop import TrainConfig, fit

RAW = {"name": "tiny-progress", "model": {"name": "lenet300"}, "data": {"name": "digits", "train_subset": 192},
       "seed": 0,
       "stages": [{"train": {"epochs": 2, "lr": 0.05, "batch_size": 64}},
                  {"prune": {"schedule": [0.5, 0.8], "retrain": {"epochs": 1, "lr": 0.02, "batch_size": 64},
                             "final_retrain": {"epochs": 2, "lr": 0.02, "batch_size": 64}, "final_soup": 2}},
                  {"quantize": {"method": "kmeans", "bits_fc": 4,
                                "finetune": {"epochs": 1, "lr": 0.001, "batch_size": 64}}},
                  {"encode": {}}, "evaluate"]}
LABELS = ["train", "round 1/2 retrain", "round 2/2 retrain", "final retrain 1/2", "final retrain 2/2",
          "quantize fine-tune"]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _tiny_data(n=64):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 6, generator=g)
    return torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long())


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One tiny recipe run with a non-terminal stream; (its text, the run's context)."""
    from nncompress.recipes.runner import run_recipe

    recipe = parse_recipe(RAW)
    out = io.StringIO()
    progress = RunProgress(out, stages=[s.name for s in recipe.stages])
    seen = []

    def hook(name, ctx):
        progress.stage_hook(name, ctx)
        seen.append(ctx)
    run_recipe(recipe, tmp_path_factory.mktemp("p") / "m.nnc", progress=progress, stage_hook=hook)
    return out.getvalue(), seen[-1]


def test_plain_lines_tell_each_stage_and_fit(tiny_run):
    text, _ = tiny_run
    lines = text.splitlines()
    headings = [ln for ln in lines if re.match(r"\[\d/5\] ", ln)]
    assert [h.split()[1].rstrip(":") for h in headings] == ["train", "prune", "quantize", "encode", "evaluate"]
    assert headings[0] == "[1/5] train: 2 epochs, batch 64, lr 0.05"
    assert headings[1] == "[2/5] prune: 2 rounds, retrain 1 epoch each, final retrain 2 epochs x2"
    assert headings[2] == "[3/5] quantize: kmeans, fine-tune 1 epoch"
    results = [ln for ln in lines if " done in " in ln]
    assert [r.split()[0] for r in results] == ["train", "prune", "quantize", "encode", "evaluate"]
    assert all("accuracy " in r and "nonzero weights " in r for r in results)
    assert "\r" not in text  # no bar off a terminal
    for label in LABELS:
        assert any(f"| {label}: epoch" in ln or f"    {label}: epoch" in ln for ln in lines), label
    assert "prune | round 2/2 retrain: epoch 1/1  loss " in text
    assert len(lines) <= 5 + 5 + 2 + 1 + 1 + 2 + 2 + 1  # headings, results, one line per epoch at most


def test_curves_follow_the_report_contract(tiny_run):
    _, ctx = tiny_run
    curves = ctx.progress.curves
    assert [c["label"] for c in curves] == LABELS
    assert [c["stage"] for c in curves] == ["train", "prune", "prune", "prune", "prune", "quantize"]
    assert [len(c["epochs"]) for c in curves] == [2, 1, 1, 2, 2, 1]
    for c in curves:
        assert set(c) == {"label", "stage", "epochs"}
        assert [e["epoch"] for e in c["epochs"]] == list(range(len(c["epochs"])))
        for e in c["epochs"]:
            assert isinstance(e["epoch"], int) and e["train_loss"] > 0
            assert 0 <= e["train_accuracy"] <= 1
            assert set(e) <= {"epoch", "train_loss", "train_accuracy", "val_accuracy"}


def test_recording_only_by_default_and_curves_with_validation():
    model = nn.Linear(6, 2)
    progress = RunProgress()  # the library's default: draws nothing
    fit(model, _tiny_data(), TrainConfig(epochs=3, batch_size=16), val_data=_tiny_data(32),
        progress=progress.fits("probe"))
    (curve,) = progress.curves
    assert curve["label"] == "probe" and len(curve["epochs"]) == 3
    assert all(0 <= e["val_accuracy"] <= 1 for e in curve["epochs"])


def test_a_run_progress_given_to_fit_directly_labels_by_stage():
    progress = RunProgress()
    fit(nn.Linear(6, 2), _tiny_data(), TrainConfig(epochs=1, batch_size=16), progress=progress)
    progress.stage_begin("warmup", None)
    fit(nn.Linear(6, 2), _tiny_data(), TrainConfig(epochs=1, batch_size=16), progress=progress)
    assert [(c["label"], c["stage"]) for c in progress.curves] == [("fit", ""), ("warmup", "warmup")]


def test_a_bar_on_a_terminal_names_stage_epoch_and_loss():
    term = FakeTerminal()
    progress = RunProgress(term, stages=["train"])
    assert progress.terminal
    progress.stage_begin("train", TrainConfig(epochs=2, batch_size=16))
    fit(nn.Linear(6, 2), _tiny_data(), TrainConfig(epochs=2, batch_size=16), progress=progress.fits("train"))
    text = term.getvalue()
    assert text.startswith("[1/1] train: 2 epochs, batch 16, lr 0.01\n")
    last = text.rsplit("\r", 1)[-1]  # the bar as it stays on screen
    assert "train" in last and "8/8" in last and "epoch 2/2" in last
    assert re.search(r"loss \d\.\d{4}", last) and re.search(r"acc \d+\.\d\d%", last)
    assert text.endswith("\n")  # left on screen


def test_plain_epoch_lines_are_bounded_per_fit():
    out = io.StringIO()
    progress = RunProgress(out, epoch_lines=4)
    fit(nn.Linear(6, 2), _tiny_data(16), TrainConfig(epochs=40, batch_size=16), progress=progress.fits("long"))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4 + 0  # every 10th epoch: 10, 20, 30, 40
    assert lines[-1].startswith("    long: epoch 40/40  loss ")
    assert len(progress.curves[0]["epochs"]) == 40


def test_fit_progress_true_still_draws_on_stderr(capsys):
    fit(nn.Linear(6, 2), _tiny_data(), TrainConfig(epochs=1, batch_size=16), progress=True)
    assert "train: epoch 1/1" in capsys.readouterr().err


def test_main_job_headings():
    recipe = load_recipe("deep-compression-lenet300")
    heads = [describe_stage(s.name, s.config) for s in recipe.stages]
    assert heads[0] == "train: 40 epochs, batch 128, lr 0.05"
    assert heads[1].startswith("prune: 5 rounds, retrain 4 epochs each, final retrain 40 epochs")
    assert heads[2] == "quantize: kmeans, fine-tune 3 epochs"


def test_cli_quiet_prints_nothing_and_default_prints_the_story(tmp_path, capsys):
    import yaml

    from nncompress.cli import main

    raw = {**RAW, "stages": [RAW["stages"][0], {"prune": {"sparsity": 0.5}}, {"encode": {}}]}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["run", str(path), "--out", str(tmp_path / "q.nnc"), "-q"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert main(["run", str(path), "--out", str(tmp_path / "v.nnc")]) == 0
    captured = capsys.readouterr()
    assert "[1/3] train: 2 epochs" in captured.err and "[2/3] prune: one-shot" in captured.err
    assert captured.err.count(" done in ") == 3
    assert "compressed" in captured.out


def test_a_resumed_run_numbers_stages_from_the_recipe():
    out = io.StringIO()
    progress = RunProgress(out, stages=["train", "prune", "encode"])
    progress.stage_begin("encode", None)  # resumed after stage 2
    assert out.getvalue() == "[3/3] encode\n"
    assert RunProgress(out).fits("ft").next_label() == "ft"
    reporter = RunProgress().fits("ft")
    assert [reporter.next_label() for _ in range(3)] == ["ft", "ft (2)", "ft (3)"]
