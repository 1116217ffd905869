"""Own model and data: factories in recipes, the CLI reopening files with --model, loading
never importing a factory, validation before training, loss/metric factories, --resume,
devices."""

import json
import sys
import textwrap
import time

import pytest
import torch
import yaml

from nncompress import cli
from nncompress.errors import ConfigError, FormatError
from nncompress.factory import load as factory_load
from nncompress.recipes import parse_recipe
from nncompress.recipes.runner import run_recipe
from nncompress.train.device import resolve_device

MODULE = "nnc_user_factories"
SOURCE = textwrap.dedent('''
    import torch
    from torch import nn
    from torch.utils.data import Dataset

    TOUCHED = {"train": 0}

    class Net(nn.Module):
        def __init__(self, width=4, out=4):
            super().__init__()
            self.conv = nn.Conv2d(1, width, 3, padding=1)
            self.head = nn.Linear(width * 8 * 8, out)

        def forward(self, x):  # (B, 1, 8, 8)
            return self.head(torch.relu(self.conv(x)).flatten(1))

    def net(width=4, out=4):
        return Net(width, out)

    def not_a_module():
        return 42

    class Blobs(Dataset):
        def __init__(self, n, seed, regression=False, count=False):
            g = torch.Generator().manual_seed(seed)
            self.y = torch.randint(0, 4, (n,), generator=g)
            self.x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
            for c in range(4):  # class c lights up quadrant c
                r, q = divmod(c, 2)
                self.x[self.y == c, 0, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 1.0
            self.regression, self.count = regression, count

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            if self.count:
                TOUCHED["train"] += 1
            target = self.x[i].mean().reshape(1) if self.regression else self.y[i]
            return self.x[i], target

    def splits(n=160, regression=False):
        return {"train": Blobs(n, 0, regression, count=True), "test": Blobs(64, 1, regression)}

    def not_data():
        return {"train": [1, 2], "test": "x"}

    def mse():
        return nn.MSELoss()

    def neg_mse():
        return lambda out, target: -float(((out - target) ** 2).mean())
''')


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    folder = tmp_path / "userpkg"
    folder.mkdir()
    (folder / f"{MODULE}.py").write_text(SOURCE)
    monkeypatch.syspath_prepend(str(folder))
    sys.modules.pop(MODULE, None)
    yield MODULE
    sys.modules.pop(MODULE, None)


def _recipe(stages, **top):
    raw = {"name": "own", "model": {"factory": f"{MODULE}:net", "kwargs": {"width": 4}},
           "data": {"factory": f"{MODULE}:splits", "kwargs": {"n": 160}}, "seed": 0, "stages": stages}
    raw.update(top)
    return raw


STAGES = [{"train": {"epochs": 2, "lr": 0.05, "batch_size": 32}},
          {"prune": {"sparsity": {"conv": 0.3, "head": 0.7}, "retrain": {"epochs": 1, "lr": 0.01, "batch_size": 32}}},
          {"encode": {}}, "evaluate"]


