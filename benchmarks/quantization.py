"""Low-bit quantization on Fashion-MNIST (catalogue Q3-Q12): accuracy, bits per weight
and real file bytes of every method, next to the float model, for LeNet-5 and ResNet-20.

Run from the repository root::

    python benchmarks/quantization.py                        # both models, default budget
    python benchmarks/quantization.py --models lenet5 --qat-epochs 1
    python benchmarks/quantization.py --models resnet20 --methods int8-pc,twn

Budget (CPU, one thread): the float model is trained first (cached in --cache), then
each method starts from a copy of it: PTQ methods calibrate on 8 batches of 256 training
images; QAT methods fine-tune ``--qat-epochs`` epochs (default 1) (Adam, lr 1e-3, cosine; INQ: SGD
lr 1e-3 per partition step). ResNet-20 uses a training subset (``--resnet-subset``) to
fit the CPU budget. Every file is written with ``nncompress.save``, loaded back with
``nncompress.load`` (activation quantizers re-attached from ``activation_spec``) and the
loaded model is evaluated again: its accuracy must equal the finalized model's.

Writes ``benchmarks/results/quantization.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results

import nncompress.format as nnc
from nncompress.data import load_dataset
from nncompress.models import build_model
from nncompress.quantize.api import activation_spec, apply_activation_spec, quantize_model
from nncompress.train import TrainConfig, evaluate, fit

log = logging.getLogger("bench.quantization")

# name -> (method, params, training kind, acceptance: max loss in points or None)
METHODS: dict[str, tuple[str, dict, str, float | None]] = {
    "float-ft": (
        "none",
        {},
        "ft",
        None,
    ),  # control: the QAT fine-tuning budget without quantization
    "fp16": ("fp16", {}, "ptq", None),
    "bf16": ("bf16", {}, "ptq", None),
    "int8-pc": ("int8", {"per_channel": True, "symmetric": True, "act_bits": 8}, "ptq", 0.3),
    "int8-pc-w": ("int8", {"per_channel": True, "symmetric": True, "act_bits": None}, "ptq", 0.3),
    "int8-pt": ("int8", {"per_channel": False, "symmetric": True, "act_bits": 8}, "ptq", None),
    "int8-pc-asym": ("int8", {"per_channel": True, "symmetric": False, "act_bits": 8}, "ptq", None),
    "int4-pc-qat": (
        "int8",
        {"bits": 4, "per_channel": True, "act_bits": 8, "qat": True},
        "qat",
        None,
    ),
    "shiftcnn-n2b4": ("shiftcnn", {"n": 2, "bits": 4}, "ptq", None),
    "shiftcnn-n3b4": ("shiftcnn", {"n": 3, "bits": 4}, "ptq", None),
    "inq-5bit": ("inq", {"bits": 5}, "inq", 0.2),
    "twn": ("twn", {}, "qat", 1.5),
    "ttq": ("ttq", {"t": 0.05}, "qat", 1.5),
    "bwn": ("bwn", {}, "qat", 2.0),
    "xnor": ("xnor", {}, "qat", None),
    "binaryconnect": ("binaryconnect", {}, "qat", None),
    "binaryconnect-scaled": ("binaryconnect", {"scaled": True}, "qat", None),
    "binaryconnect-stoch-scaled": (
        "binaryconnect",
        {"scaled": True, "stochastic": True},
        "qat",
        None,
    ),
    "bnn": ("bnn", {}, "qat", None),
    "bnn-scaled": ("bnn", {"scaled": True}, "qat", None),
    "admm-ternary": ("admm", {"levels": "ternary"}, "qat", None),
    "admm-int5": ("admm", {"levels": "int5"}, "qat", None),
    "admm-pow2": ("admm", {"levels": "pow2"}, "qat", None),
    "dorefa-w2a4": ("dorefa", {"w_bits": 2, "a_bits": 4}, "qat", None),
    "dorefa-w2a4g8": ("dorefa", {"w_bits": 2, "a_bits": 4, "g_bits": 8}, "qat", None),
    "act-linear-8": ("act-linear", {"bits": 8}, "ptq", None),
    "act-log-5": ("act-log", {"bits": 5}, "ptq", None),
}
RESNET_DEFAULT = [
    "float-ft",
    "fp16",
    "bf16",
    "int8-pc",
    "int8-pc-w",
    "int8-pt",
    "int8-pc-asym",
    "shiftcnn-n2b4",
    "inq-5bit",
    "twn",
    "ttq",
    "bwn",
    "act-linear-8",
    "act-log-5",
]


def weight_names(model: torch.nn.Module) -> set[str]:
    return {
        f"{n}.weight"
        for n, m in model.named_modules()
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))
    }


def file_stats(path: Path, model: torch.nn.Module) -> dict:
    """Bits per Linear/Conv weight from the file's tensor table, and the header overhead."""
    info = nnc.read_info(path)
    names = weight_names(model)
    n_w = sum(t.numel for t in info.tensors if t.name in names)
    code_bits = stored_bits = 0
    for t in info.tensors:
        if t.name not in names:
            continue
        stored_bits += 8 * t.nbytes
        bits = t.meta.get("bits") if isinstance(t.meta, dict) else None
        code_bits += (
            bits["weights"] if isinstance(bits, dict) and "weights" in bits else 8 * t.nbytes
        )
    payload = sum(t.nbytes for t in info.tensors)
    return {
        "file_bytes": info.file_bytes,
        "payload_bytes": payload,
        "header_bytes": info.file_bytes - payload,
        "weights": n_w,
        "code_bits_per_weight": code_bits / n_w,
        "stored_bits_per_weight": stored_bits / n_w,
        "codecs": sorted({t.codec for t in info.tensors if t.name in names}),
    }


