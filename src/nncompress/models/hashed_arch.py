"""The ``hashed`` architecture record: how ``nncompress.load`` rebuilds a built-in model
whose Linear layers the recipe's ``quantize: {method: hashed}`` replaced by HashedNets
layers (Q13).

A hashed ``.nnc`` file stores each hashed layer's buckets, bias and seed (its state dict);
the index/sign buffers follow from ``(shape, buckets, seed, sign_hash)``. The layer shapes
and ``sign_hash`` are not in the state dict, so the file's architecture becomes
``{"name": "hashed", "kwargs": {"base": <the built-in arch>, "layers": {name: {in, out,
buckets, seed, sign_hash, bias}}}}`` and this module registers ``hashed`` in the model
registry: loading builds the base model and puts a ``HashedLinear`` skeleton at each
recorded layer (``load_state_dict`` then restores buckets, bias and seed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from torch import nn

from nncompress.errors import ConfigError
from nncompress.models.registry import ARCH_ATTR, arch_of, build_model, register_model
from nncompress.quantize.hashed import HashedLinear

log = logging.getLogger(__name__)
HASHED_ARCH = "hashed"
MAX_VIRTUAL = 2**31  # a genuine hashed layer is far smaller; refuses hostile records


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if not hasattr(parent, child):
        raise ConfigError(f"hashed record names layer {name!r}, which the base model lacks")
    setattr(parent, child, module)


def build_hashed(base: Mapping[str, Any], layers: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """The base built-in model with a placeholder ``HashedLinear`` at every recorded layer
    (the factory registered as ``hashed``; ``nncompress.load`` calls it from the file's
    architecture record).

    Example:
        >>> m = build_hashed({"name": "lenet300"}, {"fc1": {"in": 784, "out": 300, "buckets": 100,
        ...                  "seed": 0, "sign_hash": True, "bias": True}})
        >>> m.fc1.weight.shape
        torch.Size([100])
    """
    try:
        name, kwargs = str(base["name"]), dict(base.get("kwargs", {}))
        if name == HASHED_ARCH:
            raise ConfigError("a hashed architecture cannot wrap another hashed one")
        model = build_model(name, **kwargs)
        for layer_name, rec in layers.items():
            n_in, n_out, buckets = int(rec["in"]), int(rec["out"]), int(rec["buckets"])
            if not (n_in >= 1 and n_out >= 1 and n_in * n_out <= MAX_VIRTUAL):
                raise ConfigError(f"hashed layer {layer_name!r}: bad shape {n_out} x {n_in}")
            layer = HashedLinear(n_in, n_out, buckets, int(rec["seed"]), bool(rec["sign_hash"]),
                                 bias=bool(rec["bias"]))
            _set_module(model, str(layer_name), layer)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ConfigError(f"hashed architecture record is damaged ({exc!r})") from exc
    return model


def hashed_layers(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The record of every ``HashedLinear`` in ``model`` (JSON-able)."""
    return {name: {"in": m.in_features, "out": m.out_features, "buckets": m.buckets, "seed": m.seed,
                   "sign_hash": m.sign_hash, "bias": m.bias is not None}
            for name, m in model.named_modules() if isinstance(m, HashedLinear)}


def record_hashed_arch(model: nn.Module) -> bool:
    """Make ``model``'s architecture record the ``hashed`` wrapper of its built-in arch, so
    that a saved file loads without a skeleton. Returns False (nothing recorded) for a
    user-defined model, which then loads only into a hashed skeleton passed to ``load``."""
    arch = arch_of(model)
    if arch is None:
        log.warning("hashed: the model is not a built-in architecture; its file loads only "
                    "into a hashed skeleton: load(path, model=...)")
        return False
    base = arch["kwargs"]["base"] if arch.get("name") == HASHED_ARCH else arch
    setattr(model, ARCH_ATTR, {"name": HASHED_ARCH, "kwargs": {"base": base, "layers": hashed_layers(model)}})
    return True


register_model(HASHED_ARCH, build_hashed)
