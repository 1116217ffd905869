"""Bad input to every ``nncompress`` command: no tracebacks, exit status 2, a message that
names the bad value, no stray temp files, and rejection before any work.

Each case runs ``python -m nncompress ...`` as a subprocess (2 at a time) in its own
folder, on small inputs crafted in a temp folder: binary and malformed recipes, recipes
with unknown keys or bad values, directories where files belong, missing files, garbage,
truncated, tampered and hostile ``.nnc`` files, out-of-range numbers. For each it records
the exit status, whether stderr holds a traceback, whether stderr names a distinctive part
of the bad value, the time taken, and temp files left in its folder. A second part kills
writes midway (SIGKILL while the temp file is open) and checks that the next write to the
same target removes the temp file.

    python benchmarks/cli_bad_input.py            # writes benchmarks/results/cli_bad_input.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TEMP_PATTERNS = (re.compile(r".*\.nnc-tmp$"), re.compile(r"^\..*\.tmp$"), re.compile(r".*\.tmp-export$"),
                 re.compile(r".*\.tmp$"))


@dataclass
class Case:
    group: str  # the command (or "options")
    what: str  # the bad input, in words
    argv: list[str]
    expect: list[str]  # stderr must contain one of these (a distinctive part of the bad value)
    setup: list[str] = field(default_factory=list)  # "dir:NAME" / "file:NAME" made in the case folder


@dataclass
class Result:
    group: str
    what: str
    command: str
    rc: int
    traceback: bool
    names_value: bool
    seconds: float
    stray_temps: list[str]
    stderr: str


# --------------------------------------------------------------------------- inputs


def _recipe(**patch) -> dict:
    base = {"name": "bad", "model": {"name": "lenet300"}, "data": {"name": "digits", "train_subset": 64},
            "stages": [{"train": {"epochs": 1, "lr": 0.05}}, "evaluate"]}
    for key, value in patch.items():
        if value is None:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def make_inputs(inp: Path) -> None:
    """The shared, read-only inputs of every case."""
    import torch

    import nncompress
    from nncompress.format import pack_container, unpack_container
    from nncompress.models import build_model

    rng = torch.Generator().manual_seed(0)

    def rand_bytes(n: int) -> bytes:
        return bytes(torch.randint(0, 256, (n,), generator=rng, dtype=torch.uint8).tolist())

    inp.mkdir(parents=True, exist_ok=True)
    nncompress.save(build_model("lenet300"), inp / "good.nnc")
    nncompress.save(build_model("lenet300", in_features=100), inp / "narrow-input.nnc")
    good = (inp / "good.nnc").read_bytes()
    (inp / "key").write_bytes(rand_bytes(32))
    (inp / "otherkey").write_bytes(rand_bytes(32))
    (inp / "shortkey").write_bytes(b"abc")
    (inp / "emptykey").write_bytes(b"")
    (inp / "adir").mkdir()
    (inp / "emptydata").mkdir()
    (inp / "dir.nnc").mkdir()
    (inp / "dir.yaml").mkdir()
    os.mkfifo(inp / "fifo.nnc")
    os.symlink(inp / "no-such-target.nnc", inp / "dangling.nnc")
    (inp / "plain.txt").write_text("just a file\n")
    try:
        from nncompress.format.signing import sign_file

        sign_file(inp / "good.nnc", inp / "key", out=inp / "signed.nnc")
    except ImportError:  # an nncompress without signing: the signed-file cases then fail loudly
        (inp / "signed.nnc").write_bytes(good)

    # .nnc files that are not: garbage, truncated, tampered
    (inp / "empty.nnc").write_bytes(b"")
    (inp / "zeros.nnc").write_bytes(b"\0" * 64)
    (inp / "random.nnc").write_bytes(rand_bytes(4096))
    (inp / "text.nnc").write_text("name: not a model\n")
    for n in (3, 24, 100, 5000, len(good) // 2, len(good) - 1):
        (inp / f"trunc{n}.nnc").write_bytes(good[:n])
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0xFF
    (inp / "bitflip.nnc").write_bytes(bytes(flipped))
    (inp / "badmagic.nnc").write_bytes(b"XNC1" + good[4:])
    version = bytearray(good)
    version[4:6] = (99).to_bytes(2, "little")
    (inp / "version99.nnc").write_bytes(bytes(version))
    hlen = bytearray(good)
    hlen[8:16] = (2**62).to_bytes(8, "little")
    (inp / "hugeheader.nnc").write_bytes(bytes(hlen))
    (inp / "signed-tampered.nnc").write_bytes((inp / "signed.nnc").read_bytes()[:-9] + b"\1" * 9)

    # well-formed containers with hostile headers
    c = unpack_container(good)
    meta, sections = c.meta, c.sections

    def hostile(name: str, new_meta, new_sections=None) -> None:
        (inp / name).write_bytes(pack_container(new_meta, sections if new_sections is None else new_sections))

    def with_tensor0(**changes):
        tensors = [dict(t) for t in meta["tensors"]]
        tensors[0].update(changes)
        return {**meta, "tensors": tensors}

    hostile("meta-list.nnc", [1, 2, 3])
    hostile("no-tensors.nnc", {k: v for k, v in meta.items() if k != "tensors"})
    hostile("tensors-str.nnc", {**meta, "tensors": "many"})
    hostile("huge-shape.nnc", with_tensor0(shape=[10**9, 10**9]))
    hostile("neg-shape.nnc", with_tensor0(shape=[-300, 784]))
    hostile("many-dims.nnc", with_tensor0(shape=[1] * 64))
    hostile("bad-codec.nnc", with_tensor0(codec="pickle"))
    hostile("bad-dtype.nnc", with_tensor0(dtype="object"))
    hostile("missing-section.nnc", meta, {})
    hostile("arch-unknown.nnc", {**meta, "arch": {"name": "evilnet", "kwargs": {}}})
    hostile("arch-kwargs.nnc", {**meta, "arch": {"name": "lenet300", "kwargs": {"os": "rm -rf /"}}})
    hostile("arch-huge.nnc", {**meta, "arch": {"name": "lenet300", "kwargs": {"in_features": 10**12}}})
    hostile("arch-neg.nnc", {**meta, "arch": {"name": "resnet20", "kwargs": {"widths": [-16, 32, 64]}}})
    hostile("arch-hashed-loop.nnc", {**meta, "arch": {"name": "hashed", "kwargs": {
        "base": {"name": "hashed", "kwargs": {}}, "layers": {}}}})
    deep: list = []
    for _ in range(400):
        deep = [deep]
    hostile("deep-meta.nnc", {**meta, "metadata": {"x": deep}})

    # recipe files that are not YAML text
    (inp / "binary.yaml").write_bytes(rand_bytes(300))
    (inp / "binary-noext").write_bytes(b"\x7fELF\x02\x01\x01\0" + rand_bytes(200))
    (inp / "nul.yaml").write_bytes(b"name: x\0\nstages: [evaluate]\n")
    (inp / "latin1.yaml").write_bytes("name: caf\xe9\nstages: [evaluate]\n".encode("latin-1"))
    (inp / "list.yaml").write_text("- train\n- evaluate\n")
    (inp / "scalar.yaml").write_text("just-a-scalar-string\n")
    (inp / "empty.yaml").write_text("")
    (inp / "syntax.yaml").write_text("name: x\nstages: [train, {evaluate: \n")
    (inp / "deep.yaml").write_text("[" * 20000 + "]" * 20000 + "\n")
    (inp / "big.yaml").write_text("# padding\n" * 200_000)
    (inp / "good.nnc.yaml").write_bytes(good)

    # YAML recipes with bad keys or values (file name: what is wrong)
    bad = {
        "unknown-top-key": _recipe(stagez=[]),
        "stages-empty": _recipe(stages=[]),
        "stages-not-list": _recipe(stages="train"),
        "stage-two-keys": _recipe(stages=[{"train": {}, "evaluate": {}}]),
        "stage-unknown": _recipe(stages=[{"shrinkify": {}}]),
        "stage-unknown-key": _recipe(stages=[{"train": {"epochz": 3}}]),
        "stage-epochs-negative": _recipe(stages=[{"train": {"epochs": -7}}]),
        "stage-lr-string": _recipe(stages=[{"train": {"lr": "fastest"}}]),
        "stage-encode-bits": _recipe(stages=[{"encode": {"index_bits_fc": 77}}]),
        "model-not-mapping": _recipe(model="lenet300-as-a-string"),
        "model-unknown": _recipe(model={"name": "gpt5"}),
        "model-kwarg-unknown": _recipe(model={"name": "lenet300", "kwargs": {"widthz": 3}}),
        "model-kwargs-list": _recipe(model={"name": "lenet300", "kwargs": [1, 2]}),
        "model-negative-width": _recipe(model={"name": "resnet20", "kwargs": {"widths": [-16, 32, 64]}}),
        "model-negative-features": _recipe(model={"name": "lenet300", "kwargs": {"in_features": -784}}),
        "model-zero-width": _recipe(model={"name": "resnet20", "kwargs": {"widths": [0, 32, 64]}}),
        "model-dropout-2": _recipe(model={"name": "lenet300", "kwargs": {"dropout": 2.5}}),
        "model-classes-0": _recipe(model={"name": "lenet300", "kwargs": {"num_classes": 0}}),
        "model-giant": _recipe(model={"name": "lenet300", "kwargs": {"in_features": 123456789012}}),
        "model-wrong-input": _recipe(model={"name": "lenet300", "kwargs": {"in_features": 333}}),
        "data-unknown": _recipe(data={"name": "imagenet-1k"}),
        "data-not-mapping": _recipe(data=["digits"]),
        "data-root-missing": _recipe(data={"name": "fashion-mnist", "root": "/no/such/data-root"}),
        "data-root-file": _recipe(data={"name": "mnist", "root": str(inp / "plain.txt")}),
        "data-subset-negative": _recipe(data={"name": "digits", "train_subset": -5}),
        "data-subset-zero": _recipe(data={"name": "digits", "train_subset": 0}),
        "data-subset-bool": _recipe(data={"name": "digits", "train_subset": True}),
        "data-subset-float": _recipe(data={"name": "digits", "train_subset": 12.5}),
        "data-subset-string": _recipe(data={"name": "digits", "train_subset": "lots"}),
        "data-unknown-key": _recipe(data={"name": "digits", "rooot": "/tmp"}),
        "seed-negative": _recipe(seed=-42),
        "seed-huge": _recipe(seed=2**70),
        "seed-string": _recipe(seed="lucky"),
    }
    for name, raw in bad.items():
        (inp / f"{name}.yaml").write_text(yaml.safe_dump(raw))


# --------------------------------------------------------------------------- cases


def cases(inp: Path) -> list[Case]:
    i = lambda name: str(inp / name)  # noqa: E731 - shared input path
    out: list[Case] = []

    def add(group, what, argv, expect, setup=()):
        out.append(Case(group, what, list(argv), [expect] if isinstance(expect, str) else list(expect),
                        list(setup)))

    smoke = "smoke-digits"
    # run: the recipe itself
    for name, what in [("binary.yaml", "random bytes as the recipe"),
                       ("binary-noext", "an ELF-like binary (no suffix) as the recipe"),
                       ("nul.yaml", "recipe with a NUL byte"), ("latin1.yaml", "recipe in Latin-1, not UTF-8"),
                       ("list.yaml", "recipe that is a YAML list"), ("scalar.yaml", "recipe that is a YAML scalar"),
                       ("empty.yaml", "empty recipe file"), ("syntax.yaml", "recipe with a YAML syntax error"),
                       ("deep.yaml", "recipe nested 20,000 levels deep"), ("big.yaml", "2 MB recipe"),
                       ("good.nnc.yaml", "a .nnc file named .yaml"), ("dir.yaml", "a directory as the recipe")]:
        add("run", what, ["run", i(name)], name)
    add("run", "missing recipe file", ["run", i("no-such-recipe.yaml")], "no-such-recipe.yaml")
    add("run", "unknown built-in recipe name", ["run", "deep-compression-resnet9000"], "resnet9000")
    add("run", "recipe path under a file", ["run", i("plain.txt") + "/r.yaml"], "plain.txt")
    add("run", "FIFO as the recipe", ["run", i("fifo.nnc")], "fifo.nnc")
    expect_of = {"unknown-top-key": "stagez", "stages-empty": "stages", "stages-not-list": "stages",
                 "stage-two-keys": "stages[0]", "stage-unknown": "shrinkify", "stage-unknown-key": "epochz",
                 "stage-epochs-negative": "-7", "stage-lr-string": "fastest", "stage-encode-bits": "77",
                 "model-not-mapping": "lenet300-as-a-string", "model-unknown": "gpt5",
                 "model-kwarg-unknown": "widthz", "model-kwargs-list": "[1, 2]", "model-negative-width": "-16",
                 "model-negative-features": "-784", "model-zero-width": "[0, 32, 64]",
                 "model-dropout-2": "2.5", "model-classes-0": "num_classes", "model-giant": "123456789012",
                 "model-wrong-input": "333", "data-unknown": "imagenet-1k", "data-not-mapping": "['digits']",
                 "data-root-missing": "/no/such/data-root", "data-root-file": "plain.txt",
                 "data-subset-negative": "-5", "data-subset-zero": "train_subset",
                 "data-subset-bool": "True", "data-subset-float": "12.5", "data-subset-string": "lots",
                 "data-unknown-key": "rooot", "seed-negative": "-42", "seed-huge": str(2**70),
                 "seed-string": "lucky"}
    for name, expect in expect_of.items():
        add("run", f"recipe: {name.replace('-', ' ')}", ["run", i(f"{name}.yaml"), "-q"], expect)
    # run: output paths (all before the recipe runs)
    add("run", "--out an existing directory", ["run", smoke, "--out", "outdir"], "outdir", ["dir:outdir"])
    add("run", "--out ending in a slash", ["run", smoke, "--out", "newdir/"], "newdir/")
    add("run", "--out under an existing file", ["run", smoke, "--out", "afile/model.nnc"], "afile",
        ["file:afile"])
    add("run", "--out a device", ["run", smoke, "--out", "/dev/null"], "/dev/null")
    add("run", "--report an existing file", ["run", smoke, "--out", "m.nnc", "--report", "afile"], "afile",
        ["file:afile"])
    add("run", "--report under a file", ["run", smoke, "--report", "afile/rep"], "afile", ["file:afile"])
    add("run", "--out and --report the same path", ["run", smoke, "--out", "same", "--report", "same"], "same")
    add("run", "--out empty string", ["run", smoke, "--out", ""], "''")
    add("run", "unknown option", ["run", smoke, "--epochs", "3"], "--epochs")

    # info
    nnc_garbage = ["empty.nnc", "zeros.nnc", "random.nnc", "text.nnc", "trunc3.nnc", "trunc24.nnc",
                   "trunc100.nnc", "trunc5000.nnc", "bitflip.nnc", "badmagic.nnc", "version99.nnc",
                   "hugeheader.nnc", "meta-list.nnc", "no-tensors.nnc", "tensors-str.nnc", "huge-shape.nnc",
                   "neg-shape.nnc", "many-dims.nnc", "bad-codec.nnc", "bad-dtype.nnc", "missing-section.nnc",
                   "deep-meta.nnc", "binary.yaml"]
    for name in nnc_garbage:
        add("info", f"damaged file {name}", ["info", i(name)], name)
    for name in ("arch-unknown.nnc", "arch-kwargs.nnc", "arch-huge.nnc", "arch-neg.nnc", "arch-hashed-loop.nnc"):
        add("eval", f"hostile architecture record {name}", ["eval", i(name), "--data", "digits"], name)
        add("info", f"hostile architecture record {name}", ["info", i(name)], name)
    add("info", "missing file", ["info", i("missing.nnc")], "missing.nnc")
    add("info", "a directory", ["info", i("dir.nnc")], "dir.nnc")
    add("info", "a FIFO", ["info", i("fifo.nnc")], "fifo.nnc")
    add("info", "a dangling symlink", ["info", i("dangling.nnc")], "dangling.nnc")
    add("info", "a device", ["info", "/dev/zero"], "/dev/zero")
    add("info", "--input-shape 0", ["info", i("good.nnc"), "--input-shape", "0"], "--input-shape 0")
    add("info", "--input-shape negative", ["info", i("good.nnc"), "--input-shape", "1", "-28", "28"], "-28")
    add("info", "--input-shape 5 dims", ["info", i("good.nnc"), "--input-shape", "1", "2", "3", "4", "5"],
        "1 2 3 4 5")
    add("info", "--input-shape huge", ["info", i("good.nnc"), "--input-shape", "4096", "4096", "4096"],
        "4096 4096 4096")
    add("info", "--input-shape the model does not take", ["info", i("good.nnc"), "--input-shape", "3", "17", "17"],
        "3 17 17")
    add("info", "--input-shape not a number", ["info", i("good.nnc"), "--input-shape", "1x28x28"], "1x28x28")
    add("info", "--max-params 0", ["info", i("good.nnc"), "--max-params", "0"], "0")
    add("info", "--max-params negative", ["info", i("good.nnc"), "--max-params", "-12"], "-12")
    add("info", "--max-params below the file's size", ["info", i("good.nnc"), "--max-params", "1000"],
        ["1000", "1,000"])
    add("info", "--verify-key missing", ["info", i("good.nnc"), "--verify-key", i("nokey")], "nokey")
    add("info", "--verify-key a directory", ["info", i("good.nnc"), "--verify-key", i("adir")], "adir")
    add("info", "--verify-key empty key", ["info", i("good.nnc"), "--verify-key", i("emptykey")], "emptykey")
    add("info", "--verify-key 3-byte key", ["info", i("good.nnc"), "--verify-key", i("shortkey")], "shortkey")
    add("info", "--verify-key on an unsigned file", ["info", i("good.nnc"), "--verify-key", i("key")],
        "good.nnc")
    add("info", "--verify-key with the wrong key", ["info", i("signed.nnc"), "--verify-key", i("otherkey")],
        "signed.nnc")
    add("info", "signed file tampered with", ["info", i("signed-tampered.nnc"), "--verify-key", i("key")],
        "signed-tampered.nnc")

    # eval
    for name in ("random.nnc", "trunc5000.nnc", "bitflip.nnc", "huge-shape.nnc", "bad-codec.nnc"):
        add("eval", f"damaged file {name}", ["eval", i(name), "--data", "digits"], name)
    add("eval", "missing file", ["eval", i("missing.nnc"), "--data", "digits"], "missing.nnc")
    add("eval", "a directory", ["eval", i("dir.nnc")], "dir.nnc")
    add("eval", "unknown --data", ["eval", i("good.nnc"), "--data", "cifar-100"], "cifar-100")
    add("eval", "--root does not exist", ["eval", i("good.nnc"), "--root", "/no/such/root"], "/no/such/root")
    add("eval", "--root is a file", ["eval", i("good.nnc"), "--data", "mnist", "--root", i("plain.txt")],
        "plain.txt")
    add("eval", "--root holds no dataset", ["eval", i("good.nnc"), "--data", "mnist", "--root",
                                            i("emptydata")], "emptydata")
    add("eval", "model does not fit the data", ["eval", i("narrow-input.nnc"), "--data", "digits"],
        "narrow-input.nnc")
    add("eval", "--max-params negative", ["eval", i("good.nnc"), "--data", "digits", "--max-params", "-3"],
        "-3")
    add("eval", "--verify-key with the wrong key", ["eval", i("signed.nnc"), "--data", "digits",
                                                    "--verify-key", i("otherkey")], "signed.nnc")

    # export
    for name in ("zeros.nnc", "trunc100.nnc", "version99.nnc", "neg-shape.nnc", "missing-section.nnc"):
        add("export", f"damaged file {name}", ["export", i(name), "x.safetensors"], name)
    add("export", "to an existing directory", ["export", i("good.nnc"), "outdir"], "outdir", ["dir:outdir"])
    add("export", "to a path ending in a slash", ["export", i("good.nnc"), "newdir/"], "newdir/")
    add("export", "to a path under a file", ["export", i("good.nnc"), "afile/x.safetensors"], "afile",
        ["file:afile"])
    add("export", "onto its own input", ["export", i("good.nnc"), i("good.nnc")], "good.nnc")
    add("export", "to a device", ["export", i("good.nnc"), "/dev/null"], "/dev/null")
    add("export", "missing input", ["export", i("missing.nnc"), "x.safetensors"], "missing.nnc")
    add("export", "missing OUT argument", ["export", i("good.nnc")], "out")
    add("export", "--max-params 0", ["export", i("good.nnc"), "x.safetensors", "--max-params", "0"], "0")

    # sensitivity
    good = i("good.nnc")
    sens = ["sensitivity", good, "--data", "digits"]
    add("sensitivity", "--samples 0", [*sens, "--samples", "0"], "0")
    add("sensitivity", "--samples negative", [*sens, "--samples", "-3"], "-3")
    add("sensitivity", "--samples not a number", [*sens, "--samples", "many"], "many")
    add("sensitivity", "--ratios 0", [*sens, "--ratios", "0"], "--ratios")
    add("sensitivity", "--ratios 1", [*sens, "--ratios", "0.5", "1"], "got 1")
    add("sensitivity", "--ratios 1.5", [*sens, "--ratios", "1.5"], "1.5")
    add("sensitivity", "--ratios negative", [*sens, "--ratios", "-0.25"], "-0.25")
    add("sensitivity", "--ratios nan", [*sens, "--ratios", "nan"], "nan")
    add("sensitivity", "--mac-target 1", [*sens, "--mac-target", "1"], "got 1")
    add("sensitivity", "--mac-target negative", [*sens, "--mac-target", "-0.1"], "-0.1")
    add("sensitivity", "--mac-target 7", [*sens, "--mac-target", "7"], "7")
    add("sensitivity", "unknown --criterion", [*sens, "--criterion", "vibes"], "vibes")
    add("sensitivity", "unknown --data", ["sensitivity", good, "--data", "svhn"], "svhn")
    add("sensitivity", "--root does not exist", [*sens, "--root", "/no/root/here"], "/no/root/here")
    add("sensitivity", "--out an existing file", [*sens, "--out", "afile"], "afile", ["file:afile"])
    add("sensitivity", "--out under a file", [*sens, "--out", "afile/sub"], "afile", ["file:afile"])
    add("sensitivity", "missing file", ["sensitivity", i("missing.nnc"), "--data", "digits"], "missing.nnc")
    add("sensitivity", "damaged file", ["sensitivity", i("trunc24.nnc"), "--data", "digits"], "trunc24.nnc")

    # sign
    add("sign", "missing file", ["sign", i("missing.nnc"), "--key", i("key"), "--out", "s.nnc"], "missing.nnc")
    add("sign", "damaged file", ["sign", i("bitflip.nnc"), "--key", i("key"), "--out", "s.nnc"], "bitflip.nnc")
    add("sign", "garbage file", ["sign", i("random.nnc"), "--key", i("key"), "--out", "s.nnc"], "random.nnc")
    add("sign", "--key missing", ["sign", good, "--key", i("nokey"), "--out", "s.nnc"], "nokey")
    add("sign", "--key a directory", ["sign", good, "--key", i("adir"), "--out", "s.nnc"], "adir")
    add("sign", "--key too short", ["sign", good, "--key", i("shortkey"), "--out", "s.nnc"], "shortkey")
    add("sign", "--key empty", ["sign", good, "--key", i("emptykey"), "--out", "s.nnc"], "emptykey")
    add("sign", "--key is the file itself", ["sign", good, "--key", good, "--out", "s.nnc"], "good.nnc")
    add("sign", "--out an existing directory", ["sign", good, "--key", i("key"), "--out", "outdir"], "outdir",
        ["dir:outdir"])
    add("sign", "--out under a file", ["sign", good, "--key", i("key"), "--out", "afile/s.nnc"], "afile",
        ["file:afile"])
    add("sign", "--key not given", ["sign", good, "--out", "s.nnc"], "--key")

    # recipes, and options of no command
    add("recipes", "an extra argument", ["recipes", "lenet-please"], "lenet-please")
    add("recipes", "an unknown option", ["recipes", "--all"], "--all")
    add("options", "unknown command", ["frobnicate"], "frobnicate")
    add("options", "unknown global option", ["--colour", "recipes"], "--colour")
    add("options", "info without a file", ["info"], "file")
    add("options", "unknown info option", ["info", good, "--layers"], "--layers")
    return out


# --------------------------------------------------------------------------- running


def _temps(folder: Path) -> list[str]:
    found = []
    for dirpath, _, files in os.walk(folder):
        for f in files:
            if any(p.match(f) for p in TEMP_PATTERNS):
                found.append(str(Path(dirpath, f).relative_to(folder)))
    return sorted(found)


def run_case(n: int, case: Case, work: Path, env: dict[str, str], timeout: float) -> Result:
    folder = work / f"case{n:03d}"
    folder.mkdir()
    for item in case.setup:
        kind, name = item.split(":", 1)
        if kind == "dir":
            (folder / name).mkdir()
        else:
            (folder / name).write_text("an existing file\n")
    cmd = [sys.executable, "-m", "nncompress", *case.argv]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=timeout,
                              errors="replace")
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:  # did work instead of refusing: a failure
        rc, err = -1, f"TIMEOUT after {timeout:.0f} s\n{exc.stderr or ''}"
    seconds = time.perf_counter() - t0
    command = "nncompress " + " ".join(shlex.quote(a) for a in case.argv)
    return Result(case.group, case.what, command.replace(str(work), "$TMP"), rc, "Traceback" in err,
                  any(e in err for e in case.expect), round(seconds, 2), _temps(folder),
                  err.strip()[-600:].replace(str(work), "$TMP"))


KILL_WRITER = textwrap.dedent("""
    import os, sys, time
    from nncompress.train import checkpoint

    real_fsync = os.fsync
    def slow_fsync(fd):  # hold the write open so it can be killed midway
        print("writing", flush=True)
        time.sleep(60)
        real_fsync(fd)
    checkpoint.os.fsync = slow_fsync
    checkpoint.atomic_write_bytes(sys.argv[1], b"x" * 1_000_000)
