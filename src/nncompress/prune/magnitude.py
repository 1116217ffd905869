"""P1 magnitude pruning (Han et al. 2015): thresholds by ``quality * std`` or by a target
sparsity, layer-wise or global."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from nncompress.checks import check_choice, check_float, check_fraction
from nncompress.errors import ConfigError
from nncompress.prune.mask import Masks
from nncompress.prune.targets import LayerSelection, prunable_weights

SCOPES = ("layer", "global")
LayerValues = float | dict[str, float]  # one number, or {param name (or module name): value, default: value}


def check_sparsity(value: float, what: str = "sparsity") -> float:
    """Validate a sparsity in [0, 1)."""
    return check_fraction(value, what, zero=True, one=False)


def layer_values(value: LayerValues | None) -> list:
    """The values of one number or a per-layer mapping, as a list."""
    return list(value.values()) if isinstance(value, Mapping) else [value]


def check_sparsities(value: LayerValues | None, what: str = "sparsity") -> None:
    """One sparsity or ``{layer: sparsity}``, each in [0, 1) (None passes)."""
    for v in layer_values(value):
        if v is not None:
            check_sparsity(v, what)


@dataclass
class MagnitudeConfig(LayerSelection):
    """Which weights ``magnitude_prune`` removes: a target sparsity or a ``quality * std``
    threshold, per layer or global.

    Example:
        >>> MagnitudeConfig(sparsity={"fc1.weight": 0.9, "default": 0.5}).scope
        'layer'
    """

    sparsity: LayerValues | None = None
    """Target fraction of zeros in [0, 1), one number or ``{layer: s, default: s}``."""
    quality: LayerValues | None = None
    """Instead of ``sparsity``: threshold = quality x std(W) per layer (>= 0)."""
    scope: str = "layer"
    """``layer``: a threshold per layer; ``global``: one threshold over all layers (one
    sparsity)."""

    def __post_init__(self) -> None:
        check_choice(self.scope, SCOPES, "scope")
        check_sparsities(self.sparsity)
        for v in layer_values(self.quality):
            if v is not None:
                check_float(v, "quality", 0)


def std_threshold(weight: torch.Tensor, quality: float) -> float:
    """Caffe recipe of seed 001: ``threshold = quality * std(W)``.

    Example:
        >>> std_threshold(torch.tensor([1.0, -1.0]), 2.0)
        2.828...
    """
    check_float(quality, "quality", 0)
    return float(quality * weight.detach().float().std())


def topk_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep the ``n - round(sparsity * n)`` largest scores exactly (ties broken by index).

    Example:
        >>> topk_mask(torch.tensor([3., 1., 2., 0.5]), 0.5).tolist()
        [True, False, True, False]
    """
    check_sparsity(sparsity)
    flat = scores.detach().reshape(-1)
    n_prune = int(round(sparsity * flat.numel()))
    mask = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    if n_prune > 0:
        idx = torch.argsort(flat, stable=True)[:n_prune]
        mask[idx] = False
    return mask.view_as(scores)


def magnitude_mask(weight: torch.Tensor, *, sparsity: float | None = None,
                   quality: float | None = None) -> torch.Tensor:
    """Mask of one tensor by target sparsity (k-th smallest |w|) or by ``quality * std``."""
    if (sparsity is None) == (quality is None):
        raise ConfigError("give exactly one of sparsity or quality")
    if sparsity is not None:
        return topk_mask(weight.abs(), sparsity)
    return weight.detach().abs() > std_threshold(weight, quality)


def select_masks(scores: Mapping[str, torch.Tensor], sparsity: float | Mapping[str, float | None],
                 scope: str = "layer") -> dict[str, torch.Tensor]:
    """Selection step shared by every unstructured criterion: keep the highest scores.

    ``scope='global'`` ranks all tensors together (one ``sparsity``); ``'layer'`` applies
    ``sparsity`` (one number or name -> value, None = keep all) to each tensor alone.

    Example:
        >>> select_masks({"w": torch.tensor([3., 1., 2., 0.5])}, 0.5)["w"].tolist()
        [True, False, True, False]
    """
    if scope == "global":
        flat = torch.cat([s.detach().reshape(-1) for s in scores.values()])
        keep = topk_mask(flat, float(sparsity))
        out, off = {}, 0
        for n, s in scores.items():
            out[n] = keep[off:off + s.numel()].view_as(s)
            off += s.numel()
        return out
    per = sparsity if isinstance(sparsity, Mapping) else dict.fromkeys(scores, sparsity)
    return {n: (topk_mask(s, check_sparsity(per[n])) if per[n] is not None
                else torch.ones_like(s, dtype=torch.bool)) for n, s in scores.items()}


def finish_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], previous: Masks | None,
                 apply: bool) -> Masks:
    """Combine with earlier masks (pruned stays pruned) and optionally zero the weights."""
    result = Masks(masks)
    if previous is not None:
        result = result.combine(previous)
    if apply:
        result.apply(model)
    return result


def _per_layer(value, names: list[str], what: str) -> dict[str, float | None]:
    if value is None:
        return dict.fromkeys(names)
    if isinstance(value, Mapping):
        unknown = set(value) - set(names) - {"default"}
        if unknown:
            raise ConfigError(f"{what} names unknown layers {sorted(unknown)}; allowed: {names}")
        return {n: value.get(n, value.get("default")) for n in names}
    return dict.fromkeys(names, value)


def magnitude_prune(
    model: nn.Module,
    config: MagnitudeConfig | None = None,
    *,
    sparsity: LayerValues | None = None,
    quality: LayerValues | None = None,
    scope: str = "layer",
    include=None,
    exclude=(),
    previous: Masks | None = None,
    apply: bool = True,
) -> Masks:
    """Prune the smallest-magnitude weights of every Linear/Conv layer as ``config`` says
    (or as the keyword arguments, its fields, say).

    Args:
        config: sparsity or quality, scope, include/exclude (``MagnitudeConfig``); a
            per-layer ``sparsity`` maps parameter names (``fc1.weight``) to values.
        previous: masks from an earlier round; already-pruned weights stay pruned.
        apply: zero the pruned weights in place.

    Example:
        >>> from nncompress.models import build_model
        >>> masks = magnitude_prune(build_model("lenet300"), MagnitudeConfig(sparsity=0.9))
        >>> masks = magnitude_prune(build_model("lenet300"), sparsity=0.9)  # the same, by keywords
        >>> round(masks.total_sparsity(), 3)
        0.9
    """
    if config is None:
        config = MagnitudeConfig(sparsity=sparsity, quality=quality, scope=scope, include=include,
                                 exclude=list(exclude))
    elif (sparsity, quality, include, scope, tuple(exclude)) != (None, None, None, "layer", ()):
        raise TypeError("magnitude_prune(model, config): the options belong in the config")
    sparsity, quality, scope = config.sparsity, config.quality, config.scope
    weights = prunable_weights(model, config.include, config.exclude)
    names = list(weights)
    if scope == "global":
        if sparsity is None or isinstance(sparsity, Mapping):
            raise ConfigError("global scope needs one number for sparsity")
        masks = select_masks({n: w.detach().abs() for n, w in weights.items()}, sparsity, "global")
    else:
        sp = _per_layer(sparsity, names, "sparsity")
        qu = _per_layer(quality, names, "quality")
        masks = {}
        for n, w in weights.items():
            if sp[n] is None and qu[n] is None:
                masks[n] = torch.ones_like(w, dtype=torch.bool)
            else:
                masks[n] = magnitude_mask(w, sparsity=sp[n], quality=None if sp[n] is not None else qu[n])
    return finish_masks(model, masks, previous, apply)
