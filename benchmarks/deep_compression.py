"""Deep Compression end to end on Fashion-MNIST, for LeNet-300-100 and LeNet-5, beside a
peer pipeline assembled from maintained libraries, in the same run:

* nncompress: the built-in recipes (train, iterative magnitude pruning with retraining,
  k-means sharing with centroid fine-tuning, relative indices + Huffman, ``.nnc`` file),
  accuracy measured on the model loaded back from the file.
* peer: the same dense model, ``torch.nn.utils.prune.l1_unstructured`` with the same
  per-layer sparsity schedule and retraining budget, scikit-learn ``KMeans`` (defaults,
  same number of clusters) on the nonzeros, ``dahuffman`` for the cluster indices, CSR
  indices (int16/int32) for positions, biases fp32; stored with ``numpy.savez`` (no
  pickle) and measured on disk. Peers have no centroid fine-tuning.

Usage: python benchmarks/deep_compression.py [--models lenet300 lenet5] [--threads 2] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import io
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402

from nncompress.analysis.file_table import table_markdown  # noqa: E402
from nncompress.prune.targets import prunable_weights  # noqa: E402
from nncompress.recipes import load_recipe  # noqa: E402
from nncompress.recipes.runner import run_recipe  # noqa: E402
from nncompress.recipes.stages import normalise_layer_map  # noqa: E402
from nncompress.train import evaluate, fit  # noqa: E402
from nncompress.train.soup import soup_fit  # noqa: E402

RECIPES = {"lenet300": "deep-compression-lenet300", "lenet5": "deep-compression-lenet5"}


def peer_prune(model: nn.Module, ctx, schedule, retrain, final_retrain=None, final_soup: int = 1) -> None:
    """torch.nn.utils.prune, round by round, retraining with the same budget as ours
    (``final_soup``: the final retraining as the same uniform soup as ours; torch's
    ``weight_orig`` and ``weight_mask`` are averaged, the masks being equal)."""
    import torch.nn.utils.prune as tprune

    weights = prunable_weights(model)
    modules = {n: model.get_submodule(n.rsplit(".", 1)[0]) for n in weights}
    done = dict.fromkeys(weights, 0.0)
    for target in schedule:
        target = normalise_layer_map(ctx, target, "schedule")
        for name, mod in modules.items():
            s = target.get(name, target.get("default", 0.0)) if isinstance(target, dict) else float(target)
            amount = (s - done[name]) / (1.0 - done[name]) if s > done[name] else 0.0
            n_left = round((1.0 - done[name]) * mod.weight.numel())
            tprune.l1_unstructured(mod, "weight", amount=int(round(amount * n_left)))
            done[name] = s
        # Retrain: torch's reparametrisation keeps the effective weight masked.
        fit(model, ctx.train_data, retrain)
    if final_retrain is not None:
        soup_fit(model, ctx.train_data, final_retrain, final_soup)
    for mod in modules.values():
        tprune.remove(mod, "weight")


def peer_share_and_store(model: nn.Module, bits: dict[str, int], path: Path) -> dict:
    """scikit-learn KMeans per layer + dahuffman indices + CSR positions -> .npz bytes."""
    from dahuffman import HuffmanCodec
    from sklearn.cluster import KMeans

    arrays: dict[str, np.ndarray] = {}
    t_kmeans = t_huff = 0.0
    with torch.no_grad():
        for name, w in prunable_weights(model).items():
            w2 = w.detach().reshape(w.shape[0], -1).numpy()
            rows, cols = np.nonzero(w2)
            vals = w2[rows, cols].reshape(-1, 1).astype(np.float64)
            k = min(2 ** bits[name], len(np.unique(vals)))
            t0 = time.perf_counter()
            km = KMeans(n_clusters=k, random_state=0).fit(vals)
            t_kmeans += time.perf_counter() - t0
            labels = km.labels_
            codebook = km.cluster_centers_.ravel().astype(np.float32)
            w2[rows, cols] = codebook[labels]
            w.copy_(torch.from_numpy(w2).reshape(w.shape))
            t0 = time.perf_counter()
            codec = HuffmanCodec.from_data(labels.tolist())
            coded = codec.encode(labels.tolist())
            t_huff += time.perf_counter() - t0
            freqs = np.bincount(labels, minlength=k)
            indptr = np.searchsorted(rows, np.arange(w2.shape[0] + 1)).astype(np.int32)
            idx_dtype = np.int16 if w2.shape[1] < 2**15 else np.int32
            arrays[f"{name}.codebook"] = codebook
            arrays[f"{name}.labels_huffman"] = np.frombuffer(coded, dtype=np.uint8)
            arrays[f"{name}.label_freqs"] = freqs.astype(np.int32)  # to rebuild the code
            arrays[f"{name}.indptr"] = indptr
            arrays[f"{name}.indices"] = cols.astype(idx_dtype)
    for name, t in model.state_dict().items():
        if name not in arrays and not name.endswith("weight"):
            arrays[name] = t.numpy()
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return {"file_bytes": path.stat().st_size, "kmeans_seconds": t_kmeans, "huffman_seconds": t_huff}


def bench_model(model_name: str, outdir: Path, seed: int | None = None) -> dict:
    """Ours and the peer on one model; ``seed`` replaces the recipe's seed (the dense
    model's initialisation and everything drawn from the recipe seed), and the peer
    branches from that seed's dense model."""
    recipe = load_recipe(RECIPES[model_name])
    if seed is not None:
        recipe = dataclasses.replace(recipe, seed=seed)
    stem = model_name if seed is None else f"{model_name}-seed{seed}"
    prune_cfg = next(s.config for s in recipe.stages if s.name == "prune")
    quant_cfg = next(s.config.quantizer for s in recipe.stages if s.name == "quantize")  # KMeansConfig
    branch: dict = {}

    def hook(stage: str, ctx) -> None:
        if stage == "train":
            branch["model"] = copy.deepcopy(ctx.model)
            branch["ctx"] = ctx

    t0 = time.perf_counter()
    ours = run_recipe(recipe, outdir / f"{stem}.nnc", outdir / f"report-{stem}",
                      command=f"benchmarks/deep_compression.py ({recipe.name})", stage_hook=hook)
    ours_seconds = time.perf_counter() - t0
    ctx, peer = branch["ctx"], branch["model"]
    t0 = time.perf_counter()
    peer_prune(peer, ctx, prune_cfg.schedule, prune_cfg.retrain, prune_cfg.final_retrain, prune_cfg.final_soup)
    acc_pruned = evaluate(peer, ctx.test_data)["accuracy"]
    bits = {n: (quant_cfg.bits_conv if w.dim() > 2 else quant_cfg.bits_fc)
            for n, w in prunable_weights(peer).items()}
    stored = peer_share_and_store(peer, bits, outdir / f"{stem}-peer.npz")
    peer_acc = evaluate(peer, ctx.test_data)["accuracy"]
    peer_seconds = time.perf_counter() - t0
    s = ours["summary"]
    dense_bytes = s["dense_fp32_bytes"]
    nz_peer = sum(int((w != 0).sum()) for w in prunable_weights(peer).values())
    return {
        "model": model_name,
        "recipe": recipe.name,
        "seed": recipe.seed,
        "dense_accuracy": s["dense_accuracy"],
        "dense_fp32_bytes": dense_bytes,
        "ours": {"accuracy": s["compressed_accuracy"], "file_bytes": s["file_bytes"],
                 "ratio": s["ratio"], "nonzero_weights": s["nonzero_weights"],
                 "seconds": ours_seconds, "stages": ours["stages"], "table": ours["table"]},
        "peer": {"accuracy": peer_acc, "accuracy_after_pruning": acc_pruned,
                 "file_bytes": stored["file_bytes"], "ratio": dense_bytes / stored["file_bytes"],
                 "nonzero_weights": nz_peer, "seconds": peer_seconds,
                 "kmeans_seconds": stored["kmeans_seconds"], "huffman_seconds": stored["huffman_seconds"]},
    }