def float_model(arch: str, train, epochs: float, cache: Path, seed: int) -> torch.nn.Module:
    path = cache / f"{arch}-e{epochs}-n{len(train)}-s{seed}.pt"
    model = build_model(arch)
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        log.info("float %s loaded from %s", arch, path)
        return model
    cfg = TrainConfig(
        epochs=epochs,
        lr=0.05 if arch == "resnet20" else 0.01,
        momentum=0.9,
        batch_size=64,
        lr_schedule="cosine",
        seed=seed,
        weight_decay=5e-4,
    )
    t0 = time.perf_counter()
    fit(model, train, cfg)
    log.info("float %s trained in %.0f s", arch, time.perf_counter() - t0)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model


def run_method(name: str, base: torch.nn.Module, train, test, args, tmp: Path) -> dict:
    method, params, kind, target = METHODS[name]
    model = copy.deepcopy(base)
    if kind == "inq":
        cfg = TrainConfig(
            epochs=args.inq_epochs,
            lr=1e-3,
            optimizer="sgd",
            momentum=0.9,
            batch_size=64,
            lr_schedule="cosine",
            seed=args.seed,
        )
    else:
        cfg = TrainConfig(
            epochs=args.qat_epochs,
            lr=1e-3,
            optimizer="adam",
            batch_size=64,
            lr_schedule="cosine",
            seed=args.seed,
        )
    t0 = time.perf_counter()
    if kind == "ft":
        fit(model, train, cfg)
    else:
        model = quantize_model(
            model, method, params, train_data=train, calib_data=train, train_cfg=cfg
        )
    seconds = time.perf_counter() - t0
    acc = evaluate(model, test)["accuracy"]
    path = tmp / f"{name}.nnc"
    codecs = {n: "raw" for n in model.state_dict()} if kind == "ft" else None
    nnc.save(model, path, codecs=codecs, metadata={"method": method, "params": params})
    loaded = apply_activation_spec(nnc.load(path), activation_spec(model))
    same_weights = all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values())
    )
    acc_loaded = evaluate(loaded, test)["accuracy"]
    row = {
        "name": name,
        "method": method,
        "params": params,
        "training": kind,
        "train_epochs": 0 if kind == "ptq" else (cfg.epochs * (3 if kind == "inq" else 1)),
        "accuracy": acc,
        "accuracy_loaded": acc_loaded,
        "loaded_equal": same_weights and acc == acc_loaded,
        "act_quant": sorted(
            {
                s["kind"] + (f"{s['bits']}" if "bits" in s else "")
                for s in activation_spec(model).values()
            }
        ),
        "seconds": seconds,
        "target_max_loss_pt": target,
        **file_stats(path, model),
    }
    log.info(
        "%s: %s", name, {k: row[k] for k in ("accuracy", "code_bits_per_weight", "file_bytes")}
    )
    return row


