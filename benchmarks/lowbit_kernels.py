"""E3 low-bit kernels vs dense float matmul (CPU, pure PyTorch).

Run from the repository root::

    python benchmarks/lowbit_kernels.py               # default shapes, 15 rounds
    python benchmarks/lowbit_kernels.py --rounds 5

For each shape (batch B, in K, out N) the compared kernels run interleaved in every round
(so a load spike hits all of them), and the median time per call is reported with its
ratio to dense ``F.linear`` on float32 weights. Each kernel's output is checked against
its float reference first (max abs error is reported). Weights: BWN-binarised (binary),
TWN-ternarised (ternary), INQ 5-bit powers of two (shift, on 8-bit integer inputs).

Writes ``benchmarks/results/lowbit_kernels.json`` and ``.md``.
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

from nncompress.kernels import (
    BinaryLinear,
    ShiftLinear,
    TernaryLinear,
    popcount_lut,
    quantize_input,
)
from nncompress.quantize.binary import bwn_quantize
from nncompress.quantize.pow2 import inq_exponents, inq_quantize
from nncompress.quantize.ternary import twn_quantize

SHAPES = [(64, 800, 500), (256, 1024, 1024), (1, 4096, 4096)]


def buffers_bytes(mod: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in mod.buffers())


def bench_shape(b: int, k: int, n: int, rounds: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05
    x = torch.randn(b, k, generator=g)
    bias = torch.zeros(n)
    wb, wt = bwn_quantize(w), twn_quantize(w)
    n1, n2 = inq_exponents(float(w.abs().max()), 5)
    wp = inq_quantize(w, n1, n2)
    lin_b, lin_t = nn.Linear(k, n), nn.Linear(k, n)
    with torch.no_grad():
        lin_b.weight.copy_(wb), lin_b.bias.zero_(), lin_t.weight.copy_(wt), lin_t.bias.zero_()
    binary = BinaryLinear.from_linear(lin_b, "sign")
    binary_lut = BinaryLinear.from_linear(lin_b, "sign", popcount=popcount_lut)
    ternary = TernaryLinear.from_linear(lin_t)
    shift = ShiftLinear([wp], bias)
    xs = torch.where(x > 0, 1.0, -1.0)
    qx, sx = quantize_input(x, 8)
    xq = qx.float() * sx

    kernels = {
        "dense_float": (lambda: F.linear(x, w, bias), None),
        "binary_xnor_swar": (lambda: binary(x), F.linear(xs, wb)),
        "binary_xnor_lut": (lambda: binary_lut(x), F.linear(xs, wb)),
        "ternary_gather_add": (lambda: ternary(x), F.linear(x, wt)),
        "shift_add_int8": (lambda: shift(x), F.linear(xq, wp)),
    }
    errors = {}
    with torch.no_grad():
        for name, (fn, ref) in kernels.items():
            if ref is not None:
                errors[name] = float((fn().float() - ref).abs().max())
        times = {name: [] for name in kernels}
        for _ in range(rounds):
            for name, (fn, _) in kernels.items():  # interleaved
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(t) for name, t in times.items()}
    dense = med["dense_float"]
    storage = {
        "dense_float": 4 * n * k,
        "binary_xnor_swar": buffers_bytes(binary),
        "binary_xnor_lut": buffers_bytes(binary),
        "ternary_gather_add": buffers_bytes(ternary),
        "shift_add_int8": sum(
            t.numel() * t.element_size()
            for _, groups in shift.terms
            for _, p, q in groups
            for t in (*p, *q)
        ),
    }
    return {
        "shape": {"batch": b, "in": k, "out": n},
        "median_ms": {k2: 1e3 * v for k2, v in med.items()},
        "slowdown_vs_dense": {k2: v / dense for k2, v in med.items()},
        "max_abs_error": errors,
        "runtime_weight_bytes": storage,
        "ternary_zero_fraction": float((wt == 0).float().mean()),
    }


def markdown(rows: list[dict], rounds: int) -> str:
    lines = [
        "# E3 low-bit kernels vs dense float matmul",
        "",
        (
            f"Median of {rounds} interleaved rounds per kernel, one thread, pure PyTorch on CPU. "
            "`x slower` = kernel time / dense `F.linear` time (above 1 = the kernel loses)."
        ),
        "",
        "| shape (B, K, N) | kernel | median ms | x slower than dense | max abs err vs float ref "
        "| runtime weight bytes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        s = r["shape"]
        for name, ms in r["median_ms"].items():
            err = r["max_abs_error"].get(name)
            lines.append(
                f"| {s['batch']}, {s['in']}, {s['out']} | {name} | {ms:.3f} | {r['slowdown_vs_dense'][name]:.1f} "
                f"| {'-' if err is None else f'{err:.2e}'} | {r['runtime_weight_bytes'][name]:,} |"
            )
    lines += [
        "",
        (
            "The XNOR kernel's integer dot products are exact (error vs the +-1 float matmul is 0 up to "
            "float32 rounding of the scale). The Python-level kernels lose to the dense BLAS GEMM: "
            "XNOR+popcount materialises a (B, N_chunk, W) XOR tensor and runs ~12 int64 ops per word "
            "without a hardware popcount; the ternary and shift kernels gather B x nnz inputs and "
            "scatter-add them (memory-bound, no SIMD GEMM). Their value here is as exact, "
            "multiplier-free reference implementations of the arithmetic a custom kernel or an "
            "accelerator would run, and the 1-bit packed weight storage (32x smaller than float32). "
            "Runtime weight bytes: the ternary and shift kernels keep int64 (row, col) coordinates per "
            "nonzero (grouped by exponent and sign), larger than the dense float weight; "
            "the packed `.nnc` file stores 2 bits (ternary) or 5 bits (INQ) per weight instead."
        ),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [bench_shape(b, k, n, args.rounds, args.seed) for b, k, n in SHAPES]
    for r in rows:
        print(r["shape"], {k: f"{v:.1f}x" for k, v in r["slowdown_vs_dense"].items()})
    write_results(
        "lowbit_kernels", {"rounds": args.rounds, "rows": rows}, markdown(rows, args.rounds)
    )


if __name__ == "__main__":
    main()
