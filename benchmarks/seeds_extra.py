"""Issue 22 benchmark rows: Q16 TNN ternary activations beside XNOR and TWN (LeNet-300-100
and LeNet-5), Q17 product quantization beside k-means sharing, L6 Tensor-Train
and L7 Toeplitz/circulant beside SVD, L8 ternary decomposition beside TWN (LeNet-300-100 and
LeNet-5), E4 local binary convolution beside plain LeNet-5, on Fashion-MNIST. Short budgets (shared
CPUs): one dense training epoch, one fine-tuning epoch per method. Every accuracy is that of
the model loaded back from its ``.nnc`` file (checked equal to the evaluated one).

    .venv/bin/python benchmarks/seeds_extra.py [--epochs 1] [--train-subset 20000] [--families Q16,E4]
        [--archs lenet5]

``--families`` / ``--archs`` rerun only those rows (Q17, L6/L7, L8 per model; Q16 and E4
always run their own models); the committed rows of other families and models are kept.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
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
ARCHS = ["lenet300", "lenet5"]
# Layers compressed per model: the classifier (LeNet-300's fc3, LeNet-5's fc2) stays float for every
# method; "fc": the big Linear layers (L6/L7, which replace Linear layers only); "quant": the layers of
# k-means / PQ (Q17) and of TWN / ternary decomposition (L8) (LeNet-5: conv1 has one input channel,
# so PQ (d | in_channels) takes conv2 and fc1, ternary decomposition and TWN all three).
LAYERS = {"lenet300": {"fc": ["fc1", "fc2"], "pq": ["fc1", "fc2"], "ternary": ["fc1", "fc2"], "classifier": "fc3"},
          "lenet5": {"fc": ["fc1"], "pq": ["conv2", "fc1"], "ternary": ["conv1", "conv2", "fc1"],
                     "classifier": "fc2"}}


def row_arch(row: dict) -> str:
    """The model of a row committed before rows named their model."""
    return "lenet5" if row["family"] == "E4" or row["method"].startswith("lenet5") else "lenet300"


class NarrowLeNet5(torch.nn.Module):
    """A plain LeNet-5 with narrower convolutions (``c1``/``c2`` channels) and ``hidden``
    fc1 units: the E4 row of a plain conv net whose stored numbers equal LBCNN's."""

    def __init__(self, c1: int = 6, c2: int = 14, hidden: int = 500):
        super().__init__()
        self.conv1, self.conv2 = torch.nn.Conv2d(1, c1, 5), torch.nn.Conv2d(c1, c2, 5)
        self.fc1, self.fc2 = torch.nn.Linear(c2 * 16, hidden), torch.nn.Linear(hidden, 10)
        self.pool = torch.nn.MaxPool2d(2)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x))).flatten(1)
        return self.fc2(torch.relu(self.fc1(x)))


def measure(name: str, family: str, model, test, tmp: Path, input_shape=None, base: str | None = None,
            skeleton=None) -> dict:
    """Save, load back, check equal outputs, evaluate the loaded model. ``base``: the
    built-in model whose weights count as the dense size (default lenet5 for E4, else
    lenet300)."""
    model.eval()
    if not all(bool(t.isfinite().all()) for t in model.state_dict().values() if t.is_floating_point()):
        row = {"family": family, "arch": base or ("lenet5" if family == "E4" else "lenet300"), "method": name,
               "accuracy": "diverged (non-finite weights, not stored)", "nnc_bytes": "-", "bits_per_weight": "-",
               "params": sum(p.numel() for p in model.parameters()), "loaded_equal": "-"}
        print(row, flush=True)
        return row
    path = tmp / f"{name}.nnc"
    nncompress.save(model, path, input_shape=input_shape)
    if skeleton is None:
        skeleton = build_model("lenet5") if family == "E4" else None
    base = base or ("lenet5" if family == "E4" else "lenet300")
    loaded = nncompress.load(path, model=skeleton) if skeleton is not None else nncompress.load(path)
    x = torch.stack([test[i][0] for i in range(64)])
    same = bool(torch.equal(loaded(x), model(x)))
    acc = evaluate(loaded, test)["accuracy"]
    weights = sum(p.numel() for n, p in build_model(base).named_parameters() if n.endswith("weight"))
    size = path.stat().st_size
    row = {"family": family, "arch": base, "method": name, "accuracy": round(100 * acc, 2), "nnc_bytes": size,
           "bits_per_weight": round(8 * size / weights, 3), "params": sum(p.numel() for p in loaded.parameters()),
           "loaded_equal": same}
    print(row, flush=True)
    return row


