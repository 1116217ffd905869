"""Module-tree helpers shared by the techniques: selecting layers by name globs and type,
replacing a submodule by dotted name, a layer's input as an im2col matrix, and calibration
batches from a dataset."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nncompress.errors import ConfigError


def name_matches(name: str, patterns: Iterable[str]) -> bool:
    """True when module name ``name`` matches one of the glob ``patterns`` (``fc*``,
    ``layers.0.*``; case-sensitive).

    Example:
        >>> name_matches("layers.0.conv1", ["layers.0.*"]), name_matches("fc1", [])
        (True, False)
    """
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_layers(model: nn.Module, include: Iterable[str] | None = None, exclude: Iterable[str] = (),
                  types: type[nn.Module] | tuple[type[nn.Module], ...] = nn.Module) -> dict[str, nn.Module]:
    """``{module name: module}`` of the modules of ``types`` whose name matches a glob of
    ``include`` (every name when None) and none of ``exclude``, in registration order. The
    model itself is named ``""``.

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
        >>> list(select_layers(m, types=nn.Linear, exclude=["2"]))
        ['0']
    """
    include = list(include) if include is not None else None
    exclude = list(exclude)
    return {name: mod for name, mod in model.named_modules()
            if isinstance(mod, types) and (include is None or name_matches(name, include))
            and not name_matches(name, exclude)}


def set_submodule(model: nn.Module, name: str, new: nn.Module, must_exist: bool = True) -> None:
    """Replace the submodule at dotted path ``name`` (``"layers.0.conv1"``) by ``new``.

    Raises ``ConfigError`` naming the path when it does not exist (unless ``must_exist``
    is False, which allows adding a new child to an existing parent).

    Example:
        >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        >>> set_submodule(m, "1", nn.Tanh()); type(m[1]).__name__
        'Tanh'
    """
    parent_name, _, child = name.rpartition(".")
    try:
        parent = model.get_submodule(parent_name) if parent_name else model
    except AttributeError:
        raise ConfigError(f"no module {parent_name!r} in the model (replacing {name!r})") from None
    if must_exist and not isinstance(getattr(parent, child, None), nn.Module):
        raise ConfigError(f"the model has no submodule {name!r} to replace")
    setattr(parent, child, new)


def layer_inputs_2d(module: nn.Module, x: torch.Tensor, what: str = "this method") -> torch.Tensor:
    """A Linear or Conv2d layer's inputs as rows ``(M, d)`` with ``output = rows @
    W.reshape(out, d).T`` (+ bias): Linear ``(N..., in) -> (N*, in)``; Conv2d the im2col
    patches ``(N * L, C * kh * kw)`` (groups 1, numeric zero padding).

    Example:
        >>> layer_inputs_2d(nn.Conv2d(1, 2, 3), torch.zeros(2, 1, 5, 5)).shape
        torch.Size([18, 9])
    """
    if isinstance(module, nn.Linear):
        return x.reshape(-1, x.shape[-1])
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise ConfigError(f"{what} supports groups=1 convolutions, got groups={module.groups}")
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise ConfigError(f"{what} needs numeric zero padding on Conv2d")
        cols = F.unfold(x, module.kernel_size, module.dilation, module.padding, module.stride)  # (N, Ckk, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])  # (N*L, Ckk)
    raise ConfigError(f"{what} supports Linear and Conv2d, got {type(module).__name__}")


def calibration_batches(data: Dataset | DataLoader, batch_size: int,
                        n_samples: int | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of ``data`` (a dataset or a loader) until ``n_samples`` samples
    (all when None), the last batch cut to fit.

    Example:
        >>> ds = torch.utils.data.TensorDataset(torch.zeros(10, 2), torch.zeros(10))
        >>> [len(y) for _, y in calibration_batches(ds, 4, 9)]
        [4, 4, 1]
    """
    loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)
    seen = 0
    for x, y in loader:
        if n_samples is not None:
            if seen >= n_samples:
                return
            x, y = x[: n_samples - seen], y[: n_samples - seen]
        seen += len(y)
        yield x, y
