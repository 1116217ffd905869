"""Benchmark: one fine-tuning stage of ResNet-20 on 1 vs 2 processes (torchrun-style DDP).

The stage is ``nncompress.train.fit`` exactly as recipes run it: in one process, and in two
gloo processes on the CPU where ``fit`` wraps the model in ``DistributedDataParallel``,
splits the data with a ``DistributedSampler`` and gives each process half of the global
batch (64). Every process uses one torch thread. Runs:

- ``1 process``: plain ``fit``;
- ``2 processes``: DDP, fp32 all-reduce of the gradients;
- ``2 processes + terngrad``: ``train: {grad_compression: terngrad}`` (int8 ternary codes);
- ``2 processes + terngrad-packed``: 2-bit codes exchanged by all-gather.

Samples per second = global samples trained / wall seconds of the ``fit`` call (the first
``--warmup`` steps excluded by timing a second call). Bytes sent per step and worker are
counted from the tensors handed to the collectives: for the TernGrad runs the hook module's
``dist`` is wrapped by a recorder; for fp32 it is DDP's all-reduce payload, 4 bytes x
gradient elements. Starting weights are random (throughput does not depend on them).

    python benchmarks/ddp.py [--steps 40] [--quick]

Writes benchmarks/results/ddp.json and .md (``--quick``: 8 steps, print only). Two-process
figures on a machine shared with other jobs measure the contention too; run it on a quiet
machine with at least 2 free cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import write_results  # noqa: E402

GLOBAL_BATCH = 64
RUNS = {"1 process": (1, None), "2 processes": (2, None), "2 processes + terngrad": (2, "terngrad"),
        "2 processes + terngrad-packed": (2, "terngrad-packed")}


class Recorder:
    """Stands in for ``torch.distributed`` inside the TernGrad hook module: counts the
    bytes each worker contributes to every collective, then calls the real one."""

    def __init__(self, real: Any) -> None:
        self.real, self.sent = real, 0

    def all_reduce(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.sent += tensor.numel() * tensor.element_size()
        return self.real.all_reduce(tensor, *args, **kwargs)

    def all_gather(self, out: list, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.sent += tensor.numel() * tensor.element_size()
        return self.real.all_gather(out, tensor, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


def _data(n: int) -> torch.utils.data.Dataset:
    from torch.utils.data import Subset

    from nncompress.data import load_dataset

    train = load_dataset("fashion-mnist", "train")
    return Subset(train, list(range(n)))


def _fit_once(steps: int, compression: str | None, seed: int = 0) -> tuple[float, int]:
    """(seconds, samples) of one fit of ``steps`` global steps."""
    from nncompress.models import build_model
    from nncompress.train import TrainConfig, fit

    torch.manual_seed(seed)
    model = build_model("resnet20")
    cfg = TrainConfig(epochs=1, lr=0.01, batch_size=GLOBAL_BATCH, max_steps=steps, grad_compression=compression)
    data = _data(GLOBAL_BATCH * steps)
    t0 = time.perf_counter()
    fit(model, data, cfg)
    return time.perf_counter() - t0, GLOBAL_BATCH * steps


def worker(rank: int, world: int, compression: str | None, steps: int, warmup: int, folder: str) -> None:
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{folder}/pg", rank=rank, world_size=world)
    recorder = None
    if compression is not None:
        import nncompress.distributed.terngrad as terngrad_mod

        recorder = Recorder(terngrad_mod.dist)
        terngrad_mod.dist = recorder
    _fit_once(warmup, compression)
    if recorder is not None:
        recorder.sent = 0
    seconds, samples = _fit_once(steps, compression)
    grads = sum(p.numel() for p in __import__("nncompress.models", fromlist=["build_model"])
                .build_model("resnet20").parameters())
    out = {"seconds": seconds, "samples": samples, "gradients": grads,
           "sent_per_step": (recorder.sent / steps) if recorder is not None else (4 * grads if world > 1 else 0)}
    Path(folder, f"rank{rank}.json").write_text(json.dumps(out))
    if world > 1:
        dist.destroy_process_group()


def run(name: str, steps: int, warmup: int) -> dict[str, Any]:
    world, compression = RUNS[name]
    with tempfile.TemporaryDirectory() as folder:
        if world == 1:
            worker(0, 1, compression, steps, warmup, folder)
        else:
            mp.spawn(worker, args=(world, compression, steps, warmup, folder), nprocs=world, join=True)
        ranks = [json.loads(Path(folder, f"rank{r}.json").read_text()) for r in range(world)]
    seconds = max(r["seconds"] for r in ranks)
    return {"run": name, "processes": world, "grad_compression": compression, "steps": steps,
            "global_batch": GLOBAL_BATCH, "seconds": seconds, "samples_per_second": ranks[0]["samples"] / seconds,
            "bytes_sent_per_step_per_worker": ranks[0]["sent_per_step"], "gradients": ranks[0]["gradients"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    steps = 8 if args.quick else args.steps
    os.environ.pop("WORLD_SIZE", None)
    rows = [run(name, steps, args.warmup) for name in RUNS]
    base = rows[0]["samples_per_second"]
    md = ["| run | processes | samples/s | speed-up | bytes sent per step per worker |",
          "|---|---:|---:|---:|---:|"]
    for r in rows:
        sent = f"{r['bytes_sent_per_step_per_worker']:,.0f}" if r["processes"] > 1 else "-"
        md.append(f"| {r['run']} | {r['processes']} | {r['samples_per_second']:.1f} | "
                  f"{r['samples_per_second'] / base:.2f}x | {sent} |")
    md.append(f"\nResNet-20 ({rows[0]['gradients']:,} gradients), Fashion-MNIST, global batch {GLOBAL_BATCH}, "
              f"{steps} steps after {args.warmup} warm-up steps, gloo, one torch thread per process, "
              f"{os.cpu_count()} CPUs.")
    text = "\n".join(md) + "\n"
    print(text)
    if not args.quick:
        write_results("ddp", {"rows": rows}, text)


if __name__ == "__main__":
    main()
