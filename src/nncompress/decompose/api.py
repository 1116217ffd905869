"""``decompose(model, spec)``: replace named Linear/Conv2d layers by low-rank factor
pipelines (L1 SVD, L2 separable, L3 Tucker-2, L4 CP, L5 block term) in place.

Every replacement is recorded on the model (``model_state(model).lowrank``: module path ->
method, resolved ranks and original layer geometry) so that ``nncompress.save`` can
store it and ``nncompress.load`` can rebuild the same module tree (:func:`apply_lowrank_spec`)
before loading the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn

from nncompress.checks import check_fraction, check_int
from nncompress.decompose.btd import btd_conv
from nncompress.decompose.common import (
    check_geometry,
    check_rank,
    count_macs,
    count_params,
    layer_geometry,
    require_conv,
)
from nncompress.decompose.cp import cp_conv, cp_max_rank, cp_ratio_rank, make_cp
from nncompress.decompose.registry import register_method
from nncompress.decompose.separable import (
    make_separable,
    separable_conv,
    separable_full_rank,
    separable_rank,
)
from nncompress.decompose.svd import make_svd, svd_linear, svd_rank
from nncompress.decompose.tucker import (
    make_tucker2,
    tucker2_conv,
    tucker2_energy_ranks,
    tucker2_ratio_ranks,
)
from nncompress.errors import ConfigError
from nncompress.format.records import ModelRecord, RestoreContext, register_record
from nncompress.modules import select_layers, set_submodule
from nncompress.state import model_state, read_state

log = logging.getLogger(__name__)
METHODS = ("svd", "separable", "tucker2", "cp", "btd")


@dataclass(frozen=True)
class LowRankConfig:
    """How to factorise one layer: ``method`` and exactly one of ``rank``, ``energy`` or
    ``ratio``.

    Example:
        >>> LowRankConfig("svd", energy=0.9).method
        'svd'
    """

    method: str
    """svd (L1, Linear), separable (L2), tucker2 (L3), cp (L4) or btd (L5; Conv2d)."""
    rank: int | tuple[int, int] | None = None
    """Rank >= 1 (at most the layer's full rank); tucker2/btd also ``[rank_out, rank_in]``
    (per block for btd)."""
    energy: float | None = None
    """Kept fraction of the squared singular values, in (0, 1] (svd, separable, tucker2)."""
    ratio: float | None = None
    """Target parameter fraction of the layer, in (0, 1]."""
    groups: int = 1
    """Number of blocks of btd (>= 1; 1 for every other method)."""
    seed: int = 0
    """Seed of cp's random initialisation."""

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r} not allowed; use one of {METHODS}")
        given = [k for k in ("rank", "energy", "ratio") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ConfigError(f"give exactly one of rank/energy/ratio for {self.method!r}, got {given or 'none'}")
        if self.energy is not None:
            if self.method in ("cp", "btd"):
                raise ConfigError(f"energy is not defined for {self.method!r}; use rank or ratio")
            check_fraction(self.energy, "energy")
        if self.ratio is not None:
            check_fraction(self.ratio, "ratio")
        if self.method == "btd":
            check_int(self.groups, "groups", 1)
        elif self.groups != 1:
            raise ConfigError(f"groups={self.groups!r} only applies to 'btd'")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LowRankConfig:
        """Build from a plain mapping; unknown keys are a ``ConfigError``."""
        allowed = {f.name for f in fields(cls)}
        unknown = set(data) - allowed
        if unknown:
            raise ConfigError(f"unknown low-rank keys {sorted(unknown)}; allowed: {sorted(allowed)}")
        return cls(**data)


@dataclass
class DecomposeConfig:
    """Which layers ``decompose`` factorises, and how.

    Example:
        >>> DecomposeConfig({"fc1": {"method": "svd", "rank": 16}}).layers["fc1"].rank
        16
    """

    layers: dict[str, LowRankConfig] = field(default_factory=dict)
    """Module name or glob (``conv*``) -> ``{method, rank | energy | ratio, groups, seed}``
    (``LowRankConfig``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.layers, Mapping) or not self.layers:
            raise ConfigError(f"'layers' must map at least one layer to a method ({', '.join(METHODS)}), "
                              f"e.g. {{fc1: {{method: svd, rank: 32}}}}")
        self.layers = {k: v if isinstance(v, LowRankConfig) else LowRankConfig.from_dict(v)
                       for k, v in self.layers.items()}
        for name, cfg in self.layers.items():  # before any layer is known: the range the type allows
            ranks = cfg.rank if isinstance(cfg.rank, (list, tuple)) else [cfg.rank]
            for r in ranks:
                if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
                    raise ConfigError(f"layers.{name}: rank={cfg.rank!r} out of range; allowed: integers "
                                      f">= 1 (at most the layer's full rank)")
            if isinstance(cfg.rank, (list, tuple)) and cfg.method not in ("tucker2", "btd"):
                raise ConfigError(f"layers.{name}: rank={cfg.rank!r} is a pair, which only tucker2 and btd "
                                  f"take; use one integer for {cfg.method!r}")


@dataclass
class LayerReport:
    """Cost of one layer before and after (MACs only with an example input)."""

    name: str
    method: str
    ranks: list[int]
    params_before: int
    params_after: int
    macs_before: int | None = None
    macs_after: int | None = None


@dataclass
class DecomposeReport:
    """Per-layer reports plus totals over the decomposed layers."""

    layers: list[LayerReport] = field(default_factory=list)

    @property
    def params_before(self) -> int:
        return sum(r.params_before for r in self.layers)

    @property
    def params_after(self) -> int:
        return sum(r.params_after for r in self.layers)

    def as_dict(self) -> dict[str, Any]:
        return {"layers": [asdict(r) for r in self.layers], "params_before": self.params_before,
                "params_after": self.params_after}


def _pair(rank: Any, what: str) -> tuple[int, int]:
    if isinstance(rank, (list, tuple)):
        if len(rank) != 2:
            raise ConfigError(f"{what} rank must be an int or (rank_out, rank_in), got {rank!r}")
        return rank[0], rank[1]
    return rank, rank


def resolve_ranks(layer: nn.Module, geom: dict[str, Any], cfg: LowRankConfig, name: str) -> list[int]:
    """Concrete ranks of ``cfg`` for ``layer``: ``[k]`` (svd, separable, cp) or
    ``[rank_out, rank_in]`` (tucker2, btd per block); validated against the layer."""
    w = layer.weight
    if cfg.method == "svd":
        if geom["type"] != "linear":
            raise ConfigError(f"{name}: method 'svd' needs a Linear, got {geom['type']}")
        full = min(geom["in"], geom["out"])
        k = cfg.rank if cfg.rank is not None else svd_rank(w, energy=cfg.energy, ratio=cfg.ratio)
        return [check_rank(k, full, f"{name}: svd rank")]
    require_conv(geom, cfg.method, name)
    if cfg.method == "separable":
        k = cfg.rank if cfg.rank is not None else separable_rank(w, energy=cfg.energy, ratio=cfg.ratio)
        return [check_rank(k, separable_full_rank(w), f"{name}: separable rank")]
    if cfg.method == "cp":
        k = cfg.rank if cfg.rank is not None else cp_ratio_rank(geom, cfg.ratio)
        return [check_rank(k, cp_max_rank(w.shape), f"{name}: cp rank")]
    if cfg.rank is not None:
        r4, r3 = _pair(cfg.rank, cfg.method)
    elif cfg.energy is not None:
        r4, r3 = tucker2_energy_ranks(w, cfg.energy)
    else:
        r4, r3 = tucker2_ratio_ranks(geom, cfg.ratio, cfg.groups)
    return [check_rank(r4, geom["out"], f"{name}: {cfg.method} output rank"),
            check_rank(r3, geom["in"], f"{name}: {cfg.method} input rank")]


def skeleton(method: str, geom: dict[str, Any], ranks: list[int], groups: int = 1) -> nn.Sequential:
    """The replacement module tree for ``method`` with placeholder weights.

    Example:
        >>> skeleton("svd", {"type": "linear", "in": 8, "out": 6, "bias": True}, [2])[1].weight.shape
        torch.Size([6, 2])
    """
    if method == "svd":
        return make_svd(geom, ranks[0])
    if method == "separable":
        return make_separable(geom, ranks[0])
    if method == "cp":
        return make_cp(geom, ranks[0])
    if method in ("tucker2", "btd"):
        return make_tucker2(geom, ranks[0], ranks[1], groups)
    raise ConfigError(f"method {method!r} not allowed; use one of {METHODS}")


def _factorise(layer: nn.Module, geom: dict[str, Any], cfg: LowRankConfig, ranks: list[int]) -> nn.Sequential:
    if cfg.method == "svd":
        return svd_linear(layer, ranks[0])
    if cfg.method == "separable":
        return separable_conv(layer, ranks[0], geom)
    if cfg.method == "cp":
        return cp_conv(layer, ranks[0], geom, seed=cfg.seed)
    if cfg.method == "tucker2":
        return tucker2_conv(layer, ranks[0], ranks[1], geom)
    return btd_conv(layer, ranks[0], ranks[1], cfg.groups, geom)


def _targets(model: nn.Module, spec: Mapping[str, LowRankConfig]) -> dict[str, LowRankConfig]:
    modules = dict(model.named_modules())
    chosen: dict[str, LowRankConfig] = {}
    for pattern, cfg in spec.items():
        if pattern in modules:
            layer_geometry(modules[pattern], pattern)  # raises for unsupported layers
            chosen[pattern] = cfg
            continue
        hits = [n for n in select_layers(model, [pattern], types=(nn.Linear, nn.Conv2d)) if n]
        if not hits:
            layers = list(select_layers(model, types=(nn.Linear, nn.Conv2d)))
            raise ConfigError(f"layer pattern {pattern!r} matches no Linear/Conv2d layer; layers: {layers}")
        for n in hits:
            chosen[n] = cfg
    return chosen


def _input_shapes(model: nn.Module, names: list[str], example_input: torch.Tensor) -> dict[str, torch.Size]:
    shapes: dict[str, torch.Size] = {}

    def hook(name: str):
        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
            shapes.setdefault(name, torch.Size([1, *inputs[0].shape[1:]]))  # one sample
        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in handles:
            h.remove()
    return shapes


def decompose(model: nn.Module, spec: DecomposeConfig | Mapping[str, LowRankConfig | Mapping[str, Any]],
              example_input: torch.Tensor | None = None) -> tuple[nn.Module, DecomposeReport]:
    """Replace the layers named in ``spec`` (a ``DecomposeConfig``, or its ``layers``:
    module name or glob -> config) in place by their low-rank pipelines
    (``nn.Sequential``); returns ``(model, report)``. With ``example_input`` the report
    also counts MACs per sample.

    Example:
        >>> from nncompress.models import build_model
        >>> m, rep = decompose(build_model("lenet5"), {"fc1": {"method": "svd", "rank": 16}})
        >>> rep.layers[0].params_after == 16 * (800 + 500) + 500
        True
    """
    if isinstance(spec, DecomposeConfig):
        spec = spec.layers
    cfgs = {k: v if isinstance(v, LowRankConfig) else LowRankConfig.from_dict(v) for k, v in spec.items()}
    targets = _targets(model, cfgs)
    shapes = _input_shapes(model, list(targets), example_input) if example_input is not None else {}
    record = dict(read_state(model).lowrank)
    report = DecomposeReport()
    plans = {}  # validate every layer before touching any
    for name, cfg in targets.items():
        layer = model.get_submodule(name)
        geom = layer_geometry(layer, name)
        plans[name] = (layer, geom, resolve_ranks(layer, geom, cfg, name))
    for name, cfg in targets.items():
        layer, geom, ranks = plans[name]
        new = _factorise(layer, geom, cfg, ranks)
        new.train(layer.training)
        rep = LayerReport(name, cfg.method, ranks, count_params(layer), count_params(new))
        if name in shapes:
            rep.macs_before, rep.macs_after = count_macs(layer, shapes[name]), count_macs(new, shapes[name])
        set_submodule(model, name, new)
        record[name] = {"method": cfg.method, "ranks": ranks, "groups": cfg.groups, "geometry": geom}
        report.layers.append(rep)
        log.info("%s: %s ranks %s, params %d -> %d", name, cfg.method, ranks, rep.params_before, rep.params_after)
        if rep.params_after >= rep.params_before:
            log.warning("%s: ranks %s give no parameter saving (%d -> %d)", name, ranks,
                        rep.params_before, rep.params_after)
    model_state(model, create=True).lowrank = record
    return model, report


def lowrank_spec(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The JSON-able record of the decompositions applied to ``model`` (empty if none)."""
    return dict(read_state(model).lowrank)


def apply_lowrank_spec(model: nn.Module, spec: Mapping[str, Mapping[str, Any]],
                       max_dim: int | None = None, max_elements: int | None = None) -> nn.Module:
    """Rebuild the module tree of a decomposed model from its record (placeholder
    weights, to be overwritten by ``load_state_dict``). Used by ``nncompress.load``,
    which passes ``max_dim`` (the largest dimension of any stored tensor: every rank,
    channel count and kernel size of a genuine record is one) so that a hostile record
    cannot make it allocate huge placeholders, and ``max_elements`` (the file's budget:
    the replacement modules are first built on torch's meta device and counted).

    Example:
        >>> from nncompress.models import build_model
        >>> m, _ = decompose(build_model("lenet5"), {"fc1": {"method": "svd", "rank": 4}})
        >>> fresh = apply_lowrank_spec(build_model("lenet5"), lowrank_spec(m))
        >>> fresh.fc1[0].weight.shape
        torch.Size([4, 800])
    """
    try:
        if max_elements is not None:
            for name, entry in spec.items():
                check_geometry(entry["geometry"], str(name)[:80])
            with torch.device("meta"):
                declared = sum(p.numel() for entry in spec.values()
                               for p in skeleton(entry["method"], entry["geometry"],
                                                 [int(r) for r in entry["ranks"]],
                                                 int(entry.get("groups", 1))).parameters())
            if declared > max_elements:
                raise ConfigError(f"the low-rank layers declare {declared:,} parameters, more than "
                                  f"the {max_elements:,} allowed")
        for name, entry in spec.items():
            geom = check_geometry(entry["geometry"], str(name)[:80])
            sizes = [*entry["ranks"], entry.get("groups", 1), geom["in"], geom["out"], *geom.get("kernel", [])]
            if max_dim is not None and any(int(v) < 1 or int(v) > max_dim for v in sizes):
                raise ValueError(f"{name}: sizes {sizes} outside [1, {max_dim}]")
            seq = skeleton(entry["method"], entry["geometry"], [int(r) for r in entry["ranks"]],
                           int(entry.get("groups", 1)))
            old = model.get_submodule(name)
            p = next(old.parameters(), None)
            if p is not None:
                seq = seq.to(p.device, p.dtype)
            set_submodule(model, name, seq)
    except ConfigError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError, OverflowError) as exc:
        raise ConfigError(f"low-rank record is damaged ({exc!r})") from exc
    model_state(model, create=True).lowrank = {k: dict(v) for k, v in spec.items()}
    return model


def _restore_record(model: nn.Module, spec: Any, ctx: RestoreContext) -> None:
    """The ``lowrank`` record of a file -> the decomposed module tree (sizes bounded by the
    largest stored dimension and the file's budget)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"low-rank record {str(spec)[:80]} is not an object")
    apply_lowrank_spec(model, spec, ctx.max_dim, ctx.budget)


def _decompose_layers(model: nn.Module, config: DecomposeConfig,
                      example_input: torch.Tensor | None = None) -> dict[str, dict[str, Any]]:
    """:func:`decompose` with the per-layer report of the method registry."""
    _, report = decompose(model, config, example_input)
    return {r.name: asdict(r) for r in report.layers}


register_method("lowrank", DecomposeConfig, _decompose_layers,
                f"L1-L5 low-rank factors per layer ({', '.join(METHODS)}; layers: {{name: {{method, rank}}}})",
                example_input=True)
register_record(ModelRecord("lowrank", capture=lowrank_spec, restore=_restore_record,
                            phase="structure", order=10, kind=dict))
