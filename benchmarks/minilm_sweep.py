"""Sweep (issue 16): distillation variants of a MiniLM recipe on the same one-shot model.

A built-in recipe (``minilm-8x`` by default) runs its one-shot stages once per recipe seed
(the model is cached under ``--cache``; calibration text only), then each variant replaces
the recipe's ``distill`` stage options (e.g. ``weights: {relational: 1}``) and runs that
stage on a fresh copy, exactly as ``nncompress run`` would (same data, teacher, sharing).
Each result is measured in memory on two held-out sets, both disjoint from the recipe's
calibration and distillation text: the benchmark's 500 evaluation passages
(``benchmarks/minilm.py``, default corpus, the passages after the first 8,704) and the first
500 of the recipe's own test split. Columns: mean cosine and top-10 nearest-neighbour
overlap on each, distillation seconds, the load average before/after. Results are appended
to ``results/minilm_sweep.jsonl`` (one line per run) and the table is rewritten.

    python benchmarks/minilm_sweep.py --variants base,rel1 --seeds 0,1
    python benchmarks/minilm_sweep.py --table   # only rewrite results/minilm_sweep.md
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minilm import batches, embed_torch, metrics, model_dir, ood_passages, recipe_raw  # noqa: E402

log = logging.getLogger("minilm_sweep")
RESULTS = Path(__file__).resolve().parent / "results"
N_EVAL = 500
CACHE_VERSION = "v2"
"""v2: the quantize stage calibrates on the recipe's calib split (v1 used its train split)."""

REL = {"weights": {"relational": 1.0}}
EMB8 = {"quantize": {"method": "kmeans", "bits_emb": 8,
                     "include": ["embeddings.position_embeddings", "embeddings.token_type_embeddings"]}}


def gptq(bits: int, rows: int = 16, **kw: Any) -> dict:
    return {"quantize": {"method": "gptq", "grid": "kmeans", "bits": bits, "rows_per_codebook": rows,
                         "act_order": True, "n_samples": 2048, **kw}}


def pq_emb(sub_dim: int, centroids: int = 256) -> dict:
    return {"quantize": {"method": "pq", "sub_dim": sub_dim, "centroids": centroids,
                         "include": ["embeddings.word_embeddings"]}}


def kmeans_emb(bits: int, rows: int = 4096, rare: int | None = None) -> dict:
    q = {"method": "kmeans", "bits_emb": bits, "rows_per_codebook": rows, "include": ["embeddings.word_embeddings"]}
    return {"quantize": {**q, "rare_bits": rare} if rare else q}


