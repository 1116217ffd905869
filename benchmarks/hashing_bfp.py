"""Benchmark: block floating point weights (Q15) and HashedNets (Q13) on Fashion-MNIST.

(a) A dense LeNet-300-100 is trained once (2 epochs, lr 0.05, batch 64, seed 0; cached
under runs/hashing_cache/). Its three weight matrices are BFP-rounded (``bfp_round``,
blocks along the input dimension; biases stay fp32) at mantissa bits 4, 6, 8 and blocks of
16, 64 values or the whole tensor; test accuracy without any fine-tuning, and the exact
storage bits per weight (``b`` + 8 per block).

(b) HashedNets: LeNet-300-100 with every Linear replaced by a ``HashedLinear`` holding
1/8 or 1/64 of the layer's weights as buckets (sign hash on), trained from scratch with the
dense budget (2 epochs; at lr 0.05 as the dense net and at lr 0.01, since a bucket's
gradient sums about 1/ratio positions and lr 0.05 can diverge), beside the paper's "equivalent-size" baseline: a plain 784-h1-h2-10 net
(h1 : h2 = 3 : 1) with about as many weights as the hashed net has buckets.

    python benchmarks/hashing_bfp.py [--quick]

Writes benchmarks/results/hashing_bfp.json and .md (``--quick`` only prints its tables).
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from nncompress.data import load_dataset
from nncompress.models import build_model
from nncompress.quantize.bfp import bfp_round, bfp_storage_bits
from nncompress.quantize.hashed_arch import hash_model
from nncompress.train import TrainConfig, evaluate, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

log = logging.getLogger("bench.hashing_bfp")
CACHE = Path("runs/hashing_cache")
TRAIN_CFG = TrainConfig(epochs=2, lr=0.05, batch_size=64, seed=0)
BITS = (4, 6, 8)
BLOCKS: tuple[int | None, ...] = (16, 64, None)
RATIOS = (1 / 8, 1 / 64)
HASH_LRS = (0.05, 0.01)  # a bucket's gradient sums ~1/ratio positions: lr 0.05 can diverge at 1/64


def weight_count(model: nn.Module) -> int:
    """Real-valued weights (HashedLinear buckets count once; biases excluded)."""
    return sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def train(model: nn.Module, data, cfg: TrainConfig, cache: Path | None = None) -> tuple[nn.Module, float]:
    """Train (or load from ``cache``); returns the model and the training seconds (0 if cached)."""
    if cache is not None and cache.exists():
        model.load_state_dict(torch.load(cache, weights_only=True))
        return model, 0.0
    t0 = time.perf_counter()
    fit(model, data, cfg)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cache)
    return model, time.perf_counter() - t0


def bfp_model(dense: nn.Module, bits: int, block: int | None) -> tuple[nn.Module, int, int]:
    """A copy of ``dense`` with every weight matrix BFP-rounded; (model, stored bits, count)."""
    model = copy.deepcopy(dense)
    total_bits = count = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() >= 2:
                p.copy_(bfp_round(p, bits, block))
                total_bits += bfp_storage_bits(tuple(p.shape), bits, block)
                count += p.numel()
    return model, total_bits, count


def small_net(target_weights: int) -> nn.Module:
    """784-h1-h2-10 with h1 = 3 h2 and about ``target_weights`` weights (the paper's
    equivalent-size baseline): solve 784*3h + 3h*h + 10h = target for h."""
    a, b = 3.0, 784 * 3 + 10
    h2 = max(1, round((-b + math.sqrt(b * b + 4 * a * target_weights)) / (2 * a)))
    h1 = 3 * h2
    return nn.Sequential(nn.Flatten(), nn.Linear(784, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU(),
                         nn.Linear(h2, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 training steps per model; print only")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    cfg = TrainConfig(**{**TRAIN_CFG.__dict__, "max_steps": 20}) if args.quick else TRAIN_CFG
    tag = "quick" if args.quick else "e2_lr0.05_b64_s0"
    train_set, test_set = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")

    # (a) BFP on the dense model
    torch.manual_seed(0)
    dense, secs = train(build_model("lenet300"), train_set, cfg, CACHE / f"lenet300_dense_{tag}.pt")
    dense_acc = evaluate(dense, test_set)["accuracy"]
    log.info("dense: acc %.4f (trained in %.0fs)", dense_acc, secs)
    bfp_rows = [{"bits": 32, "block": "-", "bits_per_weight": 32.0, "accuracy": dense_acc}]
    for bits in BITS:
        for block in BLOCKS:
            model, nbits, count = bfp_model(dense, bits, block)
            acc = evaluate(model, test_set)["accuracy"]
            bfp_rows.append({"bits": bits, "block": "tensor" if block is None else block,
                             "bits_per_weight": nbits / count, "accuracy": acc})
            log.info("BFP b=%d block=%s: %.4f bits/w, acc %.4f", bits, block, nbits / count, acc)

    # (b) HashedNets from scratch vs the equivalent-size plain net
    dense_w = weight_count(dense)
    hash_rows = [{"model": "dense LeNet-300-100", "ratio": "1", "weights": dense_w,
                  "params": params(dense), "lr": cfg.lr, "accuracy": dense_acc, "train_s": secs}]
    for ratio in RATIOS:
        for lr in HASH_LRS:
            torch.manual_seed(0)
            hashed = hash_model(build_model("lenet300"), ratio=ratio, seed=0)
            hashed, hs = train(hashed, train_set, TrainConfig(**{**cfg.__dict__, "lr": lr}))
            hacc = evaluate(hashed, test_set)["accuracy"]
            k = weight_count(hashed)
            hash_rows.append({"model": "HashedNets LeNet-300-100", "ratio": f"1/{round(1 / ratio)}",
                              "weights": k, "params": params(hashed), "lr": lr, "accuracy": hacc,
                              "train_s": hs})
            log.info("ratio 1/%d lr %g: hashed acc %.4f (%d buckets)", round(1 / ratio), lr, hacc, k)
        torch.manual_seed(0)
        small = small_net(k)
        small, ss = train(small, train_set, cfg)
        sacc = evaluate(small, test_set)["accuracy"]
        shape = f"784-{small[1].out_features}-{small[3].out_features}-10"
        hash_rows.append({"model": f"equivalent-size {shape}", "ratio": f"1/{round(1 / ratio)}",
                          "weights": weight_count(small), "params": params(small), "lr": cfg.lr, "accuracy": sacc,
                          "train_s": ss})
        log.info("ratio 1/%d: small %s acc %.4f", round(1 / ratio), shape, sacc)

    md = ["## Block floating point weights (LeNet-300-100, Fashion-MNIST, no fine-tuning)", "",
          "| mantissa bits | block | bits / weight | test accuracy |", "|---:|---:|---:|---:|"]
    md += [f"| {r['bits']} | {r['block']} | {r['bits_per_weight']:.3f} | {r['accuracy']:.4f} |"
           for r in bfp_rows]
    md += ["", "## HashedNets (LeNet-300-100 trained from scratch, 2 epochs, batch 64, Fashion-MNIST)", "",
           "| model | weights kept | real weights | parameters | lr | test accuracy | train s |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['model']} | {r['ratio']} | {r['weights']:,} | {r['params']:,} | {r['lr']:g} | {r['accuracy']:.4f} "
           f"| {r['train_s']:.0f} |" for r in hash_rows]
    md.append("")
    text = "\n".join(md)
    if args.quick:
        print(text)
        return
    write_results("hashing_bfp", {"train_config": TRAIN_CFG.__dict__, "bfp": bfp_rows,
                                  "hashed": hash_rows}, text)


if __name__ == "__main__":
    main()
