"""Benchmark (E1): efficient blocks in the model zoo on Fashion-MNIST.

Trains mobilenet-small, shufflenet-small, squeezenet-small and LeNet-5 (standard-conv
reference) with the same budget (2 epochs, SGD lr 0.05 momentum 0.9 cosine, batch 64,
seed 0), then reports params, MACs per image (conv/linear, nncompress.analysis.accounting), test accuracy,
training time and CPU latency at batch 64 and 1 (2 threads, all models timed in the same
interleaved loop, median of repeats). A second table compares one block against the
standard 3x3 conv it replaces (params, MACs, measured vs closed-form cost ratio).

    python benchmarks/efficient_blocks.py [--quick]

``--quick`` trains 150 steps per model and times fewer repeats (a smoke run; its figures
are not comparable). Writes benchmarks/results/efficient_blocks.json and .md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nncompress.analysis.accounting import layer_stats, totals
from nncompress.data import load_dataset
from nncompress.models import build_model
from nncompress.models.blocks import Bottleneck, DepthwiseSeparable, Fire, ShuffleUnit
from nncompress.models.resnet import BasicBlock
from nncompress.train import TrainConfig, evaluate, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

MODELS = ["lenet5", "mobilenet-small", "shufflenet-small", "squeezenet-small"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass (conv/linear; pooling, BN and adds not counted)."""
    return totals(layer_stats(model, x))["macs"]


def latency_ms(models: dict[str, nn.Module], batch: int, repeats: int, iters: int) -> dict[str, float]:
    """Median ms per forward pass; every repeat times all models one after another."""
    x = torch.randn(batch, 1, 28, 28)
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.no_grad():
        for m in models.values():  # warm-up
            m.eval()
            for _ in range(3):
                m(x)
        for _ in range(repeats):
            for name, m in models.items():
                t0 = time.perf_counter()
                for _ in range(iters):
                    m(x)
                times[name].append((time.perf_counter() - t0) / iters * 1e3)
    return {name: statistics.median(ts) for name, ts in times.items()}


