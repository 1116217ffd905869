"""Check a parsed recipe against the built model before the first stage runs.

Values (ratios, bit widths, criteria, every stage option) are checked when the recipe is
read, by each stage config's ``__post_init__`` (``parse_recipe`` collects the errors of all
stages into one message). What needs the model is checked here, all at once: every layer
name and glob a stage gives (``include``/``exclude``/``skip``, per-layer maps such as
``sparsity``, ``quality``, ``ratios``, ``bits``, ``layers``, the ``schedule`` rounds,
``blocks``, ``distill.attention.layers``) must match a layer of the model, and the model
must run on one sample of the test data. Each problem names its recipe path
(``stages[1].prune.schedule[0].fc9``). Stages after one that changes the module tree
(``decompose``, ``structured``, a ``hashed`` quantizer) are not checked against the
original model.

``from_dict`` (typed configs from YAML mappings) lives in ``nncompress.config`` and is
re-exported here.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nncompress.config import from_dict
from nncompress.errors import ConfigError
from nncompress.train.batches import call_model

__all__ = ["from_dict", "recipe_problems", "validate_recipe"]

GLOB_LIST_FIELDS = ("include", "exclude", "skip")
LAYER_MAP_FIELDS = ("sparsity", "quality", "ratios", "bits", "layers")
RESTRUCTURING_STAGES = ("decompose", "structured")
MAX_SHOWN = 12


def _layer_names(model: nn.Module) -> set[str]:
    names = {n for n, _ in model.named_modules() if n}
    names |= {n for n, _ in model.named_parameters()}
    return names


def _matches(pattern: str, names: set[str]) -> bool:
    if pattern in names or f"{pattern}.weight" in names:
        return True
    if any(c in pattern for c in "*?["):
        return any(fnmatch.fnmatchcase(n, pattern) for n in names)
    return False


def _walk(value: Any, where: str, names: set[str], problems: list[str]) -> None:
    """Every layer reference inside a stage config (dataclasses, nested)."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return
    for f in dataclasses.fields(value):
        v = getattr(value, f.name, None)
        path = f"{where}.{f.name}"
        if v is None:
            continue
        if f.name in GLOB_LIST_FIELDS and isinstance(v, (list, tuple)):
            for i, p in enumerate(v):
                if isinstance(p, str) and not _matches(p, names):
                    problems.append(f"{path}[{i}]: {p!r} matches no layer")
        elif f.name in LAYER_MAP_FIELDS and isinstance(v, Mapping):
            for k in v:
                if k != "default" and isinstance(k, str) and not _matches(k, names):
                    problems.append(f"{path}.{k}: no layer named {k!r}")
            for k, inner in v.items():
                _walk(inner, f"{path}.{k}", names, problems)
        elif f.name == "schedule" and isinstance(v, (list, tuple)):
            for i, round_ in enumerate(v):
                if isinstance(round_, Mapping):
                    for k in round_:
                        if k != "default" and not _matches(k, names):
                            problems.append(f"{path}[{i}].{k}: no layer named {k!r}")
        elif f.name == "blocks" and isinstance(v, (list, tuple)):
            for i, b in enumerate(v):
                if isinstance(b, str) and not _matches(b, names):
                    problems.append(f"{path}[{i}]: no block named {b!r}")
        elif f.name == "layers" and isinstance(v, (list, tuple)):  # distill.attention.layers
            for i, entry in enumerate(v):
                for name in ([entry] if isinstance(entry, str) else list(entry)):
                    if isinstance(name, str) and not _matches(name, names):
                        problems.append(f"{path}[{i}]: no layer named {name!r}")
        elif dataclasses.is_dataclass(v):
            _walk(v, path, names, problems)


def recipe_problems(recipe: Any, model: nn.Module, source: str = "recipe") -> list[str]:
    """Every layer reference of the recipe's stages that the model does not have (up to the
    first stage that restructures the model).

    Example:
        >>> from nncompress.models import build_model
        >>> from nncompress.recipes import parse_recipe
        >>> recipe_problems(parse_recipe({"stages": [{"prune": {"sparsity": {"fc9": 0.5}}}]}), build_model("lenet300"))
        ["recipe: stages[0].prune.sparsity.fc9: no layer named 'fc9'"]
    """
    names = _layer_names(model)
    problems: list[str] = []
    for i, stage in enumerate(recipe.stages):
        found: list[str] = []
        _walk(stage.config, f"stages[{i}].{stage.name}", names, found)
        problems += [f"{source}: {p}" for p in found]
        method = getattr(stage.config, "method", None)
        if stage.name in RESTRUCTURING_STAGES or method == "hashed":
            break
    return problems


def validate_recipe(recipe: Any, ctx: Any) -> None:
    """Before the first stage: the model runs on one test sample, and every layer the
    recipe names exists. One ``ConfigError`` lists every problem with its recipe path.

    Example:
        >>> validate_recipe(recipe, build_context(recipe))  # doctest: +SKIP
    """
    source = recipe.name
    problems = recipe_problems(recipe, ctx.model, source)
    was_training = ctx.model.training
    ctx.model.eval()
    try:
        with torch.no_grad():
            call_model(ctx.model, ctx.example_input)
    except Exception as exc:  # noqa: BLE001 - the model and the data do not fit together
        shape = (list(ctx.example_input.shape) if isinstance(ctx.example_input, torch.Tensor)
                 else {k: list(v.shape) for k, v in ctx.example_input.items()})
        problems.insert(0, f"{source}: model: it does not run on one sample of the data (inputs {shape}): "
                           f"{type(exc).__name__}: {str(exc)[:200]}")
    finally:
        ctx.model.train(was_training)
    if problems:
        shown = problems[:MAX_SHOWN] + ([f"... and {len(problems) - MAX_SHOWN} more"]
                                         if len(problems) > MAX_SHOWN else [])
        layers = sorted(n for n, m in ctx.model.named_modules() if n and not list(m.children()))
        raise ConfigError(f"{len(problems)} problem(s) in the recipe, found before any stage ran: "
                          + "; ".join(shown) + f" (the model's layers: {', '.join(layers[:40])}"
                          + (" ...)" if len(layers) > 40 else ")"))
