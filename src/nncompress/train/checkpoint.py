"""Atomic, pickle-free training checkpoints (loaded with ``weights_only=True``)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.errors import FormatError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path, model: nn.Module, optimizer, callbacks, epoch: int,
                    history: list[dict[str, float]], config: dict[str, Any]) -> None:
    """Save everything needed to resume after ``epoch`` epochs, atomically."""
    import io

    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "callbacks": callbacks.state_dict(),
        "epoch": epoch,
        "rng": torch.get_rng_state(),
        "meta": json.dumps({"history": history, "config": config}),
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path, model: nn.Module, optimizer, callbacks) -> tuple[int, list[dict[str, float]]]:
    """Restore a checkpoint written by ``save_checkpoint``; returns (epoch, history)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types on damaged files
        raise FormatError(f"{path}: not a valid nncompress checkpoint ({exc})") from exc
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    callbacks.load_state_dict(state["callbacks"])
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]), json.loads(state["meta"])["history"]