def block_rows() -> list[dict[str, Any]]:
    """One block vs the standard conv it replaces, at stride 1 on a 14x14 map."""
    def std3x3(c: int, o: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c, o, 3, 1, 1, bias=False), nn.BatchNorm2d(o))

    c, o, m, g, s, e = 64, 128, 16, 4, 16, 64
    specs: list[tuple[str, str, Callable[[], nn.Module], int, str, nn.Module, str, float]] = [
        ("DepthwiseSeparable", f"C={c}, O={o}", lambda: DepthwiseSeparable(c, o), c,
         f"3x3 conv {c}->{o}", std3x3(c, o), "1/O + 1/9", 1 / o + 1 / 9),
        ("ShuffleUnit", f"C=O={o}, M={o // 4}, g={g}", lambda: ShuffleUnit(o, o, g, 1), o,
         f"3x3 conv {o}->{o}", std3x3(o, o), "(C*M/g + 9M + M*O/g) / (9*C*O)",
         (o * (o // 4) / g + 9 * (o // 4) + (o // 4) * o / g) / (9 * o * o)),
        ("ShuffleUnit", f"C=O={o}, M={o // 4}, g={g}", lambda: ShuffleUnit(o, o, g, 1), o,
         f"Bottleneck {o}-{o // 4}-{o} (g=1)", Bottleneck(o, o // 4, o), "(C*M/g + 9M + M*O/g) / (C*M + 9M^2 + M*O)",
         (o * (o // 4) / g + 9 * (o // 4) + (o // 4) * o / g) / (o * (o // 4) + 9 * (o // 4) ** 2 + (o // 4) * o)),
        ("Fire", f"C={c}, S={s}, E1=E3={e}", lambda: Fire(c, s, e, e), c,
         f"3x3 conv {c}->{2 * e}", std3x3(c, 2 * e), "(C*S + S*E1 + 9*S*E3) / (9*C*(E1+E3))",
         (c * s + s * e + 9 * s * e) / (9 * c * 2 * e)),
        ("Bottleneck", f"C=O={c}, M={m}", lambda: Bottleneck(c, m, c), c,
         f"3x3 conv {c}->{c}", std3x3(c, c), "(C*M + 9*M^2 + M*O) / (9*C*O)",
         (c * m + 9 * m * m + m * c) / (9 * c * c)),
        ("Bottleneck", f"C=O={c}, M={m}", lambda: Bottleneck(c, m, c), c,
         f"BasicBlock {c}-{c}-{c} (two 3x3)", BasicBlock(c, c, c), "(C*M + 9*M^2 + M*O) / (18*C*O)",
         (c * m + 9 * m * m + m * c) / (18 * c * c)),
    ]
    rows = []
    for name, cfg, make, in_ch, ref_name, ref, formula, expected in specs:
        x = torch.zeros(1, in_ch, 14, 14)
        block = make()
        b_macs, r_macs = count_macs(block, x), count_macs(ref, x)
        rows.append({
            "block": name, "config": cfg, "params": n_params(block), "macs": b_macs,
            "reference": ref_name, "ref_params": n_params(ref), "ref_macs": r_macs,
            "mac_ratio": b_macs / r_macs, "formula": formula, "formula_ratio": expected,
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="150 training steps, fewer timing repeats")
    parser.add_argument("--epochs", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    cfg = TrainConfig(epochs=args.epochs, lr=0.05, batch_size=64, seed=0,
                      max_steps=150 if args.quick else None)
    models: dict[str, nn.Module] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name in MODELS:
        torch.manual_seed(0)
        model = build_model(name)
        t0 = time.perf_counter()
        fit(model, train, cfg)
        train_s = time.perf_counter() - t0
        acc = evaluate(model, test)["accuracy"]
        models[name] = model.eval()
        rows[name] = {"params": n_params(model), "macs": count_macs(model, torch.zeros(1, 1, 28, 28)),
                      "test_accuracy": acc, "train_s": train_s}
        print(f"{name}: acc {acc:.4f}, {train_s:.0f} s", flush=True)
    reps = (3, 5) if args.quick else (15, 30)
    lat64 = latency_ms(models, 64, reps[0], 3)
    lat1 = latency_ms(models, 1, reps[1], 20)
    for name in MODELS:
        rows[name]["latency_b64_ms"] = lat64[name]
        rows[name]["latency_b1_ms"] = lat1[name]
    blocks = block_rows()
    for b in blocks:
        assert abs(b["mac_ratio"] - b["formula_ratio"]) < 1e-12, b

    budget = "150 steps (--quick)" if args.quick else f"{args.epochs:g} epochs"
    md = [f"Fashion-MNIST, each model trained for {budget}: SGD lr 0.05, momentum 0.9, cosine, "
          "batch 64, seed 0, no augmentation. Latency: eval mode, 2 threads, median of "
          f"{reps[0]} (batch 64) / {reps[1]} (batch 1) interleaved repeats.\n",
          "| model | params | MACs / image | test acc | train s | ms @ batch 64 | ms @ batch 1 |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        md.append(f"| {name} | {r['params']:,} | {r['macs']:,} | {r['test_accuracy']:.4f} | "
                  f"{r['train_s']:.0f} | {r['latency_b64_ms']:.2f} | {r['latency_b1_ms']:.3f} |")
    md += ["", "One block vs the layer(s) it replaces, stride 1 on a 14x14 map (MACs of conv/linear "
           "layers only; measured ratio = closed form exactly):\n",
           "| block | config | params | MACs | replaces | params | MACs | MAC ratio | closed form |",
           "|---|---|---:|---:|---|---:|---:|---:|---|"]
    for b in blocks:
        md.append(f"| {b['block']} | {b['config']} | {b['params']:,} | {b['macs']:,} | {b['reference']} | "
                  f"{b['ref_params']:,} | {b['ref_macs']:,} | {b['mac_ratio']:.4f} | {b['formula']} |")
    data = {"quick": args.quick, "train_config": cfg.__dict__, "models": rows, "blocks": blocks}
    write_results("efficient_blocks", data, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
