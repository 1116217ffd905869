"""The recipe file: model, data, seed and an ordered list of stages."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from nncompress.errors import ConfigError
from nncompress.recipes.stages import STAGES
from nncompress.recipes.validate import from_dict


@dataclass
class ModelSpec:
    name: str = "lenet300"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataSpec:
    name: str = "fashion-mnist"
    root: str | None = None
    train_subset: int | None = None


@dataclass
class Stage:
    name: str
    config: Any


@dataclass
class Recipe:
    name: str
    model: ModelSpec
    data: DataSpec
    stages: list[Stage]
    seed: int = 0
    description: str = ""


_TOP_KEYS = {"name", "description", "model", "data", "seed", "stages"}


def parse_recipe(raw: Any, source: str = "recipe") -> Recipe:
    """Validate a recipe mapping (as loaded from YAML) into a typed ``Recipe``.

    Example:
        >>> parse_recipe({"name": "x", "stages": [{"evaluate": {}}]}).stages[0].name
        'evaluate'
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a mapping with keys {sorted(_TOP_KEYS)}")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    stages_raw = raw.get("stages")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise ConfigError(f"{source}: 'stages' must be a non-empty list, e.g. [{{train: {{epochs: 5}}}}]")
    stages = []
    for i, item in enumerate(stages_raw):
        if isinstance(item, str):
            item = {item: {}}
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(f"{source}: stages[{i}] must be a one-key mapping like {{prune: {{...}}}}, got {item!r}")
        (name, opts), = item.items()
        spec = STAGES.get(name)
        stages.append(Stage(name, from_dict(spec.config, opts, f"{source}: stages[{i}].{name}")))
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{source}: seed must be an integer, got {seed!r}")
    return Recipe(
        name=str(raw.get("name", Path(source).stem)),
        model=from_dict(ModelSpec, raw.get("model"), f"{source}: model"),
        data=from_dict(DataSpec, raw.get("data"), f"{source}: data"),
        stages=stages, seed=seed, description=str(raw.get("description", "")),
    )


def builtin_recipes() -> list[str]:
    """Names of the recipes shipped with nncompress."""
    folder = resources.files("nncompress.recipes") / "builtin"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Load a built-in recipe by name or a YAML file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        text, source = path.read_text(), str(path)
    else:
        names = builtin_recipes()
        if str(name_or_path) not in names:
            raise ConfigError(f"unknown recipe {name_or_path!r}: not a file, and built-ins are {names}")
        text = (resources.files("nncompress.recipes") / "builtin" / f"{name_or_path}.yaml").read_text()
        source = str(name_or_path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: invalid YAML ({exc})") from exc
    return parse_recipe(raw, source)
