"""Issue 22 benchmark rows: Q16 TNN ternary activations beside XNOR and TWN (LeNet-300-100
and LeNet-5), Q17 product quantization beside k-means sharing, L6 Tensor-Train
and L7 Toeplitz/circulant beside SVD, L8 ternary decomposition beside TWN (LeNet-300-100),
E4 local binary convolution beside plain LeNet-5, on Fashion-MNIST. Short budgets (shared
CPUs): one dense training epoch, one fine-tuning epoch per method. Every accuracy is that of
the model loaded back from its ``.nnc`` file (checked equal to the evaluated one).

    .venv/bin/python benchmarks/seeds_extra.py [--epochs 1] [--train-subset 20000] [--families Q16,E4]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_results  # noqa: E402

import nncompress  # noqa: E402
from nncompress.data import load_dataset  # noqa: E402
from nncompress.decompose import decompose  # noqa: E402
from nncompress.decompose.ternary import TernaryDecompConfig, ternary_decompose  # noqa: E402
from nncompress.decompose.toeplitz import StructuredConfig, structure_layers  # noqa: E402
from nncompress.decompose.tt import TTConfig, tt_decompose  # noqa: E402
from nncompress.distill import distillation_loss_fn  # noqa: E402
from nncompress.models import build_model  # noqa: E402
from nncompress.models.lbcnn import lbcnn_lenet5  # noqa: E402
from nncompress.quantize import KMeansConfig, QuantizeRun, quantize_model  # noqa: E402
from nncompress.quantize.methods import TWNConfig, XNORConfig  # noqa: E402
from nncompress.quantize.pq_method import PQMethodConfig  # noqa: E402
from nncompress.quantize.tnn_method import TNNConfig  # noqa: E402
from nncompress.train import TrainConfig, evaluate, fit  # noqa: E402

FAMILIES = ["Q17", "L6/L7", "L8", "E4", "Q16"]
FC = ["fc1", "fc2"]  # the big layers; fc3 (100 x 10) stays as it is for every method


def measure(name: str, family: str, model, test, tmp: Path, input_shape=None, base: str | None = None) -> dict:
    """Save, load back, check equal outputs, evaluate the loaded model. ``base``: the
    built-in model whose weights count as the dense size (default lenet5 for E4, else
    lenet300)."""
    model.eval()
    path = tmp / f"{name}.nnc"
    nncompress.save(model, path, input_shape=input_shape)
    skeleton = build_model("lenet5") if family == "E4" else None
    base = base or ("lenet5" if family == "E4" else "lenet300")
    loaded = nncompress.load(path, model=skeleton) if skeleton is not None else nncompress.load(path)
    x = torch.stack([test[i][0] for i in range(64)])
    same = bool(torch.equal(loaded(x), model(x)))
    acc = evaluate(loaded, test)["accuracy"]
    weights = sum(p.numel() for n, p in build_model(base).named_parameters() if n.endswith("weight"))
    size = path.stat().st_size
    row = {"family": family, "method": name, "accuracy": round(100 * acc, 2), "nnc_bytes": size,
           "bits_per_weight": round(8 * size / weights, 3), "params": sum(p.numel() for p in loaded.parameters()),
           "loaded_equal": same}
    print(row, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help=f"comma-separated subset of {FAMILIES}; the other families' rows are kept from the "
                         "committed results")
    args = ap.parse_args()
    fams = args.families.split(",")
    if set(fams) - set(FAMILIES):
        ap.error(f"--families: unknown {sorted(set(fams) - set(FAMILIES))}; allowed: {FAMILIES}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_full, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    train = Subset(train_full, range(args.train_subset))
    tcfg = TrainConfig(epochs=args.epochs, lr=0.05, batch_size=128)
    ft = TrainConfig(epochs=args.epochs, lr=0.01, batch_size=128)
    tmp = Path(tempfile.mkdtemp())
    rows, t0 = [], time.time()

    dense = build_model("lenet300")
    fit(dense, train, tcfg)
    rows.append(measure("dense fp32", "ref", copy.deepcopy(dense), test, tmp))
    run = QuantizeRun(train_data=train, finetune=ft)

    # Q17 beside k-means sharing (Q1) at ~2 bits per weight on fc1/fc2
    if 'Q17' in fams:
        m = copy.deepcopy(dense)
        quantize_model(m, KMeansConfig(bits_fc=2, include=FC), run)
        rows.append(measure("kmeans 2-bit + centroid fine-tuning (Q1)", "Q17", m, test, tmp))
        for bits in (2, 3):
            m = copy.deepcopy(dense)
            quantize_model(m, KMeansConfig(bits_fc=bits, include=FC), QuantizeRun(train_data=train))
            rows.append(measure(f"kmeans {bits}-bit, no fine-tuning (Q1)", "Q17", m, test, tmp))
        for d, k in ((2, 4), (2, 16), (4, 16), (4, 64)):
            m = copy.deepcopy(dense)
            quantize_model(m, PQMethodConfig(sub_dim=d, centroids=k, include=FC), run)
            rows.append(measure(f"pq d={d} K={k} (Q17)", "Q17", m, test, tmp))

    # L6 / L7 beside SVD (L1), then one fine-tuning epoch each
    if 'L6/L7' in fams:
        for label, apply in (
            ("svd rank 10 (L1)", lambda m: decompose(m, {n: {"method": "svd", "rank": 10} for n in FC})),
            ("svd rank 2 (L1)", lambda m: decompose(m, {n: {"method": "svd", "rank": 2} for n in FC})),
            ("tt 3 cores rank 8 (L6)", lambda m: tt_decompose(m, TTConfig(cores=3, rank=8, include=FC))),
            ("tt 3 cores rank 16 (L6)", lambda m: tt_decompose(m, TTConfig(cores=3, rank=16, include=FC))),
            ("toeplitz (L7)", lambda m: structure_layers(m, StructuredConfig("toeplitz", include=FC))),
            ("circulant (L7)", lambda m: structure_layers(m, StructuredConfig("circulant", include=FC))),
        ):
            m = copy.deepcopy(dense)
            apply(m)
            fit(m, train, ft)
            rows.append(measure(label, "L6/L7", m, test, tmp))

    # L8 beside TWN (Q6)
    if 'L8' in fams:
        m = copy.deepcopy(dense)
        quantize_model(m, TWNConfig(exclude=["fc3"]), run)
        rows.append(measure("twn (Q6)", "L8", m, test, tmp))
        for ratio in (0.5, 1.0):
            m = copy.deepcopy(dense)
            ternary_decompose(m, TernaryDecompConfig(rank_ratio=ratio, include=FC))
            fit(m, train, ft)  # the biases (and fc3) train; factors and scales stay fixed
            rows.append(measure(f"ternary decomposition k={ratio} min(m,n) (L8)", "L8", m, test, tmp))

    # E4 beside plain LeNet-5 trained the same way
    if 'E4' in fams:
        torch.manual_seed(0)
        plain = build_model("lenet5")
        fit(plain, train, tcfg)
        rows.append(measure("lenet5 plain", "E4", plain, test, tmp))
        torch.manual_seed(0)
        lb = lbcnn_lenet5(mid_channels=32, sparsity=0.5, seed=0)
        fit(lb, train, TrainConfig(epochs=args.epochs, lr=0.005, batch_size=128))  # 0.05 diverged (unnormalised responses)
        rows.append(measure("lenet5 LBCNN m=32, lr 0.005 (E4)", "E4", lb, test, tmp, input_shape=[1, 28, 28]))

    # Q16 TNN beside XNOR (Q5) and TWN (Q6): the same QAT budget (Adam 1e-3, cosine)
    if "Q16" in fams:
        qat = TrainConfig(epochs=args.epochs, lr=1e-3, optimizer="adam", lr_schedule="cosine", batch_size=128)
        for arch in ("lenet300", "lenet5"):
            torch.manual_seed(0)
            ref = build_model(arch)
            fit(ref, train, tcfg)
            rows.append(measure(f"{arch} dense fp32", "Q16", copy.deepcopy(ref), test, tmp, base=arch))
            teacher = copy.deepcopy(ref)
            kd = QuantizeRun(train_data=train, finetune=qat, distill=lambda t, teacher=teacher: distillation_loss_fn(
                teacher, alpha=0.5, temperature=4.0))
            plain = QuantizeRun(train_data=train, finetune=qat)
            for label, cfg, r in (
                ("xnor, first/last float (Q5)", XNORConfig(), plain),
                ("twn, float activations (Q6)", TWNConfig(), plain),
                ("tnn (Q16)", TNNConfig(), plain),
                ("tnn, first/last float (Q16)", TNNConfig(skip_first_last=True), plain),
                ("tnn, ternary input too (Q16)", TNNConfig(ternary_input=True), plain),
                ("tnn + teacher KD (Q16)", TNNConfig(), kd),
            ):
                torch.manual_seed(0)
                m = copy.deepcopy(ref)
                quantize_model(m, cfg, r)
                rows.append(measure(f"{arch} {label}", "Q16", m, test, tmp, base=arch))

    out = RESULTS / "seeds_extra.json"
    if set(fams) != set(FAMILIES) and out.exists():  # keep the other families' committed rows
        old = json.loads(out.read_text())["rows"]
        redone = set(fams) | ({"ref"} if any(r["family"] == "ref" for r in rows) else set())
        rows = [r for r in old if r["family"] not in redone] + rows
    cols = ["method", "accuracy", "nnc_bytes", "bits_per_weight", "params", "loaded_equal"]
    md = ["# Issue 22: the added seed techniques beside their nearest existing method", "",
          f"Fashion-MNIST, first {args.train_subset} training images, {args.epochs} epoch(s) of training and of "
          f"fine-tuning, {args.threads} thread(s); accuracy of the model loaded from its .nnc file "
          "(bits per weight = file bits / the dense model's weights). LeNet-300-100 rows of Q17/L6/L7/L8 compress "
          "fc1 and fc2. Q16: QAT for every row is Adam 1e-3 (cosine); act. quant: XNOR = scaled sign of the inputs "
          "of every layer but the first and last, TNN = ternary c + a t inputs of every layer but the first "
          "(`ternary input too`: the first as well), ternary weights (TWN, a scale per neuron); KD: the dense "
          "model as teacher (alpha 0.5, T 4), the paper's teacher-student training."]
    for fam in ["ref", *FAMILIES]:
        part = [r for r in rows if r["family"] == fam]
        if part:
            md += ["", f"## {fam}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in part]
    md.append(f"\nTotal time of the last run ({','.join(fams)}) {time.time() - t0:.0f} s.")
    write_results("seeds_extra", {"args": vars(args), "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
