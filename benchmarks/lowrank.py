"""Benchmark: low-rank decomposition (L1-L5) of LeNet-5 on Fashion-MNIST.

A dense LeNet-5 is trained once (cached under runs/lowrank_cache/). Each method then
factorises a copy (L1 SVD on fc1 / fc1+fc2; L2 separable, L3 Tucker-2, L4 CP, L5 block
term on conv2), is evaluated right away and after one epoch of fine-tuning (lr 0.01),
saved to a .nnc file and loaded back (outputs must be identical), and timed on the CPU at
batch 64 with 2 threads (median of repeats, the dense model timed in alternation beside
each row). MACs come from nncompress.analysis.accounting (conv/linear layers) at batch 1.

    python benchmarks/lowrank.py [--quick]

Writes benchmarks/results/lowrank.json and .md (``--quick`` only prints its table).
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Subset

import nncompress
from nncompress.data import load_dataset
from nncompress.decompose import decompose
from nncompress.decompose.common import count_macs
from nncompress.models import build_model
from nncompress.train import TrainConfig, evaluate, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

log = logging.getLogger("bench.lowrank")
CACHE = Path("runs/lowrank_cache")
DENSE_CFG = TrainConfig(epochs=2, lr=0.05, batch_size=64, seed=0)
FT_CFG = TrainConfig(epochs=1, lr=0.01, batch_size=64, seed=1)
ROWS = [  # (id, label, layers, spec)
    ("L1", "SVD k=32 / k=5", "fc1, fc2", {"fc1": {"method": "svd", "rank": 32},
                                         "fc2": {"method": "svd", "rank": 5}}),
    ("L2", "separable, ratio 0.25", "conv2", {"conv2": {"method": "separable", "ratio": 0.25}}),
    ("L3", "Tucker-2, ratio 0.25", "conv2", {"conv2": {"method": "tucker2", "ratio": 0.25}}),
    ("L4", "CP, ratio 0.25", "conv2", {"conv2": {"method": "cp", "ratio": 0.25}}),
    ("L5", "BTD 2 blocks, ratio 0.25", "conv2", {"conv2": {"method": "btd", "ratio": 0.25, "groups": 2}}),
]


def macs(model: nn.Module) -> int:
    return count_macs(model, (1, 1, 28, 28))


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dense_model(train, quick: bool) -> nn.Module:
    """Train (or load from the cache) the dense LeNet-5."""
    cfg = TrainConfig(**{**DENSE_CFG.__dict__, "max_steps": 20}) if quick else DENSE_CFG
    path = CACHE / ("lenet5_dense_quick.pt" if quick else "lenet5_dense_e2_lr0.05_b64_s0.pt")
    model = build_model("lenet5")
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model
    CACHE.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    fit(model, train, cfg)
    torch.save(model.state_dict(), path)
    log.info("dense trained in %.0fs", time.perf_counter() - t0)
    return model


def latency_pair(dense: nn.Module, model: nn.Module, repeats: int, inner: int = 2) -> dict[str, float]:
    """Median and minimum ms per batch-64 forward of the dense model and ``model``, timed
    in alternation so that load from other processes hits both alike."""
    x = torch.randn(64, 1, 28, 28)
    times: dict[int, list[float]] = {0: [], 1: []}
    with torch.inference_mode():
        for m in (dense, model):
            m.eval()
            for _ in range(3):
                m(x)
        for _ in range(repeats):
            for i, m in enumerate((dense, model)):
                t0 = time.perf_counter()
                for _ in range(inner):
                    m(x)
                times[i].append((time.perf_counter() - t0) / inner * 1e3)
    return {"dense_latency_ms": statistics.median(times[0]), "latency_ms": statistics.median(times[1]),
            "dense_latency_min_ms": min(times[0]), "latency_min_ms": min(times[1])}


def run_row(dense: nn.Module, spec: dict, train, test, ft: TrainConfig, repeats: int, name: str) -> dict:
    model = copy.deepcopy(dense)
    t0 = time.perf_counter()
    _, report = decompose(model, spec, example_input=torch.zeros(1, 1, 28, 28))
    t_dec = time.perf_counter() - t0
    acc0 = evaluate(model, test)["accuracy"]
    t0 = time.perf_counter()
    fit(model, train, ft)
    t_ft = time.perf_counter() - t0
    acc1 = evaluate(model, test)["accuracy"]
    path = CACHE / f"{name}.nnc"
    info = nncompress.save(model, path)
    loaded = nncompress.load(path)
    x = test[:256][0]
    model.eval()
    with torch.no_grad():
        same = torch.equal(loaded(x), model(x))
    lat = latency_pair(dense, model, repeats)
    return {"layer_report": report.as_dict(), "params": params(model), "macs": macs(model),
            "acc_decomposed": acc0, "acc_finetuned": acc1, "file_bytes": info.file_bytes,
            "load_identical": same, **lat,
            "decompose_s": t_dec, "finetune_s": t_ft}


def to_markdown(res: dict) -> str:
    d = res["dense"]
    lines = [
        f"LeNet-5 on Fashion-MNIST ({res['test_n']} test images), dense trained {res['dense_cfg']}; "
        f"each method fine-tuned {res['ft_cfg']}. Params/MACs are whole-model (MACs per image, "
        "conv/linear MACs of nncompress.analysis.accounting); latency: ms per batch of 64 on the CPU with "
        f"{res['threads']} threads, median and minimum of {res['repeats']} repeats, dense timed in "
        "alternation beside each row (the CPU is shared, so compare a row with its own dense figure).",
        "",
        "| ID | method | layers | ranks | params | MACs | acc. decomposed | acc. fine-tuned "
        "| .nnc KB | latency ms median (dense) | min (dense) |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| - | dense | - | - | {d['params']:,} | {d['macs']:,} | {d['accuracy']:.4f} | - "
        f"| {d['file_bytes'] / 1024:.1f} | - | - |",
    ]
    for r in res["rows"]:
        ranks = "; ".join(f"{lr['name']}: {lr['ranks']}" for lr in r["layer_report"]["layers"])
        lines.append(
            f"| {r['id']} | {r['label']} | {r['layers']} | {ranks} | {r['params']:,} "
            f"({r['params'] / d['params']:.2f}x) | {r['macs']:,} ({r['macs'] / d['macs']:.2f}x) "
            f"| {r['acc_decomposed']:.4f} | {r['acc_finetuned']:.4f} | {r['file_bytes'] / 1024:.1f} "
            f"| {r['latency_ms']:.2f} ({r['dense_latency_ms']:.2f}) "
            f"| {r['latency_min_ms']:.2f} ({r['dense_latency_min_ms']:.2f}) |")
    lines += ["", "Per-layer cost of the decomposed layers (params, MACs per image):", "",
              "| ID | method | layer | params before -> after | MACs before -> after |",
              "|---|---|---|---:|---:|"]
    for r in res["rows"]:
        for lr in r["layer_report"]["layers"]:
            lines.append(f"| {r['id']} | {r['label']} | {lr['name']} | {lr['params_before']:,} -> "
                         f"{lr['params_after']:,} | {lr['macs_before']:,} -> {lr['macs_after']:,} |")
    ok = all(r["load_identical"] for r in res["rows"])
    lines += ["", f"Saved .nnc files loaded back with identical outputs: {'yes' if ok else 'NO'}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a few training steps, small test set")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    torch.manual_seed(0)
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    ft = FT_CFG
    repeats = 25
    if args.quick:
        test = Subset(test, range(1000))
        ft = TrainConfig(**{**FT_CFG.__dict__, "max_steps": 10})
        repeats = 3
    t_start = time.perf_counter()
    dense = dense_model(train, args.quick)
    CACHE.mkdir(parents=True, exist_ok=True)
    dense_info = nncompress.save(dense, CACHE / "dense.nnc")
    res = {"dense_cfg": f"epochs={DENSE_CFG.epochs}, lr={DENSE_CFG.lr}, batch={DENSE_CFG.batch_size}, "
                        f"seed={DENSE_CFG.seed}" + (" (quick: 20 steps)" if args.quick else ""),
           "ft_cfg": f"epochs={ft.epochs}, lr={ft.lr}, batch={ft.batch_size}"
                     + (f", max_steps={ft.max_steps}" if ft.max_steps else ""),
           "test_n": len(test), "threads": torch.get_num_threads(), "repeats": repeats,
           "dense": {"params": params(dense), "macs": macs(dense),
                     "accuracy": evaluate(dense, test)["accuracy"], "file_bytes": dense_info.file_bytes},
           "rows": []}
    for i, (rid, label, layers, spec) in enumerate(ROWS):
        log.info("%s %s on %s", rid, label, layers)
        row = run_row(dense, spec, train, test, ft, repeats, f"row{i}_{rid}")
        res["rows"].append({"id": rid, "label": label, "layers": layers, "spec": spec, **row})
        log.info("  acc %.4f -> %.4f, params %d, macs %d, %.2f ms (dense %.2f)", row["acc_decomposed"],
                 row["acc_finetuned"], row["params"], row["macs"], row["latency_ms"], row["dense_latency_ms"])
    res["total_s"] = time.perf_counter() - t_start
    if args.quick:  # smoke run: print, keep the committed results untouched
        print(to_markdown(res))
    else:
        write_results("lowrank", res, to_markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
