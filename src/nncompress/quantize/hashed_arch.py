"""``hash_model`` and the ``hashed`` architecture record: how ``nncompress.load`` rebuilds a built-in model
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
from nncompress.models.registry import arch_of, build_model, register_model
from nncompress.modules import set_submodule
from nncompress.quantize.hashed import HashedLinear, hashed_from_linear
from nncompress.state import model_state

log = logging.getLogger(__name__)
HASHED_ARCH = "hashed"
MAX_VIRTUAL = 2**31  # a genuine hashed layer is far smaller; refuses hostile records


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    try:
        set_submodule(model, name, module)
    except ConfigError:
        raise ConfigError(f"hashed record names layer {name!r}, which the base model lacks") from None


def _check_record(name: str, rec: Any) -> None:
    """Types and ranges of one hashed layer record (from an untrusted file)."""
    if not isinstance(rec, Mapping) or set(rec) != {"in", "out", "buckets", "seed", "sign_hash", "bias"}:
        raise ConfigError(f"hashed layer {name[:80]!r}: record {str(rec)[:120]} must have exactly the "
                          "keys bias, buckets, in, out, seed, sign_hash")
    for key, hi in (("in", MAX_VIRTUAL), ("out", MAX_VIRTUAL), ("buckets", MAX_VIRTUAL), ("seed", 2**63 - 1)):
        value = rec[key]
        if type(value) is not int or not (0 if key == "seed" else 1) <= value <= hi:
            raise ConfigError(f"hashed layer {name[:80]!r}: field {key!r} = {str(value)[:40]} is not an "
                              f"integer in {0 if key == 'seed' else 1}..{hi}")
    for key in ("sign_hash", "bias"):
        if type(rec[key]) is not bool:
            raise ConfigError(f"hashed layer {name[:80]!r}: field {key!r} = {str(rec[key])[:40]} is not a bool")
    if rec["in"] * rec["out"] > MAX_VIRTUAL or rec["buckets"] > rec["in"] * rec["out"]:
        raise ConfigError(f"hashed layer {name[:80]!r}: {rec['buckets']} buckets for a {rec['out']} x "
                          f"{rec['in']} weight (at most {MAX_VIRTUAL} virtual weights, buckets <= weights)")


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
            _check_record(str(layer_name), rec)
            n_in, n_out, buckets = rec["in"], rec["out"], rec["buckets"]
            layer = HashedLinear(n_in, n_out, buckets, rec["seed"], rec["sign_hash"], bias=rec["bias"])
            _set_module(model, str(layer_name), layer)
    except ConfigError:
        raise
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
    model_state(model, create=True).arch = {"name": HASHED_ARCH,
                                            "kwargs": {"base": base, "layers": hashed_layers(model)}}
    return True


def hash_model(model: nn.Module, ratio: float | None = None,
               buckets: Mapping[str, int] | None = None, seed: int = 0,
               sign_hash: bool = True) -> nn.Module:
    """Replace ``nn.Linear`` layers by :class:`HashedLinear` (in place; returns ``model``).

    ``ratio`` (in ``(0, 1]``) gives every Linear ``K = max(1, round(ratio * in * out))``
    buckets; ``buckets`` maps layer names to ``K`` and, when given, only those layers are
    hashed (``ratio`` then fills in nothing). Layer ``k`` (in module order) uses seed
    ``seed + k``. Buckets start as the sign-corrected average of the original weights.

    Example:
        >>> m = hash_model(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2)), ratio=0.25)
        >>> [p.numel() for p in m.parameters()]
        [32, 8, 4, 2]
    """
    if (ratio is None) == (buckets is None):
        raise ConfigError("hash_model needs exactly one of ratio= or buckets=")
    if ratio is not None and not (isinstance(ratio, (int, float)) and 0 < ratio <= 1):
        raise ConfigError(f"ratio={ratio!r} is not allowed; use a number in (0, 1]")
    linears = [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]
    if buckets is not None:
        unknown = sorted(set(buckets) - {n for n, _ in linears})
        if unknown:
            raise ConfigError(f"unknown Linear layer(s) {unknown}; allowed: {[n for n, _ in linears]}")
    for k, (name, linear) in enumerate(linears):
        if buckets is not None and name not in buckets:
            continue
        numel = linear.in_features * linear.out_features
        kb = buckets[name] if buckets is not None else max(1, round(ratio * numel))
        new = hashed_from_linear(linear, kb, seed + k, sign_hash)
        set_submodule(model, name, new)
    # a built-in model's file records its hashed layers, so it loads without a skeleton
    if arch_of(model) is not None:
        record_hashed_arch(model)
    return model


register_model(HASHED_ARCH, build_hashed)
