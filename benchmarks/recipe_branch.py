"""Run recipe variants that share their first (``train``) stage: train once, then run the
rest of every variant from a copy of the trained model. Every ``fit`` reseeds the global
RNG and k-means is seeded by the recipe, so at one thread a branch ends with the same file
(same bytes: the runner's metadata is written too) as a full ``nncompress run`` of that
variant, at a fraction of the time.

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

import nncompress
from nncompress.analysis.accounting import count_parameters
from nncompress.distill import frozen_teacher
from nncompress.errors import ConfigError
from nncompress.recipes import STAGES, parse_recipe
from nncompress.recipes.runner import build_context
from nncompress.train import evaluate


def run_branches(variants: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Train the shared first stage once and run every variant's later stages from it."""
    recipes = [parse_recipe(v["recipe"], v["name"]) for v in variants]
    firsts = {json.dumps(v["recipe"]["stages"][0], sort_keys=True) for v in variants}
    keys = {(r.seed, repr(r.model), repr(r.data)) for r in recipes}
    if len(firsts) != 1 or len(keys) != 1 or recipes[0].stages[0].name != "train":
        raise ConfigError("branching needs one shared first 'train' stage, model, data and seed")
    base = build_context(recipes[0])
    dense_bytes = count_parameters(base.model)["dense_fp32_bytes"]
    STAGES.get("train").run(base, recipes[0].stages[0].config)
    dense_state = copy.deepcopy(base.model.state_dict())
    dense_acc = evaluate(base.model, base.test_data)["accuracy"]
    rows = []
    for v, recipe in zip(variants, recipes):
        t0 = time.perf_counter()
        ctx = build_context(recipe)
        ctx.model.load_state_dict(dense_state)
        if ctx.keep_teacher:
            ctx.teacher = frozen_teacher(ctx.model)
        after: dict[str, float] = {}
        for stage in recipe.stages[1:]:
            STAGES.get(stage.name).run(ctx, stage.config)
            after[stage.name] = evaluate(ctx.model, ctx.test_data)["accuracy"]
        with tempfile.TemporaryDirectory() as tmp:
            acc_saved = evaluate(ctx.model, ctx.test_data)["accuracy"]
            meta = {"recipe": recipe.name, "accuracy": acc_saved, "data": recipe.data.name}  # as the runner
            info = nncompress.save(ctx.model, Path(tmp) / "m.nnc", codecs=ctx.codecs or None, metadata=meta)
            arch = getattr(ctx.model, "_nncompress_arch", None)  # as the runner loads it
            loaded = nncompress.load(Path(tmp) / "m.nnc", model=None if arch else ctx.model)
            acc = evaluate(loaded, ctx.test_data)["accuracy"]
        rows.append({"name": v["name"], "dense_accuracy": dense_acc, "compressed_accuracy": acc,
                     "file_bytes": info.file_bytes, "dense_fp32_bytes": dense_bytes,
                     "ratio": dense_bytes / info.file_bytes, "after_prune": after.get("prune"),
                     "seconds": time.perf_counter() - t0})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    torch.set_num_threads(1)
    run_branches(json.loads(Path(sys.argv[1]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
