"""E2 convolution algorithms vs torch.nn.functional.conv2d on real activations (CPU).

Run from the repository root::

    python benchmarks/conv_algos.py               # 15 interleaved rounds per layer
    python benchmarks/conv_algos.py --rounds 5

Inputs are 64 Fashion-MNIST test images and the activations they produce inside the
networks (random-init weights, eval mode; timing and exactness do not depend on training):
LeNet-5's conv1 and conv2 (5x5) and one 3x3 conv of each stage of the ResNet-20-style net
(Winograd F(2x2,3x3) runs on those only). In every round each algorithm and ``F.conv2d``
run once, interleaved; the median time per call and its ratio to ``F.conv2d`` (same run,
``torch.set_num_threads(2)``) are reported with the max abs error against ``F.conv2d``
and the lowered-matrix sizes of im2col and MEC (float32 elements).

Writes ``benchmarks/results/conv_algos.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results

from nncompress.data import load_dataset
from nncompress.kernels import (
    conv2d_fft,
    conv2d_im2col,
    conv2d_mec,
    conv2d_winograd,
    im2col_memory,
    mec_memory,
)
from nncompress.models import build_model

ALGOS = {"im2col": conv2d_im2col, "winograd": conv2d_winograd, "fft": conv2d_fft, "mec": conv2d_mec}


def layer_inputs(x: torch.Tensor) -> list[tuple[str, nn.Conv2d, torch.Tensor]]:
    """(name, conv, the activation that reaches it) for the benchmarked layers."""
    torch.manual_seed(0)
    lenet = build_model("lenet5").eval()
    resnet = build_model("resnet20").eval()
    targets = [("lenet5.conv1", lenet, "conv1"), ("lenet5.conv2", lenet, "conv2"),
               ("resnet20.layers.0.conv2", resnet, "layers.0.conv2"),
               ("resnet20.layers.3.conv2", resnet, "layers.3.conv2"),
               ("resnet20.layers.6.conv2", resnet, "layers.6.conv2")]
    out = []
    for label, model, name in targets:
        conv = dict(model.named_modules())[name]
        seen: list[torch.Tensor] = []
        h = conv.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach()))
        with torch.no_grad():
            model(x)
        h.remove()
        out.append((label, conv, seen[0].contiguous()))
    return out


def bench_layer(label: str, conv: nn.Conv2d, a: torch.Tensor, rounds: int) -> dict:
    w, b = conv.weight.detach(), None if conv.bias is None else conv.bias.detach()
    kw = {"stride": conv.stride, "padding": conv.padding}
    ref = F.conv2d(a, w, b, **kw)
    fns = {"F.conv2d": lambda: F.conv2d(a, w, b, **kw)}
    errors = {}
    for name, fn in ALGOS.items():
        if name == "winograd" and (tuple(w.shape[2:]) != (3, 3) or conv.stride != (1, 1)):
            continue
        errors[name] = float((fn(a, w, b, **kw) - ref).abs().max())
        fns[name] = lambda fn=fn: fn(a, w, b, **kw)
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for f in fns.values():  # warm-up
            f()
        for _ in range(rounds):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    mem_i = im2col_memory(a.shape, w.shape, conv.stride, conv.padding)
    mem_m = mec_memory(a.shape, w.shape, conv.stride, conv.padding)
    return {
        "layer": label, "input": list(a.shape), "weight": list(w.shape),
        "stride": list(conv.stride), "padding": list(conv.padding), "output": list(ref.shape),
        "ref_max_abs": float(ref.abs().max()),
        "median_ms": {k: 1e3 * v for k, v in med.items()},
        "ratio_to_conv2d": {k: v / med["F.conv2d"] for k, v in med.items() if k != "F.conv2d"},
        "max_abs_error": errors,
        "lowered_elements": {"im2col": mem_i, "mec": mem_m},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(2)
    test = load_dataset("fashion-mnist", "test")
    x = torch.stack([test[i][0] for i in range(args.batch)])  # (B, 1, 28, 28) real images
    rows = [bench_layer(label, conv, a, args.rounds) for label, conv, a in layer_inputs(x)]
    names = list(ALGOS)
    md = [
        "## E2 convolution algorithms vs `F.conv2d` (CPU, 2 threads)\n",
        f"Batch of {args.batch} Fashion-MNIST test images; each layer gets the activation that "
        "reaches it in the network (random-init weights, eval mode). Median of "
        f"{args.rounds} interleaved rounds; ratio = time / `F.conv2d` time in the same run "
        "(lower is faster). Winograd F(2x2,3x3) only on the 3x3 stride-1 convs.\n",
        "| layer | input -> output | F.conv2d (ms) | " + " | ".join(f"{n} (ms, ratio)" for n in names) + " |",
        "|---|---|---:|" + "---:|" * len(names),
    ]
    for r in rows:
        cells = [f"{r['median_ms'][n]:.2f} ({r['ratio_to_conv2d'][n]:.1f}x)" if n in r["ratio_to_conv2d"]
                 else "n/a" for n in names]
        md.append(f"| {r['layer']} | {'x'.join(map(str, r['input']))} -> {'x'.join(map(str, r['output']))} "
                  f"| {r['median_ms']['F.conv2d']:.2f} | " + " | ".join(cells) + " |")
    md += ["\nMax abs error against `F.conv2d` (float32; `ref max` = largest |output|):\n",
           "| layer | ref max | " + " | ".join(names) + " |", "|---|---:|" + "---:|" * len(names)]
    for r in rows:
        md.append(f"| {r['layer']} | {r['ref_max_abs']:.2f} | " + " | ".join(
            f"{r['max_abs_error'][n]:.1e}" if n in r["max_abs_error"] else "n/a" for n in names) + " |")
    md += ["\nLowered-matrix size (float32 elements; MB at 4 bytes):\n",
           "| layer | im2col | MEC | MEC / im2col |", "|---|---:|---:|---:|"]
    for r in rows:
        mi, mm = r["lowered_elements"]["im2col"], r["lowered_elements"]["mec"]
        md.append(f"| {r['layer']} | {mi:,} ({mi * 4 / 2**20:.1f} MB) | {mm:,} ({mm * 4 / 2**20:.1f} MB) "
                  f"| {mm / mi:.2f} |")
    write_results("conv_algos", {"batch": args.batch, "rounds": args.rounds, "rows": rows}, "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
