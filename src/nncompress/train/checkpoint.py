"""Atomic, pickle-free training checkpoints (loaded with ``weights_only=True``)."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

import torch
from torch import nn

from nncompress.errors import FormatError

log = logging.getLogger(__name__)


TEMP_SUFFIX = ".nnc-tmp"
_TOKEN = re.compile(r"[0-9a-f]{16}")
_LEGACY_TOKEN = re.compile(r"[a-z0-9_]{8}")  # earlier mkstemp names: .NAME.xxxxxxxx.tmp


def temp_name(path: str | Path, token: str) -> Path:
    """The temp file ``atomic_write_bytes`` writes ``path`` through: ``.NAME.<16 hex>.nnc-tmp``
    in the same folder (hidden, and recognisable as belonging to exactly that target)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{token}{TEMP_SUFFIX}")


def temp_files_of(path: str | Path) -> list[Path]:
    """Temp files of target ``path`` in its folder (live or left by a killed write):
    ``.NAME.<16 hex>.nnc-tmp``, and the ``.NAME.xxxxxxxx.tmp`` names older versions used.
    Only names of exactly this target match (not those of ``NAME.x`` or ``xNAME``)."""
    path = Path(path)
    prefix = f".{path.name}."
    try:
        entries = os.listdir(path.parent)
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        rest = entry[len(prefix):]
        if rest.endswith(TEMP_SUFFIX) and _TOKEN.fullmatch(rest[: -len(TEMP_SUFFIX)]):
            found.append(path.parent / entry)
        elif rest.endswith(".tmp") and _LEGACY_TOKEN.fullmatch(rest[: -len(".tmp")]):
            found.append(path.parent / entry)
    return sorted(found)


def _in_use(tmp: Path) -> bool:
    """Whether a live writer holds ``tmp`` (it keeps an exclusive ``flock`` on it while
    writing; the kernel drops the lock when that process dies, however it dies)."""
    if fcntl is None:  # pragma: no cover - no advisory locks (Windows): treat every temp as stale
        return False
    try:
        fd = os.open(tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False  # gone already, or not ours to open: nothing to keep
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases the probe's lock
    return False


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temp files a killed write to ``path`` left behind (those no live writer
    holds); returns what was removed. ``atomic_write_bytes`` calls it before each write."""
    removed = []
    for tmp in temp_files_of(path):
        if tmp.is_symlink() or not tmp.is_file() or _in_use(tmp):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
        except OSError as exc:  # e.g. a read-only folder: the write below will say so
            log.debug("could not remove stale temp file %s: %s", tmp, exc)
    return removed


def _open_temp(path: Path) -> tuple[int, Path]:
    """Create and lock a fresh temp file for ``path``; (fd, temp path)."""
    for _ in range(100):
        tmp = temp_name(path, secrets.token_hex(8))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except FileExistsError:
            continue
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                # a concurrent cleanup may have removed the name between create and lock
                if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                    return fd, tmp
            except OSError:
                pass
            os.close(fd)
            continue
        return fd, tmp  # pragma: no cover - no fcntl
    raise FileExistsError(f"could not create a temp file next to {path}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and a rename.

    The temp file is ``.NAME.<16 hex>.nnc-tmp`` (see ``temp_name``); it is removed on every
    error path, and one left by a killed process is removed by the next write to the same
    ``path``. A reader never sees a half-written ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    remove_stale_temps(path)
    tmp: Path | None = None
    try:
        fd, tmp = _open_temp(path)
        try:
            fh = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, path)  # while the lock is held: a cleanup never takes a live temp
            tmp = None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass


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