def _after_pruning(row: dict) -> float:
    return next(st["accuracy"] for st in row["ours"]["stages"] if st["stage"] == "prune")


def seed_summary(rows: list[dict]) -> list[str]:
    """Mean (min..max) over seeds of each model's accuracies and ratios, and in how many
    seeds ours is at least as accurate as the peer."""
    out = ["", "Over seeds (mean, min..max):", "",
           "| model | seeds | dense acc | ours after pruning | ours acc | ours ratio | peer after pruning | peer acc |"
           " peer ratio | seeds ours >= peer acc |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def stat(vals: list[float], pct: bool = True) -> str:
        f = (lambda v: f"{100 * v:.2f}%") if pct else (lambda v: f"{v:.1f}x")
        return f"{f(sum(vals) / len(vals))} ({f(min(vals))}..{f(max(vals))})"

    for model in dict.fromkeys(r["model"] for r in rows):
        rs = [r for r in rows if r["model"] == model]
        wins = sum(r["ours"]["accuracy"] >= r["peer"]["accuracy"] for r in rs)
        out.append(f"| {model} | {', '.join(str(r['seed']) for r in rs)} | "
                   f"{stat([r['dense_accuracy'] for r in rs])} | {stat([_after_pruning(r) for r in rs])} | "
                   f"{stat([r['ours']['accuracy'] for r in rs])} | {stat([r['ours']['ratio'] for r in rs], False)} | "
                   f"{stat([r['peer']['accuracy_after_pruning'] for r in rs])} | {stat([r['peer']['accuracy'] for r in rs])} | "
                   f"{stat([r['peer']['ratio'] for r in rs], False)} | {wins} of {len(rs)} |")
    return out


def markdown(rows: list[dict]) -> str:
    out = ["# Deep Compression on Fashion-MNIST: nncompress vs a peer pipeline (same run)", "",
           "Peer = torch.nn.utils.prune (same schedule and retraining) + scikit-learn KMeans + "
           "dahuffman + CSR, saved with numpy.savez. Ratios are file bytes vs dense fp32 "
           "weights+biases.", "",
           "| model | dense acc | ours acc | ours bytes | ours ratio | peer acc | peer bytes | peer ratio |",
           "|---|---:|---:|---:|---:|---:|---:|---:|"]
    many = len({r.get("seed") for r in rows}) > 1
    for r in rows:
        o, p = r["ours"], r["peer"]
        label = f"{r['model']} (seed {r['seed']})" if many else r["model"]
        out.append(f"| {label} | {100 * r['dense_accuracy']:.2f}% | {100 * o['accuracy']:.2f}% | "
                   f"{o['file_bytes']:,} | **{o['ratio']:.1f}x** | {100 * p['accuracy']:.2f}% | "
                   f"{p['file_bytes']:,} | {p['ratio']:.1f}x |")
    if many:
        out += seed_summary(rows)
    shown = set()
    for r in rows:
        if r["model"] in shown:  # the per-layer table of each model's first seed
            continue
        shown.add(r["model"])
        out += ["", f"## {r['model']}: per-layer table (nncompress, from the file's bytes)", "",
                table_markdown(r["ours"]["table"])]
        out += ["| stage | seconds | test accuracy after |", "|---|---:|---:|"]
        out += [f"| {st['stage']} | {st['seconds']:.1f} | {100 * st['accuracy']:.2f}% |"
                for st in r["ours"]["stages"]]
    return "\n".join(out) + "\n"


def combine(name: str, paths: list[Path]) -> None:
    """One result file from the rows of several earlier runs (each keeps its own command and
    environment in ``sources``), e.g. seeds 0-2 and 3-4 into seeds 0-4."""
    import json

    if not paths:
        raise SystemExit("--combine needs NAME and at least one result JSON")
    runs = [json.loads(p.read_text()) for p in paths]
    rows = [r for run in runs for r in run["models"]]
    seeds = [(r["model"], r["seed"]) for r in rows]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--combine: a (model, seed) pair appears twice in {[str(p) for p in paths]}")
    sources = [{"file": p.name, "command": run["environment"]["command"]} for p, run in zip(paths, runs)]
    md = ("Combined (`--combine`, no training) from: "
          + "; ".join(f"`{s['file']}` (`{s['command']}`)" for s in sources) + "\n\n" + markdown(rows))
    write_results(name, {"sources": sources, "models": rows}, md)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--outdir", default=str(RESULTS / "deep_compression"))
    ap.add_argument("--seeds", nargs="+", type=int, metavar="SEED",
                    help="run each model with these recipe seeds (default: the recipe's own) and"
                         " report the mean over them beside every seed's row")
    ap.add_argument("--render", nargs="+", metavar="JSON",
                    help="only re-render the Markdown of earlier result files (no training)")
    ap.add_argument("--combine", nargs="+", metavar=("NAME", "JSON"),
                    help="write results NAME.json/.md with the rows of earlier result files (e.g. two"
                         " seed runs) and their mean table (no training)")
    args = ap.parse_args()
    if args.combine:
        combine(args.combine[0], [Path(p) for p in args.combine[1:]])
        return
    if args.render:
        import json

        for path in args.render:
            data = json.loads(Path(path).read_text())
            md = Path(path).with_suffix(".md")
            head = md.read_text().split("\n", 1)[0] + "\n\n" if md.exists() else ""
            md.write_text(head + markdown(data["models"]))
            print(f"re-rendered {md}")
        return
    torch.set_num_threads(args.threads)
    outdir = Path(args.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for m in args.models:
        for seed in args.seeds or [None]:
            rows.append(bench_model(m, outdir, seed))
            print(f"{m} (seed {rows[-1]['seed']}): ours {rows[-1]['ours']['ratio']:.1f}x at "
                  f"{100 * rows[-1]['ours']['accuracy']:.2f}%, peer {rows[-1]['peer']['ratio']:.1f}x at "
                  f"{100 * rows[-1]['peer']['accuracy']:.2f}%", flush=True)
    name = "deep_compression" if len(args.models) == len(RECIPES) else "deep_compression_" + "_".join(args.models)
    if args.seeds:
        name += "_seeds" + "-".join(map(str, args.seeds))
    write_results(name, {"models": rows}, markdown(rows))


if __name__ == "__main__":
    main()
