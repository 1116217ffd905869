"""Benchmark: BWNH (binary weights via hashing, Q13) vs BWN (Q5) on LeNet-5 / Fashion-MNIST.

A dense LeNet-5 is trained briefly (2 epochs, SGD lr 0.01, momentum 0.9, weight decay 5e-4,
batch 64, cosine, seed 0; cached under runs/bwnh_cache/). Then all four of its layers
(conv1, conv2, fc1, fc2; BWN's default set) are binarised two ways, from the same dense
weights:

* BWN: ``alpha * sign(W)``, ``alpha = mean|W|`` per filter (``quantize_`` + the ``bwn``
  config);
* BWNH: ``bwnh_binarize`` on a calibration set of training images (layer by layer, each
  layer's inputs taken from the network with its earlier layers already binarised), then
  the same kind of QAT wrapper.

Reported: test accuracy right after binarisation (no fine-tuning) and after fine-tuning
with the same budget (1 epoch of Adam, lr 1e-3, cosine, batch 64 -- the project's QAT
default -- then ``finalize``; the finalized model is saved with ``nncompress.save``, loaded
back and re-evaluated), and per layer, on held-out training images disjoint from the
calibration set, the relative reconstruction error ``||W X - W_q X||_F / ||W X||_F``:
(a) with X the dense network's inputs to that layer (same X for both methods) and
(b) with X the binarised network's own inputs (what BWNH minimises), plus (c) the drift
of the layer's output from the dense network's ``||y_q - y||_F / ||y||_F``. A float
control gets the same fine-tuning epoch without binarisation (the 2-epoch dense net is
not converged, so the extra epoch helps any model).

    python benchmarks/bwnh.py [--quick] [--seeds 0 1]

Writes benchmarks/results/bwnh.json and .md (``--quick`` only prints its tables).
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

import nncompress.format as nnc
from nncompress.analysis.capture import capture_io
from nncompress.data import load_dataset
from nncompress.models import build_model
from nncompress.quantize import bwnh_binarize, bwnh_stats, finalize, make_config, quantize_
from nncompress.quantize.layers import is_quant_layer
from nncompress.train import TrainConfig, evaluate, fit

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

log = logging.getLogger("bench.bwnh")
CACHE = Path("runs/bwnh_cache")
DENSE_CFG = TrainConfig(epochs=2, lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=64, seed=0)
FT_CFG = TrainConfig(epochs=1.0, lr=1e-3, optimizer="adam", lr_schedule="cosine", batch_size=64)
CALIB, HELDOUT = 1024, 512  # training images: calibration set and disjoint held-out set
ITERS, SAMPLE = 10, 16384
LAYERS = ("conv1", "conv2", "fc1", "fc2")


def dense_model(train, cfg: TrainConfig, tag: str) -> tuple[nn.Module, float]:
    """Train (or load from the cache) the dense LeNet-5; returns it and the seconds spent."""
    path = CACHE / f"lenet5_dense_{tag}.pt"
    torch.manual_seed(cfg.seed)
    model = build_model("lenet5")
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model, 0.0
    t0 = time.perf_counter()
    fit(model, train, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model, time.perf_counter() - t0


def layer_io(model: nn.Module, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """(input, output) of every target layer on ``x`` (eval mode)."""
    return capture_io(model, LAYERS, x)


def _float_twin(mod: nn.Module, weight: torch.Tensor) -> nn.Module:
    """A copy of the plain layer ``mod`` with ``weight`` and no bias (to compare W X)."""
    twin = copy.deepcopy(mod)
    twin.bias = None
    with torch.no_grad():
        twin.weight = nn.Parameter(weight.detach().clone())
    return twin


@torch.no_grad()
def layer_errors(dense: nn.Module, quant: nn.Module, x: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per layer: relative ||W X - W_q X|| with the dense net's X and with the binarised
    net's own X, and the drift of the layer output from the dense net's."""
    io_d, io_q = layer_io(dense, x), layer_io(quant, x)
    res = {}
    for n in LAYERS:
        dmod, qmod = dense.get_submodule(n), quant.get_submodule(n)
        wq = qmod.quant_weight() if is_quant_layer(qmod) else qmod.weight
        f_w, f_q = _float_twin(dmod, dmod.weight), _float_twin(dmod, wq)

        def rel(a: torch.Tensor, b: torch.Tensor) -> float:
            return float(torch.linalg.norm((a - b).double()) / torch.linalg.norm(b.double()))

        xd, xq = io_d[n][0], io_q[n][0]
        res[n] = {"dense_input": rel(f_q(xd), f_w(xd)), "own_input": rel(f_q(xq), f_w(xq)),
                  "output_drift": rel(io_q[n][1], io_d[n][1])}
    return res