ATT, FFN = {"include": ["*.attention.*"]}, {"exclude": ["*.attention.*"]}
I5 = [f"encoder.layer.{i}.intermediate.dense" for i in (0, 1, 3, 4)]
I5C = [f"encoder.layer.{i}.intermediate.dense" for i in (0, 1, 4, 5)]
VARIANTS: dict[str, dict[str, Any]] = {
    "base": {},
    "rel1": {"distill": REL},
    "rel4": {"distill": {"weights": {"relational": 4.0}}},
    "rel30": {"distill": {"weights": {"relational": 30.0}}},
    "relkl20": {"distill": {"weights": {"relational": 20.0}, "relational_mode": "kl",
                            "relational_temperature": 0.05}},
    "relkl": {"distill": {"weights": {"relational": 1.0}, "relational_mode": "kl",
                          "relational_temperature": 0.05}},
    "rel1-b64": {"distill": {**REL, "batch_size": 64}},
    "rel1-b128": {"distill": {**REL, "batch_size": 128, "epochs": 4}},
    "rel1-layers": {"distill": {"weights": {"relational": 1.0, "layers": 1.0},
                                "layers": ["encoder.layer.1", "encoder.layer.3", "encoder.layer.5"]}},
    "rel1-3ep": {"distill": {**REL, "epochs": 3}},
    "rel1-more": {"distill": REL, "corpus": {"train": 6656}},
    # 12x: product-quantized word embeddings (sub_dim 4 = 2 bits, 8 = 1 bit per weight)
    "pq4-rel": {"distill": REL, "stages": [gptq(4, **ATT), gptq(3, **FFN), pq_emb(4), EMB8]},
    "pq8-a5f4-rel": {"distill": REL, "stages": [gptq(5, **ATT), gptq(4, **FFN), pq_emb(8), EMB8]},
    "pq8-a4f4-rel": {"distill": REL, "stages": [gptq(4, **ATT), gptq(4, **FFN), pq_emb(8), EMB8]},
    # minilm-8x's one-shot Linear layers (5 bits per 64 rows) with PQ word embeddings
    "g5-pq8k128-rel": {"distill": REL, "stages": [gptq(5, 64), pq_emb(8, 128), EMB8]},
    "g5-pq8-rel": {"distill": REL, "stages": [gptq(5, 64), pq_emb(8), EMB8]},
    "g5-pq4-rel": {"distill": REL, "stages": [gptq(5, 64), pq_emb(4), EMB8]},
    # 8x: the word embeddings (the larger loss) at 4 bits, paid for by 4-bit feed-forward layers
    "a5f4-e4": {"stages": [gptq(5, 64, **ATT), gptq(4, 64, **FFN), kmeans_emb(4), EMB8]},
    "a5f4-e4r512": {"stages": [gptq(5, 64, **ATT), gptq(4, 64, **FFN), kmeans_emb(4, 512), EMB8]},
    # the feed-forward layers are the larger loss of a5f4 (restoring one layer's FFN to fp32 gains
    # more than any attention or embedding change): codebooks per 16 rows, and the headroom under
    # 11.36 MB spent on 5-bit intermediate layers where restoring them helped most (0, 1, 3, 4)
    "a5f4r16-e4r512": {"stages": [gptq(5, 16, **ATT), gptq(4, 16, **FFN), kmeans_emb(4, 512), EMB8]},
    # frequency tiers of the word embeddings (rows the calibration/training text never looks up
    # at rare_bits): 12x and 8x points
    "t12-a4f4-e4t1": {"stages": [gptq(4, 16, **ATT), gptq(4, 16, **FFN), kmeans_emb(4, 512, 1), EMB8]},
    "t12-a4f3-e4t1": {"stages": [gptq(4, 16, **ATT), gptq(3, 16, **FFN), kmeans_emb(4, 512, 1), EMB8]},
    "t8-a5f5-e5t2": {"stages": [gptq(5, 16, **ATT), gptq(5, 16, **FFN), kmeans_emb(5, 512, 2), EMB8]},
    # the same with the four intermediate layers chosen on calibration text alone (restoring each
    # to fp32 on 500 calibration passages: cosine gain 0 > 1 > 4 = 5 > 2 = 3)
    "a5f4i5c-e4r512": {"stages": [gptq(5, 64, **ATT), gptq(5, 64, include=I5C),
                                  gptq(4, 64, exclude=["*.attention.*", *I5C]), kmeans_emb(4, 512), EMB8]},
    "a5f4i5c-r16-e4r512": {"stages": [gptq(5, 16, **ATT), gptq(5, 16, include=I5C),
                                      gptq(4, 16, exclude=["*.attention.*", *I5C]), kmeans_emb(4, 512), EMB8]},
    "a5f4i5-e4r512": {"stages": [gptq(5, 64, **ATT), gptq(5, 64, include=I5),
                                 gptq(4, 64, exclude=["*.attention.*", *I5]), kmeans_emb(4, 512), EMB8]},
}
"""Edits of the recipe: ``distill`` options over its own, ``corpus`` sizes, ``stages``
(the stages before ``distill``, replacing the recipe's). ``base``: the recipe as it is."""


