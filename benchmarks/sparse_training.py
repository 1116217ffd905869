"""Benchmark of the training-time and second-order sparsity methods (issue 4).

Fashion-MNIST, LeNet-300-100 and LeNet-5. Every method starts from the same cached dense
baseline and gets the same training budget (``BUDGET`` epochs of SGD, batch 64, cosine
LR, one thread); plain iterative prune-retrain (``nncompress.prune.iterative_prune``)
gets the same budget split over its rounds. Reported per method: test accuracy,
nonzero prunable weights, weight compression (dense weights / nonzeros), and the file
ratio after the Deep Compression stages that follow pruning (k-means sharing, 8-bit conv
/ 5-bit fc, no centroid fine-tuning; then ``nncompress.format.save`` with the default
``auto`` codecs = relative sparse indices + codebook + Huffman): file bytes / fp32 bytes
of the dense model, and the accuracy of the model loaded back from that file.
Also: one-shot 90 % per layer on LeNet-300-100 with no retraining, magnitude vs OBD vs
layer-wise OBS.

Usage:
    python benchmarks/sparse_training.py --models lenet300            # writes *_lenet300.*
    python benchmarks/sparse_training.py --models lenet5
    python benchmarks/sparse_training.py --merge                      # -> sparse_training.{json,md}
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

from nncompress.data import load_dataset
from nncompress.format import load as nnc_load
from nncompress.format import save as nnc_save
from nncompress.models import build_model
from nncompress.prune import iterative_prune, prunable_weights
from nncompress.prune.magnitude import magnitude_prune
from nncompress.prune.obd import obd_prune
from nncompress.prune.obs import obs_prune
from nncompress.prune.sparse_train import sparse_train
from nncompress.quantize import SharingConfig, share_weights
from nncompress.train import TrainConfig, evaluate, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_text_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
CACHE = Path(os.environ.get("NNC_SPARSE_CACHE", "/tmp/nnc_sparse"))
log = logging.getLogger("sparse_training")

DENSE = {  # dense baseline training, cached
    "lenet300": TrainConfig(epochs=20, lr=0.05, batch_size=64, momentum=0.9, weight_decay=1e-4, seed=0),
    "lenet5": TrainConfig(epochs=10, lr=0.01, batch_size=64, momentum=0.9, weight_decay=1e-4, seed=0),
}
BUDGET = {"lenet300": 10.0, "lenet5": 5.0}  # epochs of training every method gets
# per-layer sparsity targets shared by all unstructured methods (and GSM's Q = their total)
TARGET = {
    "lenet300": {"fc1.weight": 0.965, "fc2.weight": 0.9, "fc3.weight": 0.7},
    "lenet5": {"conv1.weight": 0.6, "conv2.weight": 0.9, "fc1.weight": 0.99, "fc2.weight": 0.9},
}
ROUNDS = 4  # prune-retrain rounds for iterative / obd / obs
HYPER = {  # method-specific settings (GSM's optimizer, SSL's lambda, C-SGD's centripetal strength, DNS)
    "lenet300": {"gsm_cfg": {"momentum": 0.98, "weight_decay": 4e-3}, "ssl_strength": 1e-3, "csgd_eps": 0.5},
    "lenet5": {"gsm_cfg": {"momentum": 0.98, "weight_decay": 2e-3}, "ssl_strength": 2e-3, "csgd_eps": 0.5,
               # DNS: a deeper initial cut than TARGET (splicing brings weights back), weight
               # decay 2e-3 on the dense weights (it decides how many pruned weights grow past
               # the splice threshold), masks frozen after 2/3 of the budget
               "dns": {"sparsity": {"conv1.weight": 0.6, "conv2.weight": 0.93, "fc1.weight": 0.995,
                                    "fc2.weight": 0.92}, "weight_decay": 2e-3, "stop_frac": 2 / 3}},
}


def rounds_of(target: dict[str, float], k: int) -> list[dict[str, float]]:
    """k rounds of per-layer sparsity rising geometrically in density to ``target``."""
    return [{n: 1 - (1 - s) ** ((i + 1) / k) for n, s in target.items()} for i in range(k)]


def cfg_for(epochs: float, **over) -> TrainConfig:
    base = dict(epochs=epochs, lr=0.01, batch_size=64, momentum=0.9, weight_decay=1e-4, seed=1)
    base.update(over)
    return TrainConfig(**base)


def dense_baseline(name: str, train, test) -> tuple[torch.nn.Module, float, dict]:
    cfg = DENSE[name]
    path = CACHE / f"{name}_dense_e{int(cfg.epochs)}_lr{cfg.lr}.pt"
    model = build_model(name)
    if path.exists():
        state = torch.load(path, weights_only=True)
        model.load_state_dict(state["state"])
        secs = float(state.get("seconds", 0))
    else:
        torch.manual_seed(0)
        t = time.perf_counter()
        fit(model, train, cfg)
        secs = time.perf_counter() - t
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save({"state": model.state_dict(), "seconds": secs}, path)
    acc = evaluate(model, test)["accuracy"]
    return model, acc, {"epochs": cfg.epochs, "lr": cfg.lr, "cache": str(path), "train_seconds": secs}


def weight_stats(model: torch.nn.Module, dense_weights: int) -> dict:
    ws = prunable_weights(model)
    nnz = sum(int((w != 0).sum()) for w in ws.values())
    return {"nonzero_weights": nnz, "weights_now": sum(w.numel() for w in ws.values()),
            "params_now": sum(p.numel() for p in model.parameters()),
            "compression": dense_weights / max(nnz, 1),
            "layer_density": {n: round(float((w != 0).float().mean()), 5) for n, w in ws.items()}}


def deep_compression_file(model: torch.nn.Module, test, dense_fp32_bytes: int) -> dict:
    """k-means sharing (8/5 bits, no fine-tuning) + save with the default codecs."""
    m = copy.deepcopy(model)
    share_weights(m, SharingConfig(bits_conv=8, bits_fc=5))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.nnc"
        info = nnc_save(m, path)
        size = path.stat().st_size
        skeleton = copy.deepcopy(m)
        loaded = nnc_load(path, model=skeleton)
    acc = evaluate(loaded, test)["accuracy"]
    return {"file_bytes": size, "fp32_bytes": dense_fp32_bytes, "file_ratio": dense_fp32_bytes / size,
            "accuracy_after_sharing_and_load": acc, "save_info_bytes": getattr(info, "file_bytes", size)}


def run_dns(model, train, budget: float, target: dict[str, float], dns: dict):
    """P5 with the model's DNS settings: its own initial cut (``sparsity``; the final
    sparsity drifts from it as weights are spliced back), weight decay, and the share of the
    budget after which the masks freeze (the rest fine-tunes the fixed masks)."""
    cfg = cfg_for(budget, weight_decay=dns.get("weight_decay", 1e-4))
    steps = budget * math.ceil(len(train) / cfg.batch_size)
    stop = None if dns.get("stop_frac") is None else int(dns["stop_frac"] * steps)
    return sparse_train(model, "dns", train, cfg, sparsity=dns.get("sparsity", target), gamma=1e-4, power=1.0,
                        stop_step=stop)


def run_model(name: str, methods: list[str], train, test, budget: float | None = None) -> dict:
    budget = BUDGET[name] if budget is None else budget
    dense, dense_acc, dense_info = dense_baseline(name, train, test)
    dense_weights = sum(w.numel() for w in prunable_weights(dense).values())
    dense_fp32 = 4 * sum(p.numel() for p in dense.parameters())
    target = TARGET[name]
    nnz_target = sum(round((1 - s) * dense.get_submodule(n.rsplit(".", 1)[0]).weight.numel())
                     for n, s in target.items())
    out = {"model": name, "dense_accuracy": dense_acc, "dense": dense_info, "dense_weights": dense_weights,
           "budget_epochs": budget, "target_layer_sparsity": target, "target_nonzeros": nnz_target,
           "rows": []}
    hp = HYPER[name]
    out["hyper"] = hp
    specs = {
        "dns (P5)": lambda m: run_dns(m, train, budget, target, hp.get("dns", {})),
        "iterative (P2)": lambda m: iterative_prune(m, train, rounds_of(target, ROUNDS),
                                                    cfg_for(budget / ROUNDS)).masks,
        "gradual (P4)": lambda m: sparse_train(m, "gradual", train, cfg_for(budget), final_sparsity=target,
                                               start=0.0, end=0.6, n_events=20),
        "obd+retrain (S10)": lambda m: sparse_train(m, "obd", train, cfg_for(budget), rounds=rounds_of(target, ROUNDS),
                                                    n_samples=2048),
        "obs+retrain (S10)": lambda m: sparse_train(m, "obs", train, cfg_for(budget), rounds=rounds_of(target, ROUNDS),
                                                    n_samples=2048),
        "gsm (S12)": lambda m: sparse_train(m, "gsm", train, cfg_for(budget, **hp["gsm_cfg"]), q=nnz_target),
        "ssl (S11)": lambda m: sparse_train(m, "ssl", train, cfg_for(budget), strength=hp["ssl_strength"],
                                            kinds=("filter", "channel"), eps=1e-2),
        "csgd (S13)": lambda m: sparse_train(m, "csgd", train, cfg_for(budget), ratio=0.5, eps=hp["csgd_eps"]),
    }
    for key, fn in specs.items():
        if methods and key.split(" ")[0] not in methods:
            continue
        m = copy.deepcopy(dense)
        torch.manual_seed(0)
        t = time.perf_counter()
        res = fn(m)
        secs = time.perf_counter() - t
        model = res.model if hasattr(res, "model") else m
        acc = evaluate(model, test)["accuracy"]
        row = {"method": key, "accuracy": acc, "delta_pt": 100 * (acc - dense_acc), "seconds": secs,
               **weight_stats(model, dense_weights)}
        if hasattr(res, "info"):
            row["info"] = json.loads(json.dumps(res.info, default=lambda o: o.tolist() if torch.is_tensor(o) else str(o)))
        row.update(deep_compression_file(model, test, dense_fp32))
        out["rows"].append(row)
        print(f"{name} {key}: acc {acc:.4f} ({row['delta_pt']:+.2f} pt), nnz {row['nonzero_weights']} "
              f"({row['compression']:.1f}x), file ratio {row['file_ratio']:.1f}x, {secs:.0f}s", flush=True)
    if name == "lenet300" and (not methods or "oneshot" in methods):
        out["oneshot_90"] = oneshot(dense, train, test)
    return out


def oneshot(dense, train, test) -> dict:
    """One-shot 90 %, no retraining: magnitude vs OBD vs layer-wise OBS (per layer unless
    marked global)."""
    res = {}
    for key, fn in {
        "magnitude": lambda m: magnitude_prune(m, sparsity=0.9),
        "magnitude (global)": lambda m: magnitude_prune(m, sparsity=0.9, scope="global"),
        "obd (empirical Fisher, 2048 samples)": lambda m: obd_prune(m, train, 0.9, n_samples=2048),
        "obd (true Fisher, labels from the model)": lambda m: obd_prune(m, train, 0.9, n_samples=2048,
                                                                          labels="model"),
        "obd (Hutchinson, 4 probes)": lambda m: obd_prune(m, train, 0.9, n_samples=2048,
                                                          estimator="hutchinson", probes=4),
        "obd (empirical Fisher, global)": lambda m: obd_prune(m, train, 0.9, n_samples=2048, scope="global"),
        "obd (layer-wise Hessian diagonal, 2048 samples)": lambda m: obd_prune(m, train, 0.9, n_samples=2048,
                                                                                 estimator="layerwise"),
        "obd (layer-wise Hessian diagonal, 8192 samples)": lambda m: obd_prune(m, train, 0.9, n_samples=8192,
                                                                                 estimator="layerwise"),
        "obs layer-wise (2048 samples, block 128)": lambda m: obs_prune(m, train, 0.9, n_samples=2048),
    }.items():
        m = copy.deepcopy(dense)
        t = time.perf_counter()
        masks = fn(m)
        secs = time.perf_counter() - t
        acc = evaluate(m, test)["accuracy"]
        res[key] = {"accuracy": acc, "sparsity": masks.total_sparsity(), "seconds": secs}
        print(f"one-shot 90% {key}: acc {acc:.4f} ({secs:.1f}s)", flush=True)
    return res


def markdown(runs: list[dict], meta: dict) -> str:
    lines = ["# Sparse training benchmark (issue 4)", "",
             f"Command: `{meta['command']}`; torch {meta['torch']}, {meta['threads']} thread(s).", "",
             "Every method starts from the cached dense baseline and trains for the stated budget "
             "(SGD, batch 64, lr 0.01 cosine, momentum 0.9, wd 1e-4; GSM's momentum/wd, SSL's lambda and "
             "C-SGD's centripetal eps and DNS's initial cut / weight decay / mask freeze per model in 'Method "
             "settings'). Unstructured methods share the per-layer "
             "sparsity target (GSM: the same total Q, global); DNS's final sparsity drifts from its initial cut "
             "(spliced weights). SSL and C-SGD remove neurons/filters physically ('params now'). "
             "Iterative / OBD / OBS prune-retrain: 4 rounds, budget split evenly. "
             "File ratio = fp32 bytes of the dense model / bytes of the `.nnc` file after 8/5-bit "
             "k-means sharing (no centroid fine-tuning) and the default codecs; "
             "'acc (file)' is the accuracy of the model loaded back from that file.", ""]
    for run in runs:
        hyper = run.get("hyper", HYPER.get(run["model"], {}))
        lines += [f"## {run['model']} (dense accuracy {100 * run['dense_accuracy']:.2f} %, "
                  f"{run['dense_weights']} weights, budget {run['budget_epochs']} epochs, "
                  f"target nonzeros {run['target_nonzeros']})", "",
                  f"Method settings: {json.dumps(hyper)}", "",
                  "| method | accuracy % | delta pt | nonzero weights | weight compression | params now "
                  "| file ratio | acc (file) % | seconds |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in run["rows"]:
            lines.append(f"| {r['method']} | {100 * r['accuracy']:.2f} | {r['delta_pt']:+.2f} | "
                         f"{r['nonzero_weights']} | {r['compression']:.1f}x | {r['params_now']} | "
                         f"{r['file_ratio']:.1f}x | {100 * r['accuracy_after_sharing_and_load']:.2f} | "
                         f"{r['seconds']:.0f} |")
        if "oneshot_90" in run:
            lines += ["", "One-shot 90 % (per layer unless marked global), no retraining:", "",
                      "| criterion | accuracy % | sparsity | seconds |", "|---|---|---|---|"]
            for k, v in run["oneshot_90"].items():
                lines.append(f"| {k} | {100 * v['accuracy']:.2f} | {v['sparsity']:.4f} | {v['seconds']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["lenet300", "lenet5"])
    ap.add_argument("--methods", nargs="*", default=[],
                    help="subset of: iterative gradual dns obd+retrain obs+retrain gsm ssl csgd oneshot")
    ap.add_argument("--merge", action="store_true", help="merge the per-model result files")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=None,
                    help="training epochs for every method (default: the per-model BUDGET); results go to "
                         "sparse_training_<model>_e<budget>.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    meta = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "torch": torch.__version__,
            "threads": torch.get_num_threads()}
    if args.merge:
        runs, metas = [], []
        files = [q for name in ("lenet300", "lenet5") for q in
                 [RESULTS / f"sparse_training_{name}.json", *sorted(RESULTS.glob(f"sparse_training_{name}_e*.json"))]]
        for p in files:
            if p.exists():
                d = json.loads(p.read_text())
                runs += d["runs"]
                metas.append(d["meta"])
        merged_meta = {"command": "; ".join(m["command"] for m in metas) + f"; {meta['command']}",
                       "torch": meta["torch"], "threads": metas[0]["threads"] if metas else meta["threads"]}
        write_text_atomic(RESULTS / "sparse_training.json", json.dumps({"meta": merged_meta, "runs": runs}, indent=1))
        write_text_atomic(RESULTS / "sparse_training.md", markdown(runs, merged_meta))
        print(f"wrote {RESULTS / 'sparse_training.json'} and .md")
        return
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    runs = [run_model(n, args.methods, train, test, args.budget) for n in args.models]
    tag = "_".join(args.models) + ("" if args.budget is None else f"_e{args.budget:g}")
    old_path = RESULTS / f"sparse_training_{tag}.json"
    if args.methods and old_path.exists():  # a partial re-run replaces only its own rows
        old = json.loads(old_path.read_text())
        for run, prev in zip(runs, old["runs"]):
            done = {r["method"] for r in run["rows"]}
            order = [r["method"] for r in prev["rows"]] + [m for m in done if m not in
                                                           {r["method"] for r in prev["rows"]}]
            rows = {r["method"]: r for r in prev["rows"]} | {r["method"]: r for r in run["rows"]}
            run["rows"] = [rows[m] for m in order]
            if "oneshot_90" in prev and "oneshot_90" not in run:
                run["oneshot_90"] = prev["oneshot_90"]
        meta["command"] = old["meta"]["command"] + "; " + meta["command"]
    write_text_atomic(RESULTS / f"sparse_training_{tag}.json", json.dumps({"meta": meta, "runs": runs}, indent=1))
    write_text_atomic(RESULTS / f"sparse_training_{tag}.md", markdown(runs, meta))
    print(f"wrote {RESULTS / f'sparse_training_{tag}.json'} and .md")


if __name__ == "__main__":
    main()