def test_factory_recipe_through_every_cli_command(user_module, tmp_path, capsys):
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(_recipe(STAGES)))
    out = tmp_path / "run" / "m.nnc"
    assert cli.main(["run", str(path), "--out", str(out), "-q"]) == 0
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    acc = report["summary"]["compressed_accuracy"]
    assert acc > 0.5
    assert not (tmp_path / "run" / ".m.nnc.resume").exists()  # checkpoints removed after a finished run
    capsys.readouterr()
    assert cli.main(["info", str(out), "--json", "--model", f"{MODULE}:net", "--input-shape", "1", "8", "8"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["metadata"]["factory"]["model"] == f"{MODULE}:net"
    assert [r["name"] for r in info["layers"]] == ["conv", "head"]
    assert cli.main(["eval", str(out), "--json", "--model", f"{MODULE}:net", "--data", f"{MODULE}:splits"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["accuracy"] == acc
    assert cli.main(["export", str(out), str(tmp_path / "m.safetensors"), "--model", f"{MODULE}:net"]) == 0
    pytest.importorskip("onnxruntime")
    assert cli.main(["export", str(out), str(tmp_path / "m.onnx"), "--model", f"{MODULE}:net"]) == 0
    assert (tmp_path / "m.onnx").stat().st_size > 0


def test_loading_a_file_never_imports_its_factory(user_module, tmp_path, capsys):
    out = tmp_path / "m.nnc"
    run_recipe(parse_recipe(_recipe(STAGES[:1] + ["encode"])), out)
    sys.modules.pop(MODULE, None)
    with pytest.raises(FormatError, match=f"factory='{MODULE}:net'"):
        factory_load(out)
    assert MODULE not in sys.modules
    capsys.readouterr()
    assert cli.main(["eval", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--data {MODULE}:splits" in err and MODULE not in sys.modules
    assert cli.main(["eval", str(out), "--data", "digits"]) == 2
    assert f"--model {MODULE}:net" in capsys.readouterr().err
    assert MODULE not in sys.modules
    model = factory_load(out, factory=f"{MODULE}:net")  # named by the user: imported
    assert model.conv.out_channels == 4


def test_bad_factories_are_named(user_module):
    with pytest.raises(ConfigError, match="nope_mod.*does not import"):
        parse_recipe(_recipe(STAGES, model={"factory": "nope_mod:net"}))
    with pytest.raises(ConfigError, match="not of the form"):
        parse_recipe(_recipe(STAGES, model={"factory": "just_a_name"}))
    with pytest.raises(ConfigError, match="no attribute 'missing'"):
        parse_recipe(_recipe(STAGES, model={"factory": f"{MODULE}:missing"}))
    with pytest.raises(ConfigError, match="returned a int, not a torch.nn.Module"):
        run_recipe(parse_recipe(_recipe(STAGES, model={"factory": f"{MODULE}:not_a_module"})), "/tmp/x.nnc")
    with pytest.raises(ConfigError, match="train split is a list, not a torch Dataset"):
        run_recipe(parse_recipe(_recipe(STAGES, data={"factory": f"{MODULE}:not_data"})), "/tmp/x.nnc")


def test_validation_reports_every_misspelled_layer_before_any_training(user_module, tmp_path):
    stages = [{"train": {"epochs": 50, "batch_size": 8}},
              {"prune": {"sparsity": {"conv": 0.5, "haed": 0.5}, "exclude": ["cnv*"]}},
              {"quantize": {"method": "kmeans", "bits": {"head9": 4}}}]
    recipe = parse_recipe(_recipe(stages))
    mod = sys.modules[MODULE]
    t0 = time.perf_counter()
    with pytest.raises(ConfigError) as err:
        run_recipe(recipe, tmp_path / "m.nnc")
    seconds = time.perf_counter() - t0
    text = str(err.value)
    assert "3 problem(s)" in text
    assert "stages[1].prune.sparsity.haed" in text and "stages[1].prune.exclude[0]" in text
    assert "stages[2].quantize.quantizer.bits.head9" in text
    assert mod.TOUCHED["train"] == 0  # not one training sample was read
    assert seconds < 5


def test_parse_collects_the_problems_of_every_stage():
    with pytest.raises(ConfigError) as err:
        parse_recipe({"name": "x", "stages": [{"prune": {"sparsity": 2.0}}, {"train": {"lr": -1}},
                                              {"nosuch": {}}]})
    text = str(err.value)
    assert "3 problems" in text and "stages[0]" in text and "lr must be > 0" in text and "nosuch" in text


def test_loss_and_metric_factories_drive_training_and_report(user_module, tmp_path):
    raw = _recipe([{"train": {"epochs": 3, "lr": 0.05, "batch_size": 32}}, "evaluate"],
                  model={"factory": f"{MODULE}:net", "kwargs": {"out": 1}},
                  data={"factory": f"{MODULE}:splits", "kwargs": {"regression": True}},
                  loss={"factory": f"{MODULE}:mse"}, metric={"factory": f"{MODULE}:neg_mse"})
    report = run_recipe(parse_recipe(raw), tmp_path / "r.nnc")
    assert report["metric"] == f"{MODULE}:neg_mse"
    score = report["summary"]["compressed_accuracy"]
    assert -0.05 < score <= 0.0  # negative MSE of a regression, not an accuracy
    assert report["stages"][1]["loss"] == pytest.approx(-score, rel=1e-5)


def test_resume_after_a_killed_run_gives_the_same_file(user_module, tmp_path):
    recipe = parse_recipe(_recipe(STAGES))
    whole = tmp_path / "whole.nnc"
    run_recipe(recipe, whole, checkpoint_dir=tmp_path / "ck0")

    class Killed(Exception):
        pass

    def kill_after_prune(name, ctx):
        if name == "prune":
            raise Killed

    part = tmp_path / "part.nnc"
    with pytest.raises(Killed):
        run_recipe(recipe, part, checkpoint_dir=tmp_path / "ck", stage_hook=kill_after_prune)
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["stage-0.pt", "stage-1.pt"]
    report = run_recipe(recipe, part, checkpoint_dir=tmp_path / "ck", resume=True)
    assert part.read_bytes() == whole.read_bytes()
    assert [s["stage"] for s in report["stages"]][:2] == ["train", "prune"]
    assert not (tmp_path / "ck").exists()  # removed after the finished run
    with pytest.raises(Killed):
        run_recipe(recipe, part, checkpoint_dir=tmp_path / "ck", stage_hook=kill_after_prune)
    (tmp_path / "ck" / "stage-2-fit.pt").write_bytes(b"stale")  # a fresh run ignores what a killed one left
    run_recipe(recipe, tmp_path / "fresh.nnc", checkpoint_dir=tmp_path / "ck")
    assert (tmp_path / "fresh.nnc").read_bytes() == whole.read_bytes()
    with pytest.raises(Killed):
        run_recipe(recipe, part, checkpoint_dir=tmp_path / "ck", stage_hook=kill_after_prune)
    edited = parse_recipe(_recipe(STAGES[:1] + ["evaluate"]))
    with pytest.raises(ConfigError, match="another recipe"):
        run_recipe(edited, part, checkpoint_dir=tmp_path / "ck", resume=True)


def test_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="'tpu' not understood"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(ConfigError, match="does not exist"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_recipe_on_cuda_writes_a_device_independent_file(user_module, tmp_path):
    """On a GPU machine: train, prune and k-means quantize on cuda; the file loads on the
    CPU and scores what the run reported."""
    stages = STAGES[:2] + [{"quantize": {"method": "kmeans", "bits_conv": 4, "bits_fc": 4}}, "encode", "evaluate"]
    recipe = parse_recipe(_recipe(stages))
    report = run_recipe(recipe, tmp_path / "gpu.nnc", device="cuda")
    assert report["device"].startswith("cuda")
    model = factory_load(tmp_path / "gpu.nnc", factory=f"{MODULE}:net")
    assert next(model.parameters()).device.type == "cpu"
    from nncompress.recipes.build import build_recipe_data
    from nncompress.train import evaluate

    test = build_recipe_data(recipe.data).test
    assert abs(evaluate(model, test)["accuracy"] - report["summary"]["compressed_accuracy"]) <= 1 / 64


def test_huggingface_model_and_text_data_forms(tmp_path, monkeypatch, tiny_minilm):
    """``model: {huggingface: PATH}`` + ``data: {text: ...}`` + a metric: a tiny BERT (the
    MiniLM tokenizer, 2 small layers) stands in for the folder's model to keep this fast."""
    folder, tiny, _ = tiny_minilm
    (tmp_path / "calib.txt").write_text("a cat sat on the mat\nthe dog barked\nrain falls in spring\n")
    (tmp_path / "test.txt").write_text("a bird sang\nthe sun is warm today\n")
    mod = tmp_path / "mods"
    mod.mkdir()
    (mod / "nnc_text_metric.py").write_text("def mean_abs():\n    return lambda out, target: float(out.abs().mean())\n")
    monkeypatch.syspath_prepend(str(mod))
    recipe = parse_recipe({
        "name": "hf", "model": {"huggingface": folder},
        "data": {"text": {"calib": str(tmp_path / "calib.txt"), "test": str(tmp_path / "test.txt")}},
        "metric": {"factory": "nnc_text_metric:mean_abs"},
        "stages": [{"prune": {"sparsity": 0.5, "include": ["encoder.layer.0.*"]}}, "evaluate"]})
    report = run_recipe(recipe, tmp_path / "hf.nnc")
    assert report["summary"]["compressed_accuracy"] > 0
    w = tiny.encoder.layer[0].attention.self.query.weight
    assert (w == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert (tiny.encoder.layer[1].attention.self.query.weight != 0).all()
    with pytest.raises(ConfigError, match="matches no layer"):
        bad = parse_recipe({"name": "hf", "model": {"huggingface": folder},
                            "data": {"text": {"calib": str(tmp_path / "calib.txt"),
                                              "test": str(tmp_path / "test.txt")}},
                            "metric": {"factory": "nnc_text_metric:mean_abs"},
                            "stages": [{"prune": {"sparsity": 0.5, "include": ["encoder.layer.9.*"]}}]})
        run_recipe(bad, tmp_path / "bad.nnc")


@pytest.mark.slow  # three CLI processes (~15 s)
def test_cli_resume_after_sigkill_gives_a_byte_identical_file(user_module, tmp_path):
    import os
    import signal
    import subprocess

    stages = [STAGES[0], {"prune": {"sparsity": {"conv": 0.3, "head": 0.7},
                                    "retrain": {"epochs": 60, "lr": 0.01, "batch_size": 32}}}, "encode"]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_recipe(stages)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "userpkg"), *sys.path]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "nncompress", "run", str(path), "-q", "--out"]
    subprocess.run(cmd + [str(tmp_path / "whole.nnc")], env=env, check=True, capture_output=True)
    proc = subprocess.Popen(cmd + [str(tmp_path / "part.nnc")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = tmp_path / ".part.nnc.resume" / "stage-0.pt"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        pytest.skip("the run finished before it could be killed")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "part.nnc").exists()
    subprocess.run(cmd + [str(tmp_path / "part.nnc"), "--resume"], env=env, check=True, capture_output=True)
    assert (tmp_path / "part.nnc").read_bytes() == (tmp_path / "whole.nnc").read_bytes()
