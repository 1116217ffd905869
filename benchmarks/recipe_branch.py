"""Run recipe variants that share their first (``train``) stage: train once, then run the
rest of every variant from the trained state (``run_recipe(..., trained_state=...)``).
Every ``fit`` reseeds the global RNG and k-means is seeded by the recipe, so at one thread
a branch ends with the same file as a full ``nncompress run`` of that variant, at a
fraction of the time.

    python benchmarks/recipe_branch.py VARIANTS.json    # a list of {"name": ..., "recipe": {...}}

Prints one JSON row per variant (the ``summary`` of a report, plus ``after_prune``).
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from nncompress.errors import ConfigError
from nncompress.recipes import parse_recipe
from nncompress.recipes.runner import run_recipe

SUMMARY = ("dense_accuracy", "compressed_accuracy", "file_bytes", "dense_fp32_bytes", "ratio")


def run_branches(variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Train the shared first stage once and run every variant's later stages from it."""
    recipes = [parse_recipe(v["recipe"], v["name"]) for v in variants]
    firsts = {json.dumps(v["recipe"]["stages"][0], sort_keys=True) for v in variants}
    keys = {(r.seed, repr(r.model), repr(r.data)) for r in recipes}
    if len(firsts) != 1 or len(keys) != 1 or recipes[0].stages[0].name != "train":
        raise ConfigError("branching needs one shared first 'train' stage, model, data and seed")
    trained: dict[str, torch.Tensor] = {}

    def keep_trained(stage: str, ctx) -> None:
        if stage == "train" and not trained:
            trained.update(copy.deepcopy(ctx.model.state_dict()))

    rows = []
    for v, recipe in zip(variants, recipes):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            report = run_recipe(recipe, Path(tmp) / "m.nnc", stage_hook=keep_trained,
                                trained_state=dict(trained) or None)
        after = {s["stage"]: s["accuracy"] for s in report["stages"]}
        soup = next((s["soup"] for s in report["stages"] if "soup" in s), None)
        rows.append({"name": v["name"], **{k: report["summary"][k] for k in SUMMARY},
                     "after_prune": after.get("prune"), **({"soup": soup} if soup else {}),
                     "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    torch.set_num_threads(1)
    run_branches(json.loads(Path(sys.argv[1]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
