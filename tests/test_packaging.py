"""Dependencies that respect the user's environment (issue 21, item 4).

The package asks for a torch range, not the local build: ``pip install .`` into a venv that
already has torch 2.13.0 (the CPU build scripts/setup.sh pins) or any other torch at or above
the tested floor keeps that torch. Optional pieces are extras, and a feature that needs a
missing extra says which one to install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11")
packaging = pytest.importorskip("packaging", reason="'packaging' is needed to read requirements")
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
LOCAL_BUILD = "2.13.0+cpu"
"""The build scripts/setup.sh pins (and CI runs the suite on)."""
TESTED_FLOOR = "2.3.1"
"""The oldest torch the test suite was run on (-m 'not slow', see pyproject.toml)."""


def _requirements(items: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(s) for s in items]
    return {r.name.lower(): r for r in reqs}


def test_torch_requirement_is_a_range_that_keeps_the_local_build_and_the_floor():
    torch_req = _requirements(PYPROJECT["dependencies"])["torch"]
    spec = torch_req.specifier
    assert all(s.operator not in ("==", "===", "~=") for s in spec), f"torch is pinned: {torch_req}"
    for version in (LOCAL_BUILD, "2.13.0", TESTED_FLOOR, "2.14.1", "3.0"):
        assert spec.contains(version, prereleases=False), f"{torch_req} refuses torch {version}"
    assert not spec.contains("2.2.2"), f"{torch_req} admits torch 2.2, older than the tested {TESTED_FLOOR}"
    # the torch this test runs on is one the package accepts
    assert spec.contains(Version(torch.__version__).base_version)


def test_no_dependency_is_pinned_and_the_extras_are_named():
    for item in PYPROJECT["dependencies"]:
        req = Requirement(item)
        assert all(s.operator != "==" for s in req.specifier), f"pinned core dependency: {item}"
    extras = {name: _requirements(items) for name, items in PYPROJECT["optional-dependencies"].items()}
    assert {"onnx", "onnxruntime"} <= set(extras["deploy"])
    assert "transformers" in extras["huggingface"]
    core = _requirements(PYPROJECT["dependencies"])
    for heavy in ("onnx", "onnxruntime", "transformers", "sentence-transformers"):
        assert heavy not in core, f"{heavy} must be an extra, not a core dependency"
    for name, reqs in extras.items():
        assert "torch" not in reqs, f"extra {name!r} asks for torch again"


def _project_copy(dest: Path) -> Path:
    """What pip needs to read the package's metadata, outside the working tree (building
    metadata writes an egg-info beside the sources)."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "src", dest / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dest


def _dry_run_installs(project: Path, tmp: Path, extra_path: Path | None = None) -> dict[str, str]:
    """``pip install --dry-run --report`` of ``project`` into this interpreter's environment,
    offline (--no-index); returns {name: version} of what pip would install."""
    report = tmp / "report.json"
    env = {k: v for k, v in os.environ.items() if k not in ("PIP_REQUIRE_VIRTUALENV",)}
    if extra_path is not None:  # distributions found there shadow the environment's own
        env["PYTHONPATH"] = os.pathsep.join([str(extra_path), *filter(None, [env.get("PYTHONPATH")])])
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-index",
           "--no-build-isolation", "--disable-pip-version-check", "--report", str(report), str(project)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"pip failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    data = json.loads(report.read_text(encoding="utf-8"))
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in data["install"]}


def _need_build_requirements() -> None:
    """Skip unless this environment has the build-system requirements (--no-build-isolation
    builds the metadata with them)."""
    from importlib.metadata import PackageNotFoundError, version

    build = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["build-system"]
    for item in build["requires"]:
        req = Requirement(item)
        try:
            have = version(req.name)
        except PackageNotFoundError:
            pytest.skip(f"--no-build-isolation needs {item} in this environment (not installed)")
        if not req.specifier.contains(have, prereleases=True):
            pytest.skip(f"--no-build-isolation needs {item} in this environment (found {have})")


def _fake_torch(folder: Path, version: str) -> Path:
    """A folder holding only the metadata of an installed torch ``version``: on PYTHONPATH,
    pip sees that torch as the installed one."""
    info = folder / f"torch-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
                                   encoding="utf-8")
    (info / "INSTALLER").write_text("pip\n", encoding="utf-8")
    (info / "RECORD").write_text("", encoding="utf-8")
    return folder


def test_pip_install_keeps_the_installed_torch(tmp_path):
    """The resolver's own answer, in this environment (torch 2.13.0) and in one whose torch
    is the tested floor: only nncompress itself would be installed, never torch."""
    _need_build_requirements()
    project = _project_copy(tmp_path / "project")
    here = _dry_run_installs(project, tmp_path)
    assert "torch" not in here, f"pip would replace torch {torch.__version__} with {here['torch']}"
    assert "nncompress" in here
    old = _dry_run_installs(project, tmp_path, _fake_torch(tmp_path / "old", TESTED_FLOOR))
    assert "torch" not in old, f"pip would replace torch {TESTED_FLOOR} with {old['torch']}"


def test_missing_deploy_extra_names_it(monkeypatch, tmp_path):
    """ONNX export with onnx (or onnxruntime) absent: an ImportError naming the extra."""
    from nncompress.deploy import export_onnx

    model = nn.Sequential(nn.Linear(4, 3))
    for hidden in ("onnx", "onnxruntime"):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, hidden, None)
            with pytest.raises(ImportError, match=r"nncompress\[deploy\]"):
                export_onnx(model, tmp_path / "m.onnx", torch.zeros(1, 4))


def test_missing_deploy_extra_names_it_in_the_cli(monkeypatch, tmp_path, capsys):
    from nncompress.cli import main
    from nncompress.format import save
    from nncompress.models import build_model

    path = tmp_path / "m.nnc"
    save(build_model("lenet300"), path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    for argv in (["export", str(path), str(tmp_path / "m.onnx")], ["bench", str(path)]):
        assert main(argv) == 2
        assert "nncompress[deploy]" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_missing_huggingface_extra_names_it(monkeypatch, tmp_path):
    from nncompress.errors import ConfigError
    from nncompress.models.hf_arch import is_transformers_model
    from nncompress.models.huggingface import load_pretrained

    (tmp_path / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ConfigError, match=r"nncompress\[huggingface\]"):
        load_pretrained(tmp_path)
    assert not is_transformers_model(nn.Linear(2, 2))  # plain models never need the extra


def test_transformers_without_pytorch_is_refused_by_name(monkeypatch, tmp_path):
    """transformers 5 on a torch older than 2.6 imports but disables PyTorch: loading a model
    then says which versions go together, before transformers fails deep inside."""
    transformers = pytest.importorskip("transformers")
    from nncompress.errors import ConfigError
    from nncompress.models.huggingface import load_pretrained

    (tmp_path / "config.json").write_text('{"model_type": "bert"}', encoding="utf-8")
    monkeypatch.setattr(transformers, "is_torch_available", lambda: False)
    with pytest.raises(ConfigError, match=r"transformers<5.*torch < 2\.6"):
        load_pretrained(tmp_path)


def test_csgd_kmeans_without_scikit_learn_says_so(monkeypatch):
    from nncompress.errors import ConfigError
    from nncompress.prune.csgd import cluster_filters

    monkeypatch.setitem(sys.modules, "sklearn.cluster", None)
    with pytest.raises(ConfigError, match=r"scikit-learn.*'even'"):
        cluster_filters(torch.randn(6, 3), 2, "kmeans")
    assert cluster_filters(torch.randn(6, 3), 2, "even").tolist() == [0, 0, 0, 1, 1, 1]