def finetune_and_check(model: nn.Module, train, test, cfg: TrainConfig) -> tuple[float, float, bool]:
    """Fine-tune (QAT), finalize, save + load; (accuracy, seconds, loaded == evaluated)."""
    t0 = time.perf_counter()
    fit(model, train, cfg)
    secs = time.perf_counter() - t0
    finalize(model)
    acc = evaluate(model, test)["accuracy"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.nnc"
        nnc.save(model, path)
        loaded = nnc.load(path, model=build_model("lenet5"))
    same = evaluate(loaded, test)["accuracy"] == acc
    return acc, secs, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 training steps per fit; print only")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="fine-tuning seeds")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(1)
    quick = {"max_steps": 20} if args.quick else {}
    dense_cfg = TrainConfig(**{**DENSE_CFG.__dict__, **quick})
    tag = "quick" if args.quick else "e2_lr0.01_b64_s0"
    train_set, test_set = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")

    dense, secs = dense_model(train_set, dense_cfg, tag)
    dense_acc = evaluate(dense, test_set)["accuracy"]
    log.info("dense LeNet-5: acc %.4f (trained in %.0f s)", dense_acc, secs)

    perm = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(0))
    calib = torch.stack([train_set[i][0] for i in perm[:CALIB].tolist()])
    held = torch.stack([train_set[i][0] for i in perm[CALIB:CALIB + HELDOUT].tolist()])

    runs, errors, timing = [], {}, {}
    for method in ("float", "bwn", "bwnh"):
        base = copy.deepcopy(dense)
        t0 = time.perf_counter()
        if method == "float":
            pass  # control: the same fine-tuning budget without binarisation
        elif method == "bwn":
            quantize_(base, make_config("bwn"))
        else:
            bwnh_binarize(base, calib, iters=ITERS, sample=SAMPLE, seed=0)
        timing[method] = time.perf_counter() - t0
        if method == "bwnh":
            bwnh_model = base
        acc0 = evaluate(base, test_set)["accuracy"]
        if method != "float":
            errors[method] = layer_errors(dense, base, held)
        log.info("%s: binarised in %.1f s, acc (no fine-tuning) %.4f", method, timing[method], acc0)
        for seed in args.seeds:
            model = copy.deepcopy(base)
            cfg = TrainConfig(**{**FT_CFG.__dict__, "seed": seed, **quick})
            acc1, ft_s, same = finetune_and_check(model, train_set, test_set, cfg)
            log.info("%s seed %d: acc after fine-tuning %.4f (%.0f s)", method, seed, acc1, ft_s)
            runs.append({"method": method, "seed": seed, "acc_binarised": acc0, "acc_finetuned": acc1,
                         "binarise_s": timing[method], "finetune_s": ft_s, "loaded_equals_evaluated": same})
    calib_stats = {n: {**s.__dict__, "relative": s.relative()} for n, s in bwnh_stats(bwnh_model).items()}

    md = [f"## BWN vs BWNH, LeNet-5 on Fashion-MNIST (dense: {DENSE_CFG.epochs} epochs, test acc "
          f"{dense_acc:.4f})", "",
          f"All four layers binarised from the same dense weights. BWNH: {CALIB} calibration training "
          f"images, at most {SAMPLE} input columns per layer, {ITERS} alternating iterations, layer by "
          f"layer on the already-binarised network. Fine-tuning: {FT_CFG.epochs:g} epoch of Adam "
          f"(lr {FT_CFG.lr:g}, cosine, batch {FT_CFG.batch_size}), then finalize + save/load; `float` is the "
          "control: the same fine-tuning without binarisation.", "",
          "| method | seed | acc. binarised (no FT) | acc. after FT | binarise s | FT s | loaded == evaluated |",
          "|---|---:|---:|---:|---:|---:|---|"]
    md += [f"| {r['method']} | {r['seed']} | {r['acc_binarised']:.4f} | {r['acc_finetuned']:.4f} | "
           f"{r['binarise_s']:.1f} | {r['finetune_s']:.0f} | {r['loaded_equals_evaluated']} |" for r in runs]
    md += ["", f"Per-layer relative reconstruction error ||W X - W_q X||_F / ||W X||_F on {HELDOUT} held-out "
           "training images (before fine-tuning): X from the dense net (same for both), X from the binarised "
           "net itself (what BWNH minimises), and the drift of the layer output from the dense net's.", "",
           "| layer | BWN, dense X | BWNH, dense X | BWN, own X | BWNH, own X | BWN output drift | BWNH output drift |",
           "|---|---:|---:|---:|---:|---:|---:|"]
    for n in LAYERS:
        b, h = errors["bwn"][n], errors["bwnh"][n]
        md.append(f"| {n} | {b['dense_input']:.4f} | {h['dense_input']:.4f} | {b['own_input']:.4f} | "
                  f"{h['own_input']:.4f} | {b['output_drift']:.4f} | {h['output_drift']:.4f} |")
    md += ["", "BWNH on its calibration sample (relative error, BWN's alpha*sign(W) vs BWNH):", "",
           "| layer | columns | iterations run | BWN | sign(W) + least-squares alpha | BWNH |",
           "|---|---:|---:|---:|---:|---:|"]
    for n, s in calib_stats.items():
        e = max(s["target_energy"], 1e-300)
        md.append(f"| {n} | {s['columns']} | {s['iters_run']} | {s['relative']['bwn']:.4f} | "
                  f"{(s['objective_sign_ls'] / e) ** 0.5:.4f} | {s['relative']['bwnh']:.4f} |")
    md.append("")
    text = "\n".join(md)
    if args.quick:
        print(text)
        return
    write_results("bwnh", {"dense_config": DENSE_CFG.__dict__, "finetune_config": FT_CFG.__dict__,
                           "dense_accuracy": dense_acc, "dense_train_s": secs, "calibration_images": CALIB,
                           "heldout_images": HELDOUT, "iters": ITERS, "sample": SAMPLE, "runs": runs,
                           "layer_errors": errors, "bwnh_calibration": calib_stats}, text)


if __name__ == "__main__":
    main()
