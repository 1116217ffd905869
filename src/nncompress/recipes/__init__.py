"""YAML recipes: schema, stage registry, runner."""

from nncompress.recipes import (  # noqa: F401  (register stages)
    decompose_stage,
    distill_stage,
    prune_stage,
    quantize_stage,
    sparse_stage,
    structured_stage,
)
from nncompress.recipes.schema import Recipe, builtin_recipes, load_recipe, parse_recipe
from nncompress.recipes.stages import STAGES, register_stage

__all__ = ["STAGES", "Recipe", "builtin_recipes", "load_recipe", "parse_recipe", "register_stage"]
