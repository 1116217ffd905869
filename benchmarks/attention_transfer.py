"""K2 attention transfer vs K1 knowledge distillation vs plain training (Fashion-MNIST).

Run from the repository root::

    python benchmarks/attention_transfer.py            # the full run (a few minutes on 2 cores)
    python benchmarks/attention_transfer.py --quick    # smoke run: a few steps, nothing cached

Teacher: the ResNet-20-style net (widths 16-32-64), trained once and cached under
``runs/at_cache/``. Student: the same net at half width (8-16-32), trained with the same
budget and seed under (a) cross-entropy, (b) K1 KD (alpha 0.5, T 4), (c) KD + attention
transfer on the outputs of the three stages (``layers.2`` 28x28, ``layers.5`` 14x14,
``layers.8`` 7x7; beta 1e3, p 2, the squared L2 distance of normalised maps averaged over
batch and map elements). Test accuracy on the 10,000 test images.

Writes ``benchmarks/results/attention_transfer.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results

from nncompress.data import load_dataset
from nncompress.distill import AttentionTransferLoss, DistillConfig, distillation_loss_fn
from nncompress.models import build_model
from nncompress.train import TrainConfig, evaluate, fit

log = logging.getLogger("attention_transfer")
CACHE = Path("runs/at_cache")
TEACHER_WIDTHS = (16, 32, 64)
STUDENT_WIDTHS = (8, 16, 32)
PAIRS = [("layers.2", "layers.2"), ("layers.5", "layers.5"), ("layers.8", "layers.8")]


def teacher_model(train, cfg: TrainConfig, quick: bool) -> tuple[torch.nn.Module, float]:
    """Train (or load from the cache) the teacher; returns it and its training seconds."""
    model = build_model("resnet20", widths=TEACHER_WIDTHS)
    path = CACHE / f"teacher_resnet20_e{cfg.epochs:g}_lr{cfg.lr:g}_s{cfg.seed}.pt"
    if not quick and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model, 0.0
    t0 = time.perf_counter()
    fit(model, train, cfg)
    if not quick:
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 steps, 1000 test images")
    ap.add_argument("--teacher-epochs", type=float, default=2.0)
    ap.add_argument("--student-epochs", type=float, default=2.0)
    ap.add_argument("--beta", type=float, default=1000.0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(2)
    train, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    steps = 20 if args.quick else None
    if args.quick:
        test = torch.utils.data.Subset(test, range(1000))
    tcfg = TrainConfig(epochs=args.teacher_epochs, lr=0.05, batch_size=64, weight_decay=5e-4,
                       seed=args.seed, max_steps=steps)
    scfg = TrainConfig(epochs=args.student_epochs, lr=0.05, batch_size=64, weight_decay=5e-4,
                       seed=args.seed, max_steps=steps)
    teacher, t_sec = teacher_model(train, tcfg, args.quick)
    t_acc = evaluate(teacher, test)["accuracy"]
    log.info("teacher accuracy %.4f (%.0fs)", t_acc, t_sec)
    kd = DistillConfig(alpha=0.5, temperature=4.0)
    rows = []
    for method in ("CE", "KD", "KD+AT"):
        torch.manual_seed(args.seed)  # the same student initialisation for every method
        student = build_model("resnet20", widths=STUDENT_WIDTHS)
        t0 = time.perf_counter()
        if method == "CE":
            fit(student, train, scfg)
        elif method == "KD":
            fit(student, train, scfg, loss_fn=distillation_loss_fn(teacher, kd.alpha, kd.temperature))
        else:
            with AttentionTransferLoss(student, teacher, PAIRS, beta=args.beta, kd=kd) as loss_fn:
                fit(student, train, scfg, loss_fn=loss_fn)
        sec = time.perf_counter() - t0
        acc = evaluate(student, test)["accuracy"]
        log.info("%s: accuracy %.4f (%.0fs)", method, acc, sec)
        rows.append({"method": method, "test_accuracy": acc, "train_seconds": sec})
    n_params = {
        "teacher": sum(p.numel() for p in teacher.parameters()),
        "student": sum(p.numel() for p in build_model("resnet20", widths=STUDENT_WIDTHS).parameters()),
    }
    md = [
        "## K2 attention transfer (Fashion-MNIST)\n",
        f"Teacher: ResNet-20-style {TEACHER_WIDTHS} ({n_params['teacher']:,} params), "
        f"{tcfg.epochs:g} epochs, test accuracy **{t_acc:.4f}**. "
        f"Student: same net at widths {STUDENT_WIDTHS} ({n_params['student']:,} params), "
        f"{scfg.epochs:g} epoch(s) of SGD (lr {scfg.lr:g}, cosine, batch {scfg.batch_size}, "
        f"seed {scfg.seed}) for every method"
        + (f", capped at {steps} steps (--quick)" if steps else "") + ".\n",
        f"KD: alpha {kd.alpha}, T {kd.temperature:g}. AT: pairs {', '.join(s for s, _ in PAIRS)} "
        f"(stage outputs, 28x28 / 14x14 / 7x7), p 2, beta {args.beta:g}, squared L2 distance of "
        "L2-normalised maps averaged over batch and map elements, times beta/2.\n",
        "| student trained with | test accuracy | train time (s) |",
        "|---|---:|---:|",
    ]
    md += [f"| {r['method']} | {r['test_accuracy']:.4f} | {r['train_seconds']:.0f} |" for r in rows]
    md.append("\nOne seed, short budgets: differences under about 0.5 points are within run-to-run "
              "noise. Train times are wall-clock on a shared 2-core CPU (KD and KD+AT include the "
              "teacher's forward pass) and only indicative.\n")
    write_results("attention_transfer_quick" if args.quick else "attention_transfer",
                  {"teacher": {"widths": TEACHER_WIDTHS, "epochs": tcfg.epochs, "test_accuracy": t_acc,
                               "train_seconds": t_sec, "params": n_params["teacher"]},
                   "student": {"widths": STUDENT_WIDTHS, "epochs": scfg.epochs,
                               "params": n_params["student"]},
                   "config": {"teacher": tcfg.__dict__, "student": scfg.__dict__,
                              "kd": {"alpha": kd.alpha, "temperature": kd.temperature},
                              "at": {"pairs": PAIRS, "beta": args.beta, "p": 2}},
                   "rows": rows},
                  "\n".join(md))


if __name__ == "__main__":
    main()
