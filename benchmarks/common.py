"""Shared helpers of the benchmark scripts: where results go and how they are written."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment() -> dict[str, Any]:
    """What produced the figures: command, versions, threads, CPU count."""
    return {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename (never half-written)."""
    from nncompress.train.checkpoint import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode())


def write_results(name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``results/<name>.json`` and ``results/<name>.md`` atomically; print where."""
    from nncompress.train.checkpoint import atomic_write_bytes

    RESULTS.mkdir(parents=True, exist_ok=True)
    env = environment()
    data = {"environment": env, **data}
    jpath, mpath = RESULTS / f"{name}.json", RESULTS / f"{name}.md"
    atomic_write_bytes(jpath, (json.dumps(data, indent=2, default=str) + "\n").encode())
    header = f"<!-- produced by: {env['command']} (torch {env['torch']}, {env['threads']} threads) -->\n\n"
    atomic_write_bytes(mpath, (header + markdown).encode())
    print(f"wrote {jpath} and {mpath}")
    return jpath, mpath