def per_arch_rows(arch: str, fams: list[str], train, test, tcfg: TrainConfig, ft: TrainConfig, tmp: Path) -> list[dict]:
    """The Q17, L6/L7 and L8 rows of one model (and its dense reference row)."""
    lay = LAYERS[arch]
    fc, pq, tern = lay["fc"], lay["pq"], lay["ternary"]
    tag = "" if arch == "lenet300" else f"{arch} "  # the committed LeNet-300-100 rows are unprefixed
    rows = []
    torch.manual_seed(0)
    dense = build_model(arch)
    fit(dense, train, tcfg)
    rows.append(measure(f"{tag}dense fp32", "ref", copy.deepcopy(dense), test, tmp, base=arch))
    run = QuantizeRun(train_data=train, finetune=ft)

    # Q17 beside k-means sharing (Q1) at ~2 bits per weight on the same layers
    if 'Q17' in fams:
        for lr, note in ((ft.lr, ""), (0.001, " lr 0.001")):
            m = copy.deepcopy(dense)
            quantize_model(m, KMeansConfig(bits_fc=2, bits_conv=2, include=pq),
                           QuantizeRun(train_data=train, finetune=dataclasses.replace(ft, lr=lr)))
            rows.append(measure(f"{tag}kmeans 2-bit + centroid fine-tuning{note} (Q1)", "Q17", m, test, tmp,
                                base=arch))
        for bits in (2, 3):
            m = copy.deepcopy(dense)
            quantize_model(m, KMeansConfig(bits_fc=bits, bits_conv=bits, include=pq), QuantizeRun(train_data=train))
            rows.append(measure(f"{tag}kmeans {bits}-bit, no fine-tuning (Q1)", "Q17", m, test, tmp, base=arch))
        for d, k in ((2, 4), (2, 16), (4, 16), (4, 64)):
            m = copy.deepcopy(dense)
            quantize_model(m, PQMethodConfig(sub_dim=d, centroids=k, include=pq), run)
            rows.append(measure(f"{tag}pq d={d} K={k} (Q17)", "Q17", m, test, tmp, base=arch))

    # L6 / L7 beside SVD (L1), then one fine-tuning epoch each
    if 'L6/L7' in fams:
        for label, apply in (
            ("svd rank 10 (L1)", lambda m: decompose(m, {n: {"method": "svd", "rank": 10} for n in fc})),
            ("svd rank 2 (L1)", lambda m: decompose(m, {n: {"method": "svd", "rank": 2} for n in fc})),
            ("tt 3 cores rank 8 (L6)", lambda m: tt_decompose(m, TTConfig(cores=3, rank=8, include=fc))),
            ("tt 3 cores rank 16 (L6)", lambda m: tt_decompose(m, TTConfig(cores=3, rank=16, include=fc))),
            ("toeplitz (L7)", lambda m: structure_layers(m, StructuredConfig("toeplitz", include=fc))),
            ("circulant (L7)", lambda m: structure_layers(m, StructuredConfig("circulant", include=fc))),
        ):
            m = copy.deepcopy(dense)
            apply(m)
            fit(m, train, ft)
            rows.append(measure(f"{tag}{label}", "L6/L7", m, test, tmp, base=arch))

    # L8 beside TWN (Q6) on the same layers
    if 'L8' in fams:
        m = copy.deepcopy(dense)
        quantize_model(m, TWNConfig(exclude=[lay["classifier"]]), run)
        rows.append(measure(f"{tag}twn (Q6)", "L8", m, test, tmp, base=arch))
        for ratio in (0.5, 1.0):
            m = copy.deepcopy(dense)
            ternary_decompose(m, TernaryDecompConfig(rank_ratio=ratio, include=tern))
            fit(m, train, ft)  # the biases (and the float layers) train; factors and scales stay fixed
            rows.append(measure(f"{tag}ternary decomposition k={ratio} min(m,n) (L8)", "L8", m, test, tmp, base=arch))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--train-subset", type=int, default=20000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--archs", default=",".join(ARCHS),
                    help=f"comma-separated subset of {ARCHS} for the Q17, L6/L7 and L8 rows")
    ap.add_argument("--families", default=",".join(FAMILIES),
                    help=f"comma-separated subset of {FAMILIES}; the other families' rows are kept from the "
                         "committed results")
    args = ap.parse_args()
    fams = args.families.split(",")
    if set(fams) - set(FAMILIES):
        ap.error(f"--families: unknown {sorted(set(fams) - set(FAMILIES))}; allowed: {FAMILIES}")
    archs = args.archs.split(",")
    if set(archs) - set(ARCHS):
        ap.error(f"--archs: unknown {sorted(set(archs) - set(ARCHS))}; allowed: {ARCHS}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train_full, test = load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")
    train = Subset(train_full, range(args.train_subset))
    tcfg = TrainConfig(epochs=args.epochs, lr=0.05, batch_size=128)
    ft = TrainConfig(epochs=args.epochs, lr=0.01, batch_size=128)
    tmp = Path(tempfile.mkdtemp())
    rows, t0 = [], time.time()

    for arch in archs if {"Q17", "L6/L7", "L8"} & set(fams) else []:
        rows += per_arch_rows(arch, fams, train, test, tcfg, ft, tmp)

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
        # plain conv nets of LBCNN's stored size: convs of ~2,310 weights (6 and 14 channels),
        # fc1 of 500 units (equal conv numbers) or 1,731 (equal total stored numbers)
        stored = sum(p.numel() for n, p in lb.named_parameters() if n.endswith("weight"))
        for hidden in (500, round((stored - 2250) / (14 * 16 + 10))):
            torch.manual_seed(0)
            narrow = NarrowLeNet5(hidden=hidden)
            fit(narrow, train, tcfg)
            rows.append(measure(f"lenet5 plain narrow convs 6/14 ch, fc1 {hidden} (stored weights "
                                f"{sum(p.numel() for n, p in narrow.named_parameters() if n.endswith('weight')):,} vs "
                                f"LBCNN {stored:,})", "E4", narrow, test, tmp, input_shape=[1, 28, 28],
                                skeleton=NarrowLeNet5(hidden=hidden)))

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
    if out.exists():  # keep the committed rows of the (family, model) pairs not rerun
        old = [{**r, "arch": r.get("arch") or row_arch(r)} for r in json.loads(out.read_text())["rows"]]
        redone = {(r["family"], r["arch"]) for r in rows}
        rows = [r for r in old if (r["family"], r["arch"]) not in redone] + rows
        rows.sort(key=lambda r: ([*ARCHS, None].index(r["arch"]) if r["family"] in ("ref", "Q17", "L6/L7", "L8")
                                 else 0))
    cols = ["arch", "method", "accuracy", "nnc_bytes", "bits_per_weight", "params", "loaded_equal"]
    md = ["# Issue 22: the added seed techniques beside their nearest existing method", "",
          f"Fashion-MNIST, first {args.train_subset} training images, {args.epochs} epoch(s) of training and of "
          f"fine-tuning, {args.threads} thread(s); accuracy of the model loaded from its .nnc file "
          "(bits per weight = file bits / the dense model's weights). Q17/L6/L7/L8 compress the same layers "
          "for every method of a model: LeNet-300-100 fc1 and fc2; LeNet-5: k-means and PQ conv2 and fc1, "
          "SVD/TT/Toeplitz/circulant fc1, TWN and ternary decomposition conv1, conv2 and fc1 (the classifier "
          "stays float). Q16: QAT for every row is Adam 1e-3 (cosine); act. quant: XNOR = scaled sign of the inputs "
          "of every layer but the first and last, TNN = ternary c + a t inputs of every layer but the first "
          "(`ternary input too`: the first as well), ternary weights (TWN, a scale per neuron); KD: the dense "
          "model as teacher (alpha 0.5, T 4), the paper's teacher-student training."]
    for fam in ["ref", *FAMILIES]:
        part = [r for r in rows if r["family"] == fam]
        if part:
            md += ["", f"## {fam}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            md += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in part]
    md.append(f"\nTotal time of the last run ({','.join(fams)}; {','.join(archs)}) {time.time() - t0:.0f} s.")
    write_results("seeds_extra", {"args": vars(args), "rows": rows}, "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
