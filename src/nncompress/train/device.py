"""``--device cpu|cuda|cuda:N|mps|auto``: the device a run puts its model on. Every tensor a
technique makes follows the model's device; files are device-independent."""

from __future__ import annotations

import re

import torch

from nncompress.errors import ConfigError

_FORMS = "cpu, cuda, cuda:N, mps or auto"


def resolve_device(name: str | None = "auto") -> torch.device:
    """The ``torch.device`` for ``name``; ``auto`` picks CUDA, then MPS, then the CPU.
    Under ``torchrun`` ``cuda`` means this process's GPU (``LOCAL_RANK``). A device that
    does not exist on this machine raises ``ConfigError`` naming it.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    import os

    name = "auto" if name is None else str(name).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif _mps_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ConfigError("device 'mps' is not available on this machine (no Apple GPU / MPS build); "
                              f"use one of {_FORMS}")
        return torch.device("mps")
    m = re.fullmatch(r"cuda(?::(\d+))?", name)
    if m is None:
        raise ConfigError(f"device {name!r} not understood; use {_FORMS}")
    if not torch.cuda.is_available():
        raise ConfigError(f"device {name!r}: CUDA is not available on this machine (torch {torch.__version__}, "
                          f"{'no CUDA build' if torch.version.cuda is None else 'no GPU found'}); use cpu or auto")
    count = torch.cuda.device_count()
    index = int(m.group(1)) if m.group(1) is not None else int(os.environ.get("LOCAL_RANK", 0)) % count
    if index >= count:
        raise ConfigError(f"device {name!r} does not exist: this machine has {count} CUDA device(s), "
                          f"cuda:0..cuda:{count - 1}")
    return torch.device("cuda", index)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
