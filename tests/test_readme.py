"""The README's examples run as written.

Every ```python block of README.md is executed, in order, in one namespace (the README says
the snippets continue from one another) inside a temporary folder, on the small `digits`
set, with torch at one thread. A block preceded by ``<!-- skip-test: reason -->`` is
skipped (for examples that need Fashion-MNIST or long training; keep such skips few).
Every ```bash line starting with ``nncompress `` must name an existing subcommand
(``python -m nncompress SUB --help`` exits 0) and only options that subcommand's help shows.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAX_LINES = 250
MAX_SKIPS = 2

FENCE = re.compile(r"^```(\w*)\s*$")
SKIP = re.compile(r"^<!--\s*skip-test:\s*(.+?)\s*-->\s*$")


def readme_blocks() -> list[dict]:
    """Fenced blocks of README.md: language, first code line (1-based), code, skip reason."""
    lines = README.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        skip = SKIP.match(prev.strip())
        start, i = i + 1, i + 1
        while i < len(lines) and lines[i].strip() != "```":
            i += 1
        if i == len(lines):
            raise AssertionError(f"README.md:{start}: fenced block never closed")
        blocks.append({"lang": m.group(1), "line": start + 1, "code": "\n".join(lines[start:i]),
                       "skip": skip.group(1) if skip else None})
        i += 1
    return blocks


BLOCKS = readme_blocks()
PYTHON = [b for b in BLOCKS if b["lang"] == "python"]


def test_readme_is_a_guide_not_a_notebook():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LINES, (f"README.md has {n} lines (> {MAX_LINES}); move result tables to "
                            "docs/results.md and experiment notes to docs/experiments.md")
    skipped = [b["line"] for b in PYTHON if b["skip"]]
    assert len(skipped) <= MAX_SKIPS, f"too many skip-test blocks at README.md lines {skipped}"
    assert len(PYTHON) - len(skipped) >= 1


def test_readme_links_exist():
    text = README.read_text(encoding="utf-8")
    missing = [t for t in re.findall(r"\]\(([^)#\s]+)\)", text)
               if "://" not in t and not (ROOT / t).exists()]
    assert not missing, f"README.md links to missing files: {missing}"


@pytest.fixture(scope="module")
def namespace():
    return {"__name__": "__readme__"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


def run_block(block: dict, namespace: dict, workdir: Path) -> None:
    # compiled with the README's line numbers, so a traceback points into README.md
    code = compile("\n" * (block["line"] - 1) + block["code"], str(README), "exec")
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        exec(code, namespace)
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("index", range(len(PYTHON)), ids=[f"line{b['line']}" for b in PYTHON])
def test_readme_python_block(index, namespace, workdir):
    block = PYTHON[index]
    if block["skip"]:
        pytest.skip(block["skip"])
    torch.set_num_threads(1)
    done = namespace.setdefault("__readme_done__", set())
    for j in range(index):  # run selected alone (-k): the earlier blocks it continues from
        if j not in done and not PYTHON[j]["skip"]:
            run_block(PYTHON[j], namespace, workdir)
            done.add(j)
    run_block(block, namespace, workdir)
    done.add(index)


def cli_lines() -> list[str]:
    return [line.strip() for b in BLOCKS if b["lang"] in ("bash", "sh", "console")
            for line in b["code"].splitlines() if line.strip().startswith("nncompress ")]


def test_readme_cli_commands_exist():
    lines = cli_lines()
    used: dict[str, set[str]] = {}
    for line in lines:
        command = line.split("#", 1)[0].split()
        options = {t.strip("[]").split("=")[0] for t in command[2:] if t.strip("[").startswith("--")}
        used.setdefault(command[1], set()).update(options)
    assert used, "no `nncompress ...` line in the README's bash blocks"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                  os.environ.get("PYTHONPATH")])))
    procs = {sub: subprocess.Popen([sys.executable, "-m", "nncompress", sub, "--help"], cwd=ROOT,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
             for sub in sorted(used)}
    for sub, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"`nncompress {sub} --help` exited {proc.returncode}:\n{out}"
        unknown = sorted(o for o in used[sub] if o not in out)
        assert not unknown, f"README uses {unknown} with `nncompress {sub}`, not in its --help"