def load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def eval_sets(tok, corpus: dict) -> dict[str, list]:
    """The benchmark's evaluation passages and the recipe's own test split (first 500 each)."""
    from nncompress.data.corpus import debian_splits
    from nncompress.recipes.schema import corpus_sizes
    bench, _ = debian_splits({"calib": 512, "train": 8192, "eval": N_EVAL})
    c = corpus_sizes(corpus)
    own, _ = debian_splits({k: c[k] for k in ("calib", "train", "test")}, c["seed"])
    used = set(own["calib"]) | set(own["train"])
    sets = {"bench": bench["eval"], "test": own["test"][:N_EVAL], "ood": ood_passages(N_EVAL)}
    for name, s in sets.items():
        clash = used & set(s)
        if clash:
            raise RuntimeError(f"{len(clash)} passages of the {name} set are calibration/distillation text")
    return {k: batches(tok, v) for k, v in sets.items()}


def prefix_path(raw: dict, stages: list, seed: int, cache: Path) -> Path:
    """Cache file of the model after ``stages`` (a prefix of the recipe's stages)."""
    import hashlib
    digest = hashlib.sha1(json.dumps(stages, sort_keys=True).encode()).hexdigest()[:10]
    return cache / f"{digest}-seed{seed}-calib{raw['data']['corpus'].get('calib')}-{CACHE_VERSION}.pt"


def oneshot_model(raw: dict, seed: int, cache: Path) -> torch.nn.Module:
    """The model after the recipe's stages before ``distill``. The model after every prefix
    of those stages is cached (per stage list, seed, calibration size), so variants that
    share their first stages (e.g. the same one-shot Linear layers, another embedding
    codec) run only the stages after the longest cached prefix."""
    from nncompress.recipes import parse_recipe
    from nncompress.recipes.runner import build_context
    from nncompress.recipes.stages import STAGES
    from nncompress.recipes.validate import validate_recipe
    stages = [s for s in raw["stages"] if "distill" not in s]
    done = next((i for i in range(len(stages), 0, -1) if prefix_path(raw, stages[:i], seed, cache).exists()), 0)
    if done == len(stages):
        return torch.load(prefix_path(raw, stages, seed, cache), weights_only=False)
    recipe = parse_recipe({**raw, "stages": stages}, raw["name"])
    ctx = build_context(recipe)
    if done:
        ctx.model = torch.load(prefix_path(raw, stages[:done], seed, cache), weights_only=False)
        log.info("one-shot: stages 1-%d from the cache", done)
    else:
        validate_recipe(recipe, ctx)
    cache.mkdir(parents=True, exist_ok=True)
    for i, stage in enumerate(recipe.stages[done:], start=done):
        t0 = time.perf_counter()
        STAGES.get(stage.name).run(ctx, stage.config)
        log.info("one-shot stage %d (%s) of %s seed %d: %.1f s", i + 1, stage.name, raw["name"], seed,
                 time.perf_counter() - t0)
        torch.save(ctx.model, prefix_path(raw, stages[:i + 1], seed, cache))
    return ctx.model


