"""Benchmark: TernGrad (Q14) and 8-bit approximate gradients (Q18) as DDP communication hooks
vs plain fp32 all-reduce.

LeNet-300-100 on Fashion-MNIST, trained with ``DistributedDataParallel`` on 2 CPU processes
(gloo, one torch thread each). Every global batch of 64 is split in two halves of 32, one
per worker; both runs use the same seed, initial weights, batch order, SGD (momentum 0.9,
lr 0.05, cosine schedule) and epochs. Runs:

- ``fp32``: DDP's default all-reduce of fp32 gradients (no hook);
- ``terngrad``: ``terngrad_hook`` with one scale per DDP bucket and no clipping;
- ``terngrad-clip``: the same with the module's default clipping to 2.5 sigma;
- ``terngrad-layer``: one scale per parameter tensor (``per_layer=True``), no clipping;
- ``terngrad-layer-clip``: the paper's setting: per-layer scales and clipping;
- ``terngrad-layer-clip-packed``: the same with ``packed=True``: the codes are packed 4 per
  byte (2 bits each) and exchanged by all-gather instead of all-reduced as int8;
- ``int8-dynamic`` / ``int8-linear``: Dettmers' 8-bit approximation (``grad8bit_hook``):
  uint8 codes of the dynamic tree type (or linear absmax) + one fp32 absmax per tensor,
  all-gathered, decoded and averaged by every worker.

LeNet-300-100's 266,610 gradients fit in one DDP bucket, so "per bucket" means one scale
for the whole model here.

Bytes per step are counted from the tensors really handed to the collectives: in the hook
runs ``nncompress.distributed.terngrad``'s ``dist`` is replaced by a proxy that records
every ``all_reduce`` and ``all_gather`` input (numel x element size); for ``fp32`` the bytes
are DDP's own bucket sizes (``_get_ddp_logging_data()``), checked against 4 bytes x gradient
elements. "Sent" is the payload each worker contributes per step (an all-reduce or
all-gather input, counted once); "received" is the payload each worker gets back from the
others: the reduced tensor of an all-reduce (same size as its input) and the other
``world - 1`` workers' tensors of an all-gather. The bytes a ring all-reduce puts on the wire
are a fixed multiple (2(W-1)/W) of its payload; an all-gather's are exactly the counted
ones. The 2-bit formula (ceil(N/4) bytes + 4 bytes per scale) is given beside each run.

    python benchmarks/terngrad.py [--epochs 3] [--runs fp32,terngrad,...] [--quick] [--merge]

Writes benchmarks/results/terngrad.json and .md (``--quick``: 30 steps per run, print only).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import nncompress.distributed.grad8bit as grad8bit_mod
import nncompress.distributed.terngrad as terngrad_mod
from nncompress.data import load_dataset
from nncompress.distributed import Grad8bitState, TernGradState, grad8bit_hook, terngrad_hook
from nncompress.models import build_model
from nncompress.train import evaluate
from nncompress.train.schedules import lr_multiplier

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

WORLD = 2
RUNS: dict[str, dict[str, Any]] = {
    "fp32": {"hook": False},
    "terngrad": {"hook": True, "clip_sigma": None, "per_layer": False},
    "terngrad-clip": {"hook": True, "clip_sigma": 2.5, "per_layer": False},
    "terngrad-layer": {"hook": True, "clip_sigma": None, "per_layer": True},
    "terngrad-layer-clip": {"hook": True, "clip_sigma": 2.5, "per_layer": True},
    "terngrad-layer-clip-packed": {"hook": True, "clip_sigma": 2.5, "per_layer": True, "packed": True},
    "int8-dynamic": {"hook": True, "grad8bit": "dynamic"},
    "int8-linear": {"hook": True, "grad8bit": "linear"},
}
LABELS = {
    "fp32": "fp32 all-reduce (DDP default)",
    "terngrad": "TernGrad, one scale per bucket, no clipping",
    "terngrad-clip": "TernGrad, one scale per bucket, clip 2.5 sigma",
    "terngrad-layer": "TernGrad, per-layer scales, no clipping",
    "terngrad-layer-clip": "TernGrad, per-layer scales, clip 2.5 sigma",
    "terngrad-layer-clip-packed": "TernGrad, per-layer scales, clip 2.5 sigma, 2-bit packed",
    "int8-dynamic": "8-bit dynamic tree (Dettmers), per-layer absmax",
    "int8-linear": "8-bit linear absmax, per-layer",
}


class CountingDist:
    """Stands in for ``torch.distributed`` inside the hook's module and counts the payload
    bytes sent and received by every ``all_reduce`` and ``all_gather`` (per dtype);
    everything else is passed through."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.bytes: dict[str, int] = {}  # sent: each collective's input, once
        self.received: dict[str, int] = {}
        self.calls: dict[str, int] = {}

    def _record(self, op: str, tensor: torch.Tensor, copies_received: int) -> None:
        key = str(tensor.dtype).replace("torch.", "")
        size = tensor.numel() * tensor.element_size()
        self.bytes[key] = self.bytes.get(key, 0) + size
        self.received[key] = self.received.get(key, 0) + copies_received * size
        self.calls[op] = self.calls.get(op, 0) + 1

    def all_reduce(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Record ``tensor``'s size (sent, and received as the reduced result), then all-reduce."""
        self._record("all_reduce", tensor, 1)
        return self._real.all_reduce(tensor, *args, **kwargs)

    def all_gather(self, out: list[torch.Tensor], tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        """Record ``tensor``'s size (sent once, received from the ``len(out) - 1`` others), then gather."""
        self._record("all_gather", tensor, len(out) - 1)
        return self._real.all_gather(out, tensor, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(rank: int, run: str, cfg: dict[str, Any], port: int, out_dir: str) -> None:
    """One DDP process: train, evaluate after each epoch (rank 0), write ``<run>.rank<r>.json``."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        spec = RUNS[run]
        train_set = load_dataset("fashion-mnist", "train")
        test_set = load_dataset("fashion-mnist", "test") if rank == 0 else None
        x_all, y_all = train_set.tensors
        torch.manual_seed(cfg["seed"])
        model = build_model("lenet300")
        n_grad = sum(p.numel() for p in model.parameters() if p.requires_grad)
        ddp = nn.parallel.DistributedDataParallel(model)
        counter = None
        state = None
        if spec.get("grad8bit"):
            counter = CountingDist(dist)
            grad8bit_mod.dist = counter  # only the hook's module sees the proxy
            state = Grad8bitState(kind=spec["grad8bit"], per_layer=True)
            ddp.register_comm_hook(state, grad8bit_hook)
        elif spec["hook"]:
            counter = CountingDist(dist)
            terngrad_mod.dist = counter  # only the hook's module sees the proxy
            state = TernGradState(seed=1000 * cfg["seed"] + rank, clip_sigma=spec["clip_sigma"],
                                  per_layer=spec["per_layer"], packed=spec.get("packed", False))
            ddp.register_comm_hook(state, terngrad_hook)
        opt = torch.optim.SGD(ddp.parameters(), lr=cfg["lr"], momentum=cfg["momentum"])
        gb, half = cfg["batch_size"], cfg["batch_size"] // WORLD
        steps_per_epoch = len(y_all) // gb  # drop the last partial global batch
        total = steps_per_epoch * cfg["epochs"] if cfg["max_steps"] is None else cfg["max_steps"]
        sched = lr_multiplier("cosine", total)
        epochs: list[dict[str, Any]] = []
        step, train_s = 0, 0.0
        loss_fn = nn.CrossEntropyLoss()
        n_epochs = math.ceil(total / steps_per_epoch)
        for epoch in range(n_epochs):
            perm = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(cfg["seed"] + epoch))
            ddp.train()
            dist.barrier()
            t0 = time.perf_counter()
            loss_sum, seen = 0.0, 0
            for b in range(steps_per_epoch):
                if step >= total:
                    break
                idx = perm[b * gb + rank * half: b * gb + (rank + 1) * half]  # this worker's half
                for g in opt.param_groups:
                    g["lr"] = cfg["lr"] * sched(step)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(ddp(x_all[idx]), y_all[idx])
                loss.backward()  # DDP all-reduces (or the hook ternarizes) during backward
                opt.step()
                loss_sum += float(loss.detach())
                seen += 1
                step += 1
            dist.barrier()
            train_s += time.perf_counter() - t0
            row: dict[str, Any] = {"epoch": epoch + 1, "steps": step, "train_loss": loss_sum / max(seen, 1),
                                   "train_s_cumulative": train_s}
            if rank == 0:
                row.update({f"test_{k}": v for k, v in evaluate(model, test_set).items()})
                print(f"[{run}] epoch {epoch + 1}: loss {row['train_loss']:.4f} "
                      f"acc {row['test_accuracy']:.4f} ({train_s:.0f}s)", flush=True)
            epochs.append(row)
            dist.barrier()
        if counter is not None:
            payload = {k: v / step for k, v in counter.bytes.items()}
            received = {k: v / step for k, v in counter.received.items()}
            calls = {k: v / step for k, v in counter.calls.items()}
            source = "all_reduce / all_gather calls of the hook, counted by CountingDist"
        else:  # DDP's C++ reducer all-reduces its fp32 buckets: their sizes are the payload
            logging_data = ddp._get_ddp_logging_data()
            sizes = [int(s) for s in str(logging_data.get("bucket_sizes", "")).split(",") if s.strip()]
            bucket_bytes = sum(sizes) if sizes else 4 * n_grad
            assert bucket_bytes == 4 * n_grad, (bucket_bytes, n_grad)
            payload = {"float32": float(bucket_bytes)}
            received = dict(payload)  # the reduced buckets
            calls = {"all_reduce": float(len(sizes) or 1)}
            source = f"DDP bucket_sizes {sizes}" if sizes else "4 bytes x gradient elements"
        result = {"run": run, "rank": rank, "steps": step, "grad_elements": n_grad, "epochs": epochs,
                  "train_s": train_s, "payload_bytes_per_step": payload, "received_bytes_per_step": received,
                  "collective_calls_per_step": calls,
                  "payload_source": source,
                  "scales_per_bucket_last": (state.last_scales if state is not None else None),
                  "eight_bit": bool(spec.get("grad8bit"))}
        Path(out_dir, f"{run}.rank{rank}.json").write_text(json.dumps(result))
        dist.barrier()
    except BaseException:
        dist.destroy_process_group()
        raise
    # Leave without C++ teardown (gloo/DDP teardown can abort under load; see the tests).
    os._exit(0)


def run_one(run: str, cfg: dict[str, Any], out_dir: str) -> dict[str, Any]:
    """Spawn the 2 workers of one run and return rank 0's result plus the wall time."""
    t0 = time.perf_counter()
    mp.spawn(worker, args=(run, cfg, free_port(), out_dir), nprocs=WORLD, join=True)
    wall = time.perf_counter() - t0
    r0 = json.loads(Path(out_dir, f"{run}.rank0.json").read_text())
    r1 = json.loads(Path(out_dir, f"{run}.rank1.json").read_text())
    r0["wall_s"] = wall
    r0["payload_bytes_per_step_rank1"] = r1["payload_bytes_per_step"]
    return r0


def summarize(res: dict[str, Any], fp32_bytes: float) -> dict[str, Any]:
    """Add bytes/step (sent, received), the 2-bit formula, ratios and the final accuracy."""
    n = res["grad_elements"]
    sent = sum(res["payload_bytes_per_step"].values())
    n_scales = res["payload_bytes_per_step"].get("float32", 0.0) / 4 if res["run"] != "fp32" else 0
    # 2 bits per element (one bucket here: ceil(N/4) bytes) + 4 bytes per fp32 scale; 8-bit
    # hooks: N bytes + 4 per scale (their codes are 8 bits; the column is the formula of the run's bits)
    per_elem = n if res.get("eight_bit") else math.ceil(n / 4)
    formula = per_elem + 4 * n_scales if res["run"] != "fp32" else 4.0 * n
    res.update({"bytes_per_step": sent, "bytes_received_per_step": sum(res["received_bytes_per_step"].values()),
                "bytes_per_step_2bit_formula": formula,
                "reduction_vs_fp32": fp32_bytes / sent, "reduction_vs_fp32_2bit_formula": fp32_bytes / formula,
                "final_accuracy": res["epochs"][-1]["test_accuracy"]})
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch (each worker gets half)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="30 steps per run; print only")
    ap.add_argument("--merge", action="store_true",
                    help="keep the committed rows of runs not in --runs (same epochs/batch/seed/lr required)")
    args = ap.parse_args()
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    bad = [r for r in runs if r not in RUNS]
    if bad or "fp32" not in runs:
        ap.error(f"--runs must include fp32 and only use {list(RUNS)}; got {runs}")
    cfg = {"epochs": args.epochs, "lr": args.lr, "momentum": 0.9, "batch_size": args.batch_size,
           "seed": args.seed, "max_steps": 30 if args.quick else None, "schedule": "cosine",
           "world_size": WORLD, "backend": "gloo", "threads_per_process": 1}
    results: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            results[run] = run_one(run, cfg, tmp)
            print(f"[{run}] done in {results[run]['wall_s']:.0f}s", flush=True)
    fp32_bytes = sum(results["fp32"]["payload_bytes_per_step"].values())
    rows = [summarize(results[r], fp32_bytes) for r in runs]
    out = Path(__file__).resolve().parent / "results" / "terngrad.json"
    if args.merge and out.exists():
        old = json.loads(out.read_text())
        if {k: v for k, v in old["config"].items() if k != "max_steps"} != \
                {k: v for k, v in cfg.items() if k != "max_steps"}:
            ap.error(f"--merge: the committed results used {old['config']}, not {cfg}")
        kept = {r["run"]: r for r in old["runs"] if r["run"] not in runs}
        rows = [next(r for r in rows if r["run"] == name) if name in runs else kept[name]
                for name in RUNS if name in runs or name in kept]

    n_ep = len(rows[0]["epochs"])
    md = [f"## TernGrad and 8-bit gradient DDP hooks vs fp32 all-reduce (LeNet-300-100, Fashion-MNIST, 2 gloo CPU workers, "
          f"global batch {args.batch_size}, {args.epochs} epochs, seed {args.seed})", "",
          "| run | " + " | ".join(f"acc e{i + 1}" for i in range(n_ep))
          + " | train loss e1 | last train loss | bytes sent / worker / step | bytes received / worker / step"
          " | code-bits formula | reduction (sent) | reduction (formula) | train s | wall s |",
          "|---|" + "---:|" * n_ep + "---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        accs = " | ".join(f"{e['test_accuracy']:.4f}" for e in r["epochs"])
        md.append(f"| {LABELS[r['run']]} | {accs} | {r['epochs'][0]['train_loss']:.3f} | "
                  f"{r['epochs'][-1]['train_loss']:.3f} | {r['bytes_per_step']:,.0f} | "
                  f"{r['bytes_received_per_step']:,.0f} | "
                  f"{r['bytes_per_step_2bit_formula']:,.0f} | {r['reduction_vs_fp32']:.2f}x | "
                  f"{r['reduction_vs_fp32_2bit_formula']:.2f}x | {r['train_s']:.0f} | {r['wall_s']:.0f} |")
    detail = "; ".join(f"{LABELS[r['run']]}: " + ", ".join(
        f"{k} {v:,.0f} B" for k, v in r["payload_bytes_per_step"].items()) + " via " + ", ".join(
        f"{c:g} {op}" for op, c in r["collective_calls_per_step"].items()) for r in rows)
    md += ["", f"{rows[0]['grad_elements']:,} gradient elements. 'Sent' is the payload each worker hands "
           "to the collectives per step, counted from the tensors communicated (" + detail + "); 'received' "
           "is what it gets back from the other worker (an all-reduce's reduced tensor, an all-gather's "
           "other inputs). The unpacked hook sends int8 codes (8 bits per element) by all-reduce; the "
           "packed one sends 2-bit codes, ceil(N/4) bytes, by all-gather (plus the all-reduce of the "
           "fp32 scales). The 8-bit hooks (nncompress.distributed.grad8bit, Q18) all-gather uint8 codes "
           "(N bytes) and one fp32 absmax per parameter tensor; every worker decodes and averages. "
           "'Code-bits formula' is ceil(N/4) bytes (2-bit codes; N bytes for the 8-bit hooks) + 4 bytes per "
           "fp32 scale; 'reduction (formula)' is fp32 over that formula. One seed; CPU "
           "times on a shared 2-core machine.",
           "", "Command: `" + "python " + " ".join(sys.argv) + "`", ""]
    merged = [LABELS[r["run"]] for r in rows if r["run"] not in runs]
    if merged:
        md.insert(-1, f"Rows kept from the committed results of an earlier invocation (same config; the fp32 "
                      f"row above is this invocation's, gloo runs vary slightly run to run): {'; '.join(merged)}.")
    text = "\n".join(md)
    print(text)
    if args.quick:
        return
    write_results("terngrad", {"config": cfg, "runs": rows, "total_s": time.perf_counter() - t0}, text)


if __name__ == "__main__":
    main()