def markdown(results: dict) -> str:
    lines = ["# Low-bit quantization on Fashion-MNIST", ""]
    for arch, res in results["models"].items():
        b = res["budget"]
        lines += [
            f"## {arch}",
            "",
            (
                f"Float model: {b['float_epochs']} epochs on {b['train_images']} training images (SGD, cosine); "
                "QAT: Adam 1e-3, cosine, for the epochs in the `epochs` column; INQ: SGD 1e-3 for a third "
                "of them after each of the 50/75/87.5% partition steps; PTQ: 8 calibration batches of "
                f"256 training images; test set: {b['test_images']} images."
            ),
            "",
            (
                "| method | training | epochs | act. quant | accuracy | vs float (pt) | code bits/weight | stored bits/weight "
                "| file bytes | vs float file | header bytes | loaded == evaluated | target |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        fl = res["float"]
        lines.append(
            f"| float32 | - | {b['float_epochs']} | - | {fl['accuracy']:.4f} | 0.00 | 32.00 | {fl['stored_bits_per_weight']:.2f} "
            f"| {fl['file_bytes']:,} | 1.00x | {fl['header_bytes']:,} | - | - |"
        )
        for r in res["rows"]:
            d = 100 * (r["accuracy"] - fl["accuracy"])
            tgt = (
                "-"
                if r["target_max_loss_pt"] is None
                else (
                    f"loss <= {r['target_max_loss_pt']} pt: {'met' if -d <= r['target_max_loss_pt'] else 'MISSED'}"
                )
            )
            lines.append(
                f"| {r['name']} | {r['training']} | {r['train_epochs']:g} | {', '.join(r['act_quant']) or '-'} | {r['accuracy']:.4f} | {d:+.2f} "
                f"| {r['code_bits_per_weight']:.3f} | {r['stored_bits_per_weight']:.3f} | {r['file_bytes']:,} "
                f"| {fl['file_bytes'] / r['file_bytes']:.1f}x | {r['header_bytes']:,} | {r['loaded_equal']} | {tgt} |"
            )
        lines.append("")
    lines += [
        (
            "Code bits/weight: the codec's `meta.bits.weights` (the packed or Huffman-coded codes) per "
            "Linear/Conv weight; stored bits/weight adds scales, zero points and codebooks. File bytes are "
            "the whole `.nnc` file (biases, BatchNorm and the JSON header included); header bytes = file "
            "bytes - sum of all tensor sections. `float-ft` is a control row: the float model fine-tuned "
            "with the QAT budget and no quantization (how much of a QAT row's change is extra training)."
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="lenet5,resnet20")
    p.add_argument(
        "--methods",
        default=None,
        help="comma list (default: all for LeNet-5, a cheaper set for ResNet-20)",
    )
    p.add_argument("--float-epochs", type=float, default=10.0)
    p.add_argument("--resnet-float-epochs", type=float, default=6.0)
    p.add_argument("--qat-epochs", type=float, default=1.0)
    p.add_argument("--resnet-qat-epochs", type=float, default=0.5)
    p.add_argument("--inq-epochs", type=float, default=1.0)
    p.add_argument("--resnet-subset", type=int, default=10000)
    p.add_argument("--resnet-test", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "nncompress-bench-cache"))
    p.add_argument("--out", default="quantization")
    p.add_argument(
        "--merge",
        action="store_true",
        help="update rows (by method name) of an existing results/<out>.json instead of replacing it",
    )
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    train_full, test_full = (
        load_dataset("fashion-mnist", "train"),
        load_dataset("fashion-mnist", "test"),
    )
    results = {"models": {}}
    old_path = Path(__file__).resolve().parent / "results" / f"{args.out}.json"
    if args.merge and old_path.exists():
        results = {"models": json.loads(old_path.read_text())["models"]}
    for arch in args.models.split(","):
        is_resnet = arch == "resnet20"
        train = Subset(train_full, range(args.resnet_subset)) if is_resnet else train_full
        test = Subset(test_full, range(args.resnet_test)) if is_resnet else test_full
        float_epochs = args.resnet_float_epochs if is_resnet else args.float_epochs
        run_args = copy.copy(args)
        if is_resnet:
            run_args.qat_epochs = args.resnet_qat_epochs
            run_args.inq_epochs = args.resnet_qat_epochs
        torch.manual_seed(args.seed)
        base = float_model(arch, train, float_epochs, Path(args.cache), args.seed)
        names = (
            args.methods.split(",")
            if args.methods
            else (RESNET_DEFAULT if is_resnet else list(METHODS))
        )
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            fpath = tmp / "float.nnc"
            nnc.save(base, fpath, codecs={n: "raw" for n in base.state_dict()})
            fl = {"accuracy": evaluate(base, test)["accuracy"], **file_stats(fpath, base)}
            log.info("%s float accuracy %.4f", arch, fl["accuracy"])
            rows = [run_method(n, base, train, test, run_args, tmp) for n in names]
        budget = {
            "float_epochs": float_epochs,
            "train_images": len(train),
            "test_images": len(test),
            "qat_epochs": run_args.qat_epochs,
            "inq_epochs": run_args.inq_epochs,
        }
        old = results["models"].get(arch)
        if args.merge and old is not None:
            keys = ("float_epochs", "train_images", "test_images")
            same = all(old["budget"][k] == budget[k] for k in keys)
            if not same or old["float"]["accuracy"] != fl["accuracy"]:
                raise SystemExit(
                    f"--merge: {arch} budget/float model differ from the stored run; rerun all"
                )
            done = {r["name"] for r in rows}
            rows = [r for r in old["rows"] if r["name"] not in done] + rows
            rows.sort(key=lambda r: list(METHODS).index(r["name"]))
            budget = old["budget"]  # rows carry their own epochs
        results["models"][arch] = {"budget": budget, "float": fl, "rows": rows}
        write_results(args.out, results, markdown(results))  # partial results after each model


if __name__ == "__main__":
    main()
