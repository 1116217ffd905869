"""Bad input to the CLI: exit 2 with one line naming the value, no traceback (unless -v),
rejected before any work; temp files of atomic writes never left behind."""

import fcntl
import os

import pytest
import yaml

import nncompress
from nncompress.cli import main
from nncompress.cli import run as cli_run
from nncompress.errors import ConfigError
from nncompress.models import build_model
from nncompress.recipes import load_recipe, parse_recipe
from nncompress.train import checkpoint
from nncompress.train.checkpoint import atomic_write_bytes, temp_files_of, temp_name

RECIPE = {"name": "t", "model": {"name": "lenet300"}, "data": {"name": "digits", "train_subset": 64},
          "stages": [{"train": {"epochs": 1}}, "evaluate"]}


@pytest.fixture(scope="module")
def nnc(tmp_path_factory):
    path = tmp_path_factory.mktemp("nnc") / "m.nnc"
    nncompress.save(build_model("lenet300"), path)
    return path


@pytest.fixture
def no_run(monkeypatch):
    """Fail the test if a recipe would start running."""
    def boom(*a, **k):
        raise AssertionError("run_recipe called: bad input was not rejected up front")
    monkeypatch.setattr("nncompress.recipes.runner.run_recipe", boom)


def bad(capsys, argv, *names):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    assert err.startswith("nncompress: error: ") and err.count("\n") == 1, err
    for name in names:
        assert str(name) in err, (name, err)
    return err


def write_recipe(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


# ----------------------------------------------------------------------------- recipes


@pytest.mark.parametrize("content,what", [
    (bytes(range(256)) * 2, "binary"),
    ("name: caf\xe9\nstages: [evaluate]\n".encode("latin-1"), "not UTF-8"),
    (b"- train\n- evaluate\n", "mapping"),
    (b"[" * 5000 + b"]" * 5000, "nested"),
])
def test_recipe_that_is_not_yaml_text(tmp_path, capsys, no_run, content, what):
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=what):
        load_recipe(path)
    bad(capsys, ["run", path], "r.yaml")


def test_recipe_directory_and_missing(tmp_path, capsys, no_run):
    bad(capsys, ["run", tmp_path], str(tmp_path), "directory")
    bad(capsys, ["run", tmp_path / "nope.yaml"], "nope.yaml", "does not exist")


@pytest.mark.parametrize("model,names", [
    ({"name": "lenet300", "kwargs": {"widthz": 3}}, ["widthz"]),
    ({"name": "resnet20", "kwargs": {"widths": [-16, 32, 64]}}, ["widths", "-16"]),
    ({"name": "lenet300", "kwargs": {"dropout": 2.5}}, ["2.5"]),
    ({"name": "lenet300", "kwargs": {"in_features": 10**11}}, ["100000000000"]),
    ({"name": "nosuchnet"}, ["nosuchnet"]),
])
def test_bad_model_arguments_rejected_at_parse(tmp_path, capsys, no_run, model, names):
    raw = {**RECIPE, "model": model}
    with pytest.raises(ConfigError) as exc:
        parse_recipe(raw, "r.yaml")
    assert all(n in str(exc.value) for n in names), str(exc.value)
    bad(capsys, ["run", write_recipe(tmp_path / "r.yaml", raw)], *names)


@pytest.mark.parametrize("subset", [-5, 0, True, 1.5, "10"])
def test_train_subset_must_be_positive_int(subset):
    with pytest.raises(ConfigError, match=r"train_subset") as exc:
        parse_recipe({**RECIPE, "data": {"name": "digits", "train_subset": subset}}, "r.yaml")
    assert repr(subset) in str(exc.value) or str(subset) in str(exc.value)


def test_data_root_must_exist(tmp_path, capsys, no_run):
    missing = tmp_path / "no-such-root"
    raw = {**RECIPE, "data": {"name": "fashion-mnist", "root": str(missing)}}
    with pytest.raises(ConfigError, match="no-such-root.*does not exist"):
        parse_recipe(raw, "r.yaml")
    bad(capsys, ["run", write_recipe(tmp_path / "r.yaml", raw)], "no-such-root")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match="not a directory"):
        parse_recipe({**RECIPE, "data": {"name": "mnist", "root": str(a_file)}}, "r.yaml")
    assert parse_recipe({**RECIPE, "data": {"name": "digits", "root": str(tmp_path)}}).data.root == str(tmp_path)


# ----------------------------------------------------------------------------- run paths


def test_run_out_is_checked_before_the_recipe_runs(tmp_path, capsys, no_run):
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    (tmp_path / "outdir").mkdir()
    bad(capsys, ["run", recipe, "--out", tmp_path / "outdir"], "outdir", "directory")
    (tmp_path / "afile").write_text("x")
    bad(capsys, ["run", recipe, "--out", tmp_path / "afile" / "m.nnc"], "afile", "not a folder")
    bad(capsys, ["run", recipe, "--out", tmp_path / "m.nnc", "--report", tmp_path / "afile"], "afile")
    bad(capsys, ["run", recipe, "--out", str(tmp_path / "new") + "/"], "new/")
    bad(capsys, ["run", recipe, "--out", tmp_path / "s", "--report", tmp_path / "s"], "same path")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "outdir", "r.yaml"]