""")


def kill_recovery(work: Path, inp: Path, env: dict[str, str]) -> list[dict]:
    """SIGKILL a write midway, then write the same target again through the CLI (or a second
    writer) and check the temp file is gone."""
    rows = []
    scenarios = [
        ("export", "out.safetensors", ["export", str(inp / "good.nnc"), "out.safetensors"]),
        ("sign --out", "signed.nnc", ["sign", str(inp / "good.nnc"), "--key", str(inp / "key"), "--out",
                                      "signed.nnc"]),
        ("export (temp of an older nncompress)", "old.safetensors",
         ["export", str(inp / "good.nnc"), "old.safetensors"]),
    ]
    for n, (label, target, argv) in enumerate(scenarios):
        folder = work / f"kill{n}"
        folder.mkdir()
        if "older" in label:  # the name tempfile.mkstemp gave before: .NAME.xxxxxxxx.tmp
            (folder / f".{target}.k7x_2abq.tmp").write_bytes(b"partial")
            left = _temps(folder)
        else:
            writer = subprocess.Popen([sys.executable, "-c", KILL_WRITER, target], cwd=folder, env=env,
                                      stdout=subprocess.PIPE, text=True)
            assert writer.stdout is not None
            writer.stdout.readline()  # "writing": the temp file exists and is half done
            writer.send_signal(signal.SIGKILL)
            writer.wait()
            left = _temps(folder)
        proc = subprocess.run([sys.executable, "-m", "nncompress", *argv], cwd=folder, env=env,
                              capture_output=True, text=True)
        rows.append({"scenario": label, "target": target, "temps_after_kill": left,
                     "next_write_rc": proc.returncode, "temps_after_next_write": _temps(folder),
                     "target_written": (folder / target).is_file(),
                     "stderr": proc.stderr.strip()[-300:].replace(str(work), "$TMP")})
    return rows


# --------------------------------------------------------------------------- report


def write_reports(results: list[Result], kills: list[dict], command: str, seconds: float) -> dict:
    counts = {
        "invocations": len(results),
        "tracebacks": sum(r.traceback for r in results),
        "rc_not_2": sum(r.rc != 2 for r in results),
        "message_not_naming_value": sum(not r.names_value for r in results),
        "stray_temp_files": sum(len(r.stray_temps) for r in results),
        "slower_than_5s": sum(r.seconds > 5 for r in results),
    }
    groups = sorted({r.group for r in results})
    per_group = {g: {"invocations": sum(r.group == g for r in results),
                     "tracebacks": sum(r.traceback for r in results if r.group == g),
                     "rc_not_2": sum(r.rc != 2 for r in results if r.group == g),
                     "not_naming": sum(not r.names_value for r in results if r.group == g),
                     "max_seconds": max(r.seconds for r in results if r.group == g)} for g in groups}
    kill_ok = sum(1 for k in kills if k["temps_after_kill"] and not k["temps_after_next_write"]
                  and k["target_written"] and k["next_write_rc"] == 0)
    payload = {"command": command, "python": sys.version.split()[0], "platform": platform.platform(),
               "seconds_total": round(seconds, 1), "counts": counts, "per_command": per_group,
               "kill_recovery": {"scenarios": len(kills), "temp_removed_by_next_write": kill_ok, "rows": kills},
               "cases": [asdict(r) for r in results]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cli_bad_input.json").write_text(json.dumps(payload, indent=2) + "\n")

    secs = sorted(r.seconds for r in results)
    lines = [
        "# CLI bad input",
        "",
        f"Command: `{command}` (Python {payload['python']}, {payload['platform']}, "
        f"{seconds:.0f} s in all, 2 workers)",
        "",
        "Every case runs `python -m nncompress ...` as a subprocess in its own folder on crafted inputs; "
        "a case passes when the exit status is 2, stderr has no traceback and names a distinctive part "
        "of the bad value, and no temp file is left.",
        "",
        "| invocations | tracebacks | rc != 2 | messages not naming the value | stray temp files | > 5 s |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {counts['invocations']} | {counts['tracebacks']} | {counts['rc_not_2']} | "
        f"{counts['message_not_naming_value']} | {counts['stray_temp_files']} | {counts['slower_than_5s']} |",
        "",
        f"Time per invocation: median {secs[len(secs) // 2]:.2f} s, max {secs[-1]:.2f} s "
        "(mostly the Python + torch import).",
        "",
        "| command | invocations | tracebacks | rc != 2 | not naming the value | max s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for g, c in per_group.items():
        lines.append(f"| {g} | {c['invocations']} | {c['tracebacks']} | {c['rc_not_2']} | {c['not_naming']} | "
                     f"{c['max_seconds']:.2f} |")
    lines += ["", "## Killed writes", "",
              "A writer is SIGKILLed while its temp file is open (or a temp file of the name older versions "
              "used is planted); then the command writes the same target again.", "",
              "| scenario | temps after the kill | next write rc | temps after the next write | target written |",
              "|---|---|---:|---|---|"]
    for k in kills:
        lines.append(f"| {k['scenario']} | {', '.join(k['temps_after_kill']) or '-'} | {k['next_write_rc']} | "
                     f"{', '.join(k['temps_after_next_write']) or '-'} | {k['target_written']} |")
    failed = [r for r in results if r.traceback or r.rc != 2 or not r.names_value or r.stray_temps]
    lines += ["", f"## Failing cases ({len(failed)})", ""]
    lines += [f"- `{r.command}` ({r.what}): rc {r.rc}, traceback {r.traceback}, names value {r.names_value}, "
              f"temps {r.stray_temps}: {r.stderr.splitlines()[-1] if r.stderr else ''}" for r in failed] or ["none"]
    lines += ["", "## Every case", "", "| command | bad input | rc | s | message (last line of stderr) |",
              "|---|---|---:|---:|---|"]
    for r in results:
        msg = (r.stderr.splitlines()[-1] if r.stderr else "").replace("|", "\\|")
        if len(msg) > 220:
            msg = msg[:217] + "..."
        lines.append(f"| {r.group} | {r.what} | {r.rc} | {r.seconds:.1f} | {msg} |")
    (RESULTS / "cli_bad_input.md").write_text("\n".join(lines) + "\n")
    return counts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as doing work")
    ap.add_argument("--only", help="run only cases whose command or description contains this")
    args = ap.parse_args()
    command = "python benchmarks/cli_bad_input.py" + "".join(
        f" {a}" for a in sys.argv[1:])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nnc-bad-input-") as tmp:
        work = Path(tmp)
        inp = work / "inputs"
        make_inputs(inp)
        all_cases = cases(inp)
        if args.only:
            all_cases = [c for c in all_cases if args.only in c.group or args.only in c.what]
        with ThreadPoolExecutor(args.workers) as pool:
            results = list(pool.map(lambda nc: run_case(nc[0], nc[1], work, env, args.timeout),
                                    enumerate(all_cases)))
        kills = kill_recovery(work, inp, env)
        inputs_temps = _temps(inp)
        if inputs_temps:
            print(f"temp files left among the shared inputs: {inputs_temps}")
    counts = write_reports(results, kills, command, time.perf_counter() - t0)
    print(json.dumps(counts))
    for r in results:
        if r.traceback or r.rc != 2 or not r.names_value or r.stray_temps:
            print(f"FAIL {r.command}: rc={r.rc} tb={r.traceback} named={r.names_value} temps={r.stray_temps}\n"
                  f"     {r.stderr.splitlines()[-1] if r.stderr else ''}")
    for k in kills:
        print(f"kill {k['scenario']}: after kill {k['temps_after_kill']}, after next write "
              f"{k['temps_after_next_write']}, rc {k['next_write_rc']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