def run_variant(name: str, recipe_name: str, seed: int, cache: Path, distill_seed: int | None = None) -> dict:
    from nncompress.recipes import parse_recipe
    from nncompress.recipes.runner import build_context
    from nncompress.recipes.stages import STAGES
    raw = recipe_raw(recipe_name)
    raw["seed"] = seed
    edit = VARIANTS[name]
    raw["data"]["corpus"] = {**raw["data"]["corpus"], **edit.get("corpus", {})}
    distill = next(s["distill"] for s in raw["stages"] if "distill" in s)
    options = {**distill, **edit.get("distill", {}), "seed": seed if distill_seed is None else distill_seed}
    before_distill = edit.get("stages", [s for s in raw["stages"] if "distill" not in s])
    raw["stages"] = [*before_distill, {"distill": options}]
    model = oneshot_model(raw, seed, cache)
    recipe = parse_recipe(raw, recipe_name)
    ctx = build_context(recipe)
    from transformers import AutoTokenizer
    sets = eval_sets(AutoTokenizer.from_pretrained(model_dir()), raw["data"]["corpus"])
    teacher = ctx.model
    refs = {k: embed_torch(teacher, b) for k, b in sets.items()}
    ctx.model = copy.deepcopy(model)
    before = {k: metrics(refs[k], embed_torch(ctx.model, b)) for k, b in sets.items()}
    stage = next(s for s in recipe.stages if s.name == "distill")
    load0, t0 = load_avg(), time.perf_counter()
    extra = STAGES.get("distill").run(ctx, stage.config)
    seconds, load1 = time.perf_counter() - t0, load_avg()
    after = {k: metrics(refs[k], embed_torch(ctx.model, b)) for k, b in sets.items()}
    bytes_ = file_bytes(ctx.model, recipe_name)
    return {"recipe": recipe_name, "variant": name, "seed": seed, "distill_seed": options["seed"],
            "options": options, "file_bytes": bytes_,
            "corpus": raw["data"]["corpus"], "before": before, "after": after,
            "distill_seconds": round(seconds, 1), "steps": extra.get("steps"),
            "load_before": load0, "load_after": load1, "threads": torch.get_num_threads(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def file_bytes(model: torch.nn.Module, name: str) -> int:
    """Bytes of the model's ``.nnc`` file (written to a temporary folder)."""
    import tempfile

    import nncompress
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.nnc"
        nncompress.save(model, path, metadata={"recipe": name})
        return path.stat().st_size


def _ood(after: dict, key: str, digits: int) -> str:
    return f"{after['ood'][key]:.{digits}f}" if "ood" in after else ""


def table(rows: list[dict]) -> str:
    out = ["# MiniLM distillation variants on one one-shot model per seed", "",
           "Each row: the recipe's one-shot stages (cached per recipe seed), then its distill stage with "
           "the given options. Held-out sets, both disjoint from the "
           "calibration and distillation text: *bench* = the 500 evaluation passages of "
           "`benchmarks/minilm.py`, *test* = the first 500 of the recipe's test split; *OOD* = 500 prose "
           "paragraphs of Python's documentation (another domain; rows before it was added leave it empty). "
           "Figures in memory "
           "(the file round trip is exact, checked by the recipe runner). Machine: 2 cores shared with "
           "other jobs (load average shown); seconds are not comparable across rows.", "",
           "| recipe | variant | seed recipe/distill | edits of the recipe | file bytes | bench cos | bench top-10 | "
           "test cos | test top-10 | OOD cos | OOD top-10 | distill s | load |",
           "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        a = r["after"]
        opts = json.dumps(VARIANTS.get(r["variant"], {}))
        seeds = f"{r['seed']}/{r.get('distill_seed', r['seed'])}"
        out.append(f"| {r['recipe']} | {r['variant']} | {seeds} | `{opts}` | {r.get('file_bytes', 0):,} | "
                   f"{a['bench']['cos_mean']:.4f} | {a['bench']['top10_overlap']:.3f} | "
                   f"{a['test']['cos_mean']:.4f} | {a['test']['top10_overlap']:.3f} | "
                   f"{_ood(a, 'cos_mean', 4)} | {_ood(a, 'top10_overlap', 3)} | "
                   f"{r['distill_seconds']:.0f} | {r['load_before']}/{r['load_after']} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="minilm-8x")
    ap.add_argument("--variants", default="base,rel1", help=f"comma list of {list(VARIANTS)}")
    ap.add_argument("--seeds", default="0", help="recipe seeds (one-shot k-means init, calibration order)")
    ap.add_argument("--distill-seed", type=int, default=None, help="distillation seed (batch order; "
                    "default: the recipe seed)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cache", default="/tmp/nncompress_minilm_sweep")
    ap.add_argument("--table", action="store_true", help="only rewrite the Markdown table")
    args = ap.parse_args(argv)
    jsonl = RESULTS / "minilm_sweep.jsonl"
    if not args.table:
        torch.set_num_threads(args.threads)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import transformers
        transformers.logging.set_verbosity_error()
        unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
        if unknown:
            ap.error(f"unknown variants {unknown}; allowed: {list(VARIANTS)}")
        for seed in [int(s) for s in args.seeds.split(",")]:
            for name in args.variants.split(","):
                row = run_variant(name, args.recipe, seed, Path(args.cache), args.distill_seed)
                log.info("%s", row)
                with jsonl.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()] if jsonl.exists() else []
    (RESULTS / "minilm_sweep.md").write_text(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