def test_run_out_in_a_missing_folder_is_fine(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_run(recipe, out, report_dir, **kw):
        seen.update(out=out, report=report_dir)
        raise KeyboardInterrupt  # stop here: the arguments were accepted
    monkeypatch.setattr("nncompress.recipes.runner.run_recipe", fake_run)
    recipe = write_recipe(tmp_path / "r.yaml", RECIPE)
    assert main(["run", str(recipe), "--out", str(tmp_path / "a" / "b" / "m.nnc")]) == 130
    assert seen["out"] == tmp_path / "a" / "b" / "m.nnc" and seen["report"] == tmp_path / "a" / "b" / "report"
    assert "interrupted" in capsys.readouterr().err


# ----------------------------------------------------------------------------- .nnc commands


@pytest.mark.parametrize("content", [b"", b"\0" * 64, b"NNC1" + b"\xff" * 60, b"garbage" * 100])
def test_damaged_nnc_files(tmp_path, capsys, nnc, content):
    path = tmp_path / "bad.nnc"
    path.write_bytes(content)
    bad(capsys, ["info", path], "bad.nnc")
    bad(capsys, ["eval", path, "--data", "digits"], "bad.nnc")
    bad(capsys, ["export", path, tmp_path / "x.safetensors"], "bad.nnc")
    assert not (tmp_path / "x.safetensors").exists()


def test_truncated_nnc(tmp_path, capsys, nnc):
    blob = nnc.read_bytes()
    for n in (10, 100, len(blob) // 2, len(blob) - 1):
        path = tmp_path / f"t{n}.nnc"
        path.write_bytes(blob[:n])
        bad(capsys, ["info", path], f"t{n}.nnc")


def test_input_files_must_be_regular_files(tmp_path, capsys):
    bad(capsys, ["info", tmp_path / "missing.nnc"], "missing.nnc", "does not exist")
    bad(capsys, ["info", tmp_path], str(tmp_path), "directory")
    os.mkfifo(tmp_path / "fifo")
    bad(capsys, ["eval", tmp_path / "fifo"], "fifo", "regular file")


def test_export_to_a_directory_or_itself(tmp_path, capsys, nnc):
    bad(capsys, ["export", nnc, tmp_path], str(tmp_path), "directory")
    bad(capsys, ["export", nnc, nnc], "input file itself")
    (tmp_path / "afile").write_text("x")
    bad(capsys, ["export", nnc, tmp_path / "afile" / "x.safetensors"], "afile")


def test_export_leaves_no_temp_file(tmp_path, capsys, nnc):
    from safetensors.torch import load_file

    out = tmp_path / "m.safetensors"
    assert main(["export", str(nnc), str(out)]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]
    assert set(load_file(str(out))) == set(build_model("lenet300").state_dict())


@pytest.mark.parametrize("argv,names", [
    (["info", "{nnc}", "--input-shape", "0"], ["--input-shape 0"]),
    (["info", "{nnc}", "--input-shape", "1", "2", "3", "4", "5"], ["1 2 3 4 5"]),
    (["info", "{nnc}", "--input-shape", "4096", "4096", "4096"], ["4096 4096 4096"]),
    (["info", "{nnc}", "--max-params", "-4"], ["--max-params", "-4"]),
    (["eval", "{nnc}", "--root", "/no/such/root"], ["/no/such/root"]),
    (["eval", "{nnc}", "--data", "cifar-100"], ["cifar-100", "digits"]),
    (["sensitivity", "{nnc}", "--data", "digits", "--samples", "-3"], ["--samples", "-3"]),
    (["sensitivity", "{nnc}", "--data", "digits", "--samples", "0"], ["--samples", "0"]),
    (["sensitivity", "{nnc}", "--data", "digits", "--ratios", "0.5", "1.5"], ["--ratios", "1.5"]),
    (["sensitivity", "{nnc}", "--data", "digits", "--ratios", "0"], ["--ratios", "0"]),
    (["sensitivity", "{nnc}", "--data", "digits", "--mac-target", "1"], ["--mac-target", "1"]),
    (["sensitivity", "{nnc}", "--data", "digits", "--criterion", "vibes"], ["vibes", "l1"]),
])
def test_bad_numbers_and_names(capsys, nnc, argv, names):
    bad(capsys, [a.format(nnc=nnc) for a in argv], *names)


def test_sensitivity_out_is_a_file(tmp_path, capsys, nnc):
    (tmp_path / "afile").write_text("x")
    bad(capsys, ["sensitivity", nnc, "--data", "digits", "--out", tmp_path / "afile"], "afile", "folder")


def test_sign_and_verify(tmp_path, capsys, nnc):
    pytest.importorskip("nncompress.format.signing")
    key, other = tmp_path / "key", tmp_path / "other"
    key.write_bytes(os.urandom(32))
    other.write_bytes(os.urandom(32))
    bad(capsys, ["sign", nnc, "--key", tmp_path / "nokey", "--out", tmp_path / "s.nnc"], "nokey")
    (tmp_path / "short").write_bytes(b"abc")
    bad(capsys, ["sign", nnc, "--key", tmp_path / "short", "--out", tmp_path / "s.nnc"], "short")
    bad(capsys, ["sign", nnc, "--key", key, "--out", tmp_path], "directory")
    assert main(["sign", str(nnc), "--key", str(key), "--out", str(tmp_path / "s.nnc")]) == 0
    capsys.readouterr()
    assert main(["info", str(tmp_path / "s.nnc"), "--verify-key", str(key), "--json"]) == 0
    capsys.readouterr()
    bad(capsys, ["info", tmp_path / "s.nnc", "--verify-key", other], "s.nnc")
    bad(capsys, ["info", tmp_path / "s.nnc", "--verify-key", tmp_path / "nokey"], "nokey")
    assert not temp_files_of(tmp_path / "s.nnc")


# ----------------------------------------------------------------------------- main's handlers


def test_internal_error_is_one_line_and_traceback_only_with_v(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("kaputt")
    monkeypatch.setattr(cli_run, "_cmd_recipes", boom)
    assert main(["recipes"]) == 1
    err = capsys.readouterr().err
    assert err == "nncompress: internal error: RuntimeError: kaputt (run with -v for the traceback)\n"
    assert main(["-v", "recipes"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "kaputt" in err


@pytest.mark.parametrize("exc,rc,text", [
    (PermissionError(13, "Permission denied", "/some/file"), 2, "'/some/file': Permission denied"),
    (ValueError("bad thing"), 2, "ValueError: bad thing"),
    (ConfigError("x=3 not allowed"), 2, "x=3 not allowed"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_bad_input_exceptions(monkeypatch, capsys, exc, rc, text):
    def raise_it(args):
        raise exc
    monkeypatch.setattr(cli_run, "_cmd_recipes", raise_it)
    assert main(["recipes"]) == rc
    err = capsys.readouterr().err
    assert text in err and "Traceback" not in err
    assert main(["-v", "recipes"]) == rc
    assert "Traceback" in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2 and "frobnicate" in capsys.readouterr().err


# ----------------------------------------------------------------------------- temp files


def test_stale_temp_of_a_killed_write_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "m.nnc"
    stale = temp_name(target, "0123456789abcdef")
    legacy = tmp_path / ".m.nnc.k7x_2abq.tmp"  # the mkstemp name older versions left
    other = temp_name(tmp_path / "m.nnc.bak", "0123456789abcdef")  # another target's temp
    unrelated = tmp_path / ".m.nnc.notes.tmp"
    for p in (stale, legacy, other, unrelated):
        p.write_bytes(b"partial")
    assert temp_files_of(target) == sorted([stale, legacy])
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert not stale.exists() and not legacy.exists()
    assert other.exists() and unrelated.exists()


def test_temp_held_by_a_live_writer_is_kept(tmp_path):
    target = tmp_path / "m.nnc"
    live = temp_name(target, "fedcba9876543210")
    fd = os.open(live, os.O_WRONLY | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        atomic_write_bytes(target, b"x")
        assert live.exists()
    finally:
        os.close(fd)
    atomic_write_bytes(target, b"y")  # the lock is gone with its writer: now stale
    assert not live.exists() and target.read_bytes() == b"y"


@pytest.mark.parametrize("fail", ["replace", "fsync", "write"])
def test_error_mid_write_leaves_no_temp(tmp_path, monkeypatch, fail):
    target = tmp_path / "m.nnc"
    target.write_bytes(b"old")

    def broken(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(checkpoint.os, {"write": "fdopen"}.get(fail, fail), broken)
    with pytest.raises(OSError):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.nnc"]
    assert target.read_bytes() == b"old"


def test_interrupt_mid_write_leaves_no_temp(tmp_path, monkeypatch):
    def interrupted(*a):
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoint.os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        atomic_write_bytes(tmp_path / "m.nnc", b"new")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_to_a_directory_is_refused(tmp_path):
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(tmp_path, b"x")
    assert list(tmp_path.iterdir()) == []


def test_info_on_a_user_model_file_prints_the_table(tmp_path, capsys):
    """A file without an architecture record is not bad input: info prints its tensor table
    and says the per-layer table needs the model's class."""
    import torch

    import nncompress
    from nncompress.cli import main

    path = tmp_path / "user.nnc"
    nncompress.save(torch.nn.Sequential(torch.nn.Linear(4, 3)), path)
    assert main(["info", str(path), "--json"]) == 0
    out = capsys.readouterr().out
    assert "0.weight" in out and "user-defined model" in out
